"""Every public function on numpy arrays against the float64 oracle (reference.py)."""
import numpy as np
import pytest

import dmoe
import reference as ref
from conftest import make_problem, tolerance

SHAPES = [  # T, H, F, E, K
    (1, 8, 6, 4, 1),
    (7, 24, 16, 8, 2),
    (33, 40, 22, 12, 4),
    (5, 16, 8, 6, 6),  # K == E
]


@pytest.mark.parametrize("T,H,F,E,K", SHAPES)
@pytest.mark.parametrize("renormalize", [True, False])
def test_fused_topk(backend, T, H, F, E, K, renormalize):
    p = make_problem(T, H, F, E)
    w, ids, tei = dmoe.fused_topk(p["x"], p["logits"], K, renormalize, backend=backend)
    rw, rids = ref.route(p["logits"], K, renormalize)
    assert isinstance(w, np.ndarray) and w.dtype == np.float32 and w.shape == (T, K)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, rids)
    np.testing.assert_allclose(w, rw, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(tei, np.arange(T * K).reshape(K, T).T)


def test_fused_topk_indices_type(backend):
    p = make_problem(4, 8, 4, 6)
    _, ids, _ = dmoe.fused_topk(p["x"], p["logits"], 2, True, indices_type=np.int64,
                                backend=backend)
    assert ids.dtype == np.int64
    np.testing.assert_array_equal(ids, ref.route(p["logits"], 2)[1])


def test_fused_topk_float16_logits(backend):
    p = make_problem(9, 8, 4, 8, dtype=np.float16)
    w, ids, _ = dmoe.fused_topk(p["x"], p["logits"], 3, True, backend=backend)
    rw, rids = ref.route(p["logits"], 3)
    np.testing.assert_array_equal(ids, rids)
    np.testing.assert_allclose(w, rw, rtol=1e-6, atol=1e-7)


def test_ties_go_to_the_lower_index(backend):
    logits = np.zeros((2, 6), np.float32)
    logits[1, [1, 3, 5]] = 2.0
    x = np.zeros((2, 4), np.float32)
    w, ids, _ = dmoe.fused_topk(x, logits, 3, True, backend=backend)
    np.testing.assert_array_equal(ids, [[0, 1, 2], [1, 3, 5]])
    np.testing.assert_allclose(w, np.full((2, 3), 1 / 3), rtol=1e-6)


def test_non_finite_logits(backend):
    logits = np.array([[np.nan] * 5,
                       [0.0, np.inf, 1.0, -np.inf, np.nan],
                       [1.0, 2.0, np.nan, 3.0, -np.inf]], np.float32)
    x = np.zeros((3, 4), np.float32)
    w, ids, _ = dmoe.fused_topk(x, logits, 2, True, backend=backend)
    rw, rids = ref.route(logits, 2)
    np.testing.assert_array_equal(ids, rids)
    np.testing.assert_array_equal(ids[0], [0, 1])  # all NaN: experts 0..K-1, equal weights
    np.testing.assert_allclose(w, rw, rtol=1e-6, atol=1e-7)
    assert np.isfinite(w).all()
    # Also through float16 (inf and NaN have their own bit patterns there).
    w16, ids16, _ = dmoe.fused_topk(x, logits.astype(np.float16), 2, True, backend=backend)
    np.testing.assert_array_equal(ids16, rids)


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
@pytest.mark.parametrize("n_group,topk_group,K", [(4, 2, 3), (8, 3, 4), (2, 1, 2), (1, 1, 2)])
def test_grouped_topk(backend, scoring, n_group, topk_group, K):
    T, E = 11, 16
    rng = np.random.default_rng(n_group * 10 + K)
    logits = rng.standard_normal((T, E)).astype(np.float32)
    bias = (rng.standard_normal(E) * 0.1).astype(np.float32)
    x = np.zeros((T, 4), np.float32)
    for renorm in (True, False):
        w, ids = dmoe.grouped_topk(x, logits, K, renorm, n_group, topk_group, scoring, 2.5, bias,
                                   backend=backend)
        rw, rids = ref.route(logits, K, renorm, scoring, n_group, topk_group, 2.5, bias)
        np.testing.assert_array_equal(ids, rids)
        np.testing.assert_allclose(w, rw, rtol=1e-6, atol=1e-7)


def test_grouped_topk_without_bias(backend):
    T, E = 6, 8
    logits = np.random.default_rng(3).standard_normal((T, E)).astype(np.float32)
    x = np.zeros((T, 4), np.float32)
    # One expert per group: a group's best expert is also its best two.
    w, ids = dmoe.grouped_topk(x, logits, 2, True, num_expert_group=8, topk_group=4,
                               backend=backend)
    np.testing.assert_array_equal(ids, ref.route(logits, 2, True, "softmax", 8, 4)[1])
    # Larger groups would score differently from vLLM (best one vs best two): refused.
    with pytest.raises(dmoe.UnsupportedError, match="e_score_correction_bias"):
        dmoe.grouped_topk(x, logits, 2, True, num_expert_group=4, topk_group=2)
    # A zero bias asks for the top-2 sum explicitly.
    zero = np.zeros(E, np.float32)
    w, ids = dmoe.grouped_topk(x, logits, 2, True, 4, 2, e_score_correction_bias=zero,
                               backend=backend)
    np.testing.assert_array_equal(ids, ref.route(logits, 2, True, "softmax", 4, 2, bias=zero)[1])


@pytest.mark.parametrize("T,H,F,E,K", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_fused_experts(backend, T, H, F, E, K, dtype):
    p = make_problem(T, H, F, E, dtype=dtype, seed=T)
    rw, rids = ref.route(p["logits"], K)
    y = dmoe.fused_experts(p["x"], p["w13"], p["w2"], rw, rids, backend=backend)
    assert isinstance(y, np.ndarray) and y.dtype == dtype and y.shape == (T, H)
    want = ref.experts(p["x"], p["w13"], p["w2"], rw, rids)
    assert ref.rel_l2(y, want) < tolerance(dtype)


def test_fused_experts_int64_ids_and_float64_weights(backend):
    p = make_problem(5, 8, 4, 4)
    rw, rids = ref.route(p["logits"], 2)
    y = dmoe.fused_experts(p["x"], p["w13"], p["w2"], rw.astype(np.float64),
                           rids.astype(np.int64), backend=backend)
    assert ref.rel_l2(y, ref.experts(p["x"], p["w13"], p["w2"], rw, rids)) < 2e-6


def test_fused_experts_inplace(backend):
    p = make_problem(6, 8, 4, 4)
    rw, rids = ref.route(p["logits"], 2)
    x = p["x"].copy()
    want = ref.experts(x, p["w13"], p["w2"], rw, rids)
    out = dmoe.fused_experts(x, p["w13"], p["w2"], rw, rids, inplace=True, backend=backend)
    assert out is x
    assert ref.rel_l2(x, want) < 2e-6


def test_fused_experts_expert_map(backend):
    """Expert parallelism as vLLM writes it: global ids, local weights, -1 elsewhere."""
    T, H, F, E_global = 9, 8, 4, 8
    p = make_problem(T, H, F, E_global)
    rw, rids = ref.route(p["logits"], 2)
    local = [1, 4, 6]  # this rank's experts
    expert_map = np.full(E_global, -1, np.int32)
    expert_map[local] = np.arange(len(local))
    y = dmoe.fused_experts(p["x"], p["w13"][local], p["w2"][local], rw, rids,
                           global_num_experts=E_global, expert_map=expert_map, backend=backend)
    keep = np.isin(rids, local)
    want = ref.experts(p["x"], p["w13"], p["w2"], np.where(keep, rw, 0), rids)
    assert ref.rel_l2(y, want) < 2e-6


@pytest.mark.parametrize("T,H,F,E,K", SHAPES)
def test_fused_moe(backend, T, H, F, E, K):
    p = make_problem(T, H, F, E, seed=2 * T)
    y = dmoe.fused_moe(p["x"], p["w13"], p["w2"], p["logits"], K, True, backend=backend)
    rw, rids = ref.route(p["logits"], K)
    assert ref.rel_l2(y, ref.experts(p["x"], p["w13"], p["w2"], rw, rids)) < 2e-6


def test_fused_moe_grouped_and_custom(backend):
    T, H, F, E, K = 8, 16, 8, 8, 2
    p = make_problem(T, H, F, E, seed=5)
    bias = np.linspace(-0.1, 0.1, E).astype(np.float32)
    y = dmoe.fused_moe(p["x"], p["w13"], p["w2"], p["logits"], K, True, use_grouped_topk=True,
                       num_expert_group=4, topk_group=2, scoring_func="sigmoid",
                       routed_scaling_factor=2.0, e_score_correction_bias=bias, backend=backend)
    rw, rids = ref.route(p["logits"], K, True, "sigmoid", 4, 2, 2.0, bias)
    assert ref.rel_l2(y, ref.experts(p["x"], p["w13"], p["w2"], rw, rids)) < 2e-6

    calls = []

    def custom(hidden_states, gating_output, topk, renormalize):
        calls.append(topk)
        ids = np.tile(np.array([[3, 0]], np.int32), (T, 1))
        return np.full((T, 2), 0.5, np.float32), ids

    y = dmoe.fused_moe(p["x"], p["w13"], p["w2"], p["logits"], K, True,
                       custom_routing_function=custom, backend=backend)
    ids = np.tile(np.array([[3, 0]], np.int32), (T, 1))
    want = ref.experts(p["x"], p["w13"], p["w2"], np.full((T, 2), 0.5), ids)
    assert calls == [K] and ref.rel_l2(y, want) < 2e-6


def test_fused_moe_accepts_unquantized_legacy_flags(backend):
    p = make_problem(3, 8, 4, 4)
    y = dmoe.fused_moe(p["x"], p["w13"], p["w2"], p["logits"], 2, True, False, "silu", False,
                       None, None, None, False, False, False, False, backend=backend,
                       w1_scale=None, block_shape=None)
    rw, rids = ref.route(p["logits"], 2)
    assert ref.rel_l2(y, ref.experts(p["x"], p["w13"], p["w2"], rw, rids)) < 2e-6


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_moe_layer_with_shared_experts(backend, dtype):
    T, H, F, E, K, S, Fs = 10, 16, 8, 8, 2, 2, 12
    p = make_problem(T, H, F, E, dtype=dtype, seed=9, S=S, Fs=Fs)
    bias = np.linspace(0.2, -0.2, E).astype(np.float32)
    moe = dmoe.MoE(p["router"], p["w13"], p["w2"], K, renormalize=True, scoring_func="sigmoid",
                   num_expert_group=4, topk_group=2, routed_scaling_factor=1.5,
                   correction_bias=bias, shared_w13=p["shared_w13"], shared_w2=p["shared_w2"],
                   shared_gate=p["shared_gate"], backend=backend)
    y = moe(p["x"])
    want, rw, rids = ref.forward(p["x"], p["router"], p["w13"], p["w2"], K, renormalize=True,
                                 scoring="sigmoid", n_group=4, topk_group=2, scale=1.5,
                                 bias=bias, shared_w13=p["shared_w13"],
                                 shared_w2=p["shared_w2"], shared_gate=p["shared_gate"])
    assert y.dtype == dtype and ref.rel_l2(y, want) < tolerance(dtype)
    w, ids = moe.route(p["x"])
    np.testing.assert_array_equal(ids, rids)
    np.testing.assert_allclose(w, rw, rtol=1e-5, atol=1e-6)
    y2 = moe.experts(p["x"], w, ids)
    assert ref.rel_l2(y2, want) < tolerance(dtype)
    # (..., H) inputs keep their shape.
    y3 = moe(p["x"].reshape(2, 5, H))
    assert y3.shape == (2, 5, H)
    assert ref.rel_l2(y3.reshape(T, H), want) < tolerance(dtype)


def test_forward_matches_route_then_experts(backend):
    p = make_problem(12, 16, 8, 6)
    y = dmoe.forward(p["x"], p["router"], p["w13"], p["w2"], 3, backend=backend)
    w, ids = dmoe.route(p["x"], p["router"], 3, backend=backend)
    y2 = dmoe.experts(p["x"], p["w13"], p["w2"], w, ids, backend=backend)
    np.testing.assert_array_equal(y, y2)


def test_zero_tokens(backend):
    p = make_problem(0, 8, 4, 4)
    w, ids, tei = dmoe.fused_topk(p["x"], p["logits"], 2, True, backend=backend)
    assert w.shape == (0, 2) and ids.shape == (0, 2) and tei.shape == (0, 2)
    y = dmoe.fused_moe(p["x"], p["w13"], p["w2"], p["logits"], 2, True, backend=backend)
    assert y.shape == (0, 8) and y.dtype == np.float32


def test_read_only_inputs(backend):
    p = make_problem(4, 8, 4, 4)
    for a in p.values():
        a.setflags(write=False)
    y = dmoe.fused_moe(p["x"], p["w13"], p["w2"], p["logits"], 2, True, backend=backend)
    rw, rids = ref.route(p["logits"], 2)
    assert ref.rel_l2(y, ref.experts(p["x"], p["w13"], p["w2"], rw, rids)) < 2e-6


def test_layer_cache_is_reused(backend):
    dmoe.clear_cache()
    before = dmoe.cache_info()
    p = make_problem(4, 8, 4, 4)
    for T in (4, 3, 1, 2):
        dmoe.fused_experts(p["x"][:T], p["w13"], p["w2"], *ref.route(p["logits"][:T], 2),
                           backend=backend)
    info = dmoe.cache_info()
    assert info["layer_creates"] - before["layer_creates"] == 1, info
    assert info["hits"] - before["hits"] == 3, info
    assert info["layers"] == before["layers"] + 1, info


def test_threads_share_the_cache_safely(backend):
    """Calls from several threads (the GIL is released while they compute)."""
    import threading

    problems = [make_problem(16, 16, 8, 6, seed=s) for s in range(4)]
    want = [dmoe.fused_moe(p["x"], p["w13"], p["w2"], p["logits"], 2, True, backend=backend)
            for p in problems]
    errors = []

    def work(i):
        try:
            for _ in range(20):
                p = problems[i]
                y = dmoe.fused_moe(p["x"], p["w13"], p["w2"], p["logits"], 2, True,
                                   backend=backend)
                np.testing.assert_array_equal(y, want[i])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_info_functions():
    assert dmoe.version().startswith("0.")
    assert dmoe.backend_available("cpu-ref")
    assert dmoe.get_default_backend() in ("cpu-ref", "cpu")
    with pytest.raises(dmoe.DmoeValueError, match="unknown backend"):
        dmoe.backend_available("tpu")


def test_the_gil_is_released_while_computing():
    """Another Python thread keeps running during a long call."""
    import threading
    import time

    p = make_problem(256, 256, 256, 8, seed=4)
    args = (p["x"], p["w13"], p["w2"], p["logits"], 2, True)
    t0 = time.perf_counter()
    dmoe.fused_moe(*args, backend="cpu-ref")
    duration = time.perf_counter() - t0
    stamps = []
    worker = threading.Thread(target=dmoe.fused_moe, args=args, kwargs={"backend": "cpu-ref"})
    worker.start()
    while worker.is_alive():
        stamps.append(time.perf_counter())
        time.sleep(0.001)
    worker.join()
    gaps = np.diff(stamps)
    assert len(stamps) > 5 and gaps.max() < 0.5 * duration, (duration, gaps.max())


def test_pinned_layers_survive_clear_cache(backend):
    """Layers used inside a CUDA graph capture are pinned (the torch ops pass
    pin=True there); clear_cache keeps them."""
    from dmoe import _C

    dmoe.clear_cache()
    p = make_problem(3, 8, 4, 4, seed=11)
    w, ids, _ = dmoe.fused_topk(p["x"], p["logits"], 2, True, backend=backend)
    dmoe.clear_cache()
    kept = dmoe.cache_info()["layers"]  # pinned by earlier tests
    y = np.empty_like(p["x"])
    _C.run(_C.OP_EXPERTS, p["x"], y=y, topk_ids=ids, topk_weights=w, w13=p["w13"], w2=p["w2"],
           backend=backend, pin=True)
    dmoe.clear_cache()
    assert dmoe.cache_info()["layers"] == kept + 1
    np.testing.assert_array_equal(y, dmoe.fused_experts(p["x"], p["w13"], p["w2"], w, ids,
                                                        backend=backend))
