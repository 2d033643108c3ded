"""No reference, memory or DLPack-ownership leaks over many calls (tiny shapes)."""
import gc
import sys
import tracemalloc

import numpy as np
import pytest

import dmoe
from conftest import make_problem
from fake_dlpack import fake

N_CALLS = 10_000


def rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except OSError:
        return 0


def test_no_leaks_over_many_calls(backend):
    p = make_problem(40, 4, 2, 3, seed=1)
    x, w13, w2, logits = p["x"], p["w13"], p["w2"], p["logits"]

    # One worker thread: the loop measures dmoe's bookkeeping, not thread wake-ups.
    kw = dict(backend=backend, n_threads=1)

    def call(i):
        T = 1 + i % 40  # several token counts: several cache buckets
        y = dmoe.fused_moe(x[:T], w13, w2, logits[:T], 2, True, **kw)
        w, ids, _ = dmoe.fused_topk(x[:T], logits[:T], 1, False, **kw)
        dmoe.fused_experts(x[:T], w13, w2, w, ids, **kw)
        return y

    for i in range(200):  # warm the caches
        call(i)
    gc.collect()
    refs = [sys.getrefcount(a) for a in (x, w13, w2, logits)]
    layers = dmoe.cache_info()["layers"]
    tracemalloc.start()
    rss0 = rss_bytes()
    base, _ = tracemalloc.get_traced_memory()
    for i in range(N_CALLS):
        call(i)
    gc.collect()
    grown, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = rss_bytes()
    assert [sys.getrefcount(a) for a in (x, w13, w2, logits)] == refs
    assert grown - base < 64 * 1024, f"Python heap grew by {grown - base} bytes"
    assert rss1 - rss0 < 4 * 1024 * 1024, f"RSS grew by {rss1 - rss0} bytes"
    assert dmoe.cache_info()["layers"] == layers


def test_no_leaks_on_error_paths(backend):
    p = make_problem(4, 4, 2, 3, seed=2)
    bad_w2 = np.zeros((3, 4, 5), np.float32)
    w, ids, _ = dmoe.fused_topk(p["x"], p["logits"], 2, True, backend=backend)
    arrays = (p["x"], p["w13"], bad_w2, w, ids)
    for _ in range(50):
        with pytest.raises(ValueError):
            dmoe.fused_experts(p["x"], p["w13"], bad_w2, w, ids, backend=backend)
    gc.collect()
    refs = [sys.getrefcount(a) for a in arrays]
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    for _ in range(2000):
        try:
            dmoe.fused_experts(p["x"], p["w13"], bad_w2, w, ids, backend=backend)
        except ValueError:
            pass
        try:
            dmoe.fused_topk(p["x"], p["logits"], 9, True, backend=backend)  # K > E
        except ValueError:
            pass
    gc.collect()
    grown, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert [sys.getrefcount(a) for a in arrays] == refs
    assert grown - base < 64 * 1024, f"Python heap grew by {grown - base} bytes"


def test_every_export_is_given_back(backend):
    """Each DLPack tensor dmoe takes is handed back to its producer exactly once,
    on success and on failure."""
    p = make_problem(3, 4, 2, 3, seed=3)
    w, ids, _ = dmoe.fused_topk(p["x"], p["logits"], 2, True, backend=backend)
    ok = fake(p["w13"])
    bad = fake(p["w13"], strides=(16, 1, 4))  # not C-contiguous
    for _ in range(100):
        dmoe.fused_experts(p["x"], ok, p["w2"], w, ids, backend=backend)
        with pytest.raises(ValueError):
            dmoe.fused_experts(p["x"], bad, p["w2"], w, ids, backend=backend)
    gc.collect()
    assert ok.exported == ok.deleted == 100
    assert bad.exported == bad.deleted == 100
