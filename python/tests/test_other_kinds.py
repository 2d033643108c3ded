"""Array kinds besides numpy and torch: jax (CPU) and cupy (GPU), when installed."""
import numpy as np
import pytest

import dmoe
import reference as ref
from conftest import make_problem


def test_jax_cpu_arrays(backend):
    jax = pytest.importorskip("jax", reason="jax is not installed")
    import jax.numpy as jnp

    p = make_problem(6, 8, 4, 4)
    cpu = jax.devices("cpu")[0]
    j = {k: jax.device_put(v, cpu) for k, v in p.items()}
    y = dmoe.fused_moe(j["x"], j["w13"], j["w2"], j["logits"], 2, True, backend=backend)
    assert "jax" in type(y).__module__ and y.dtype == jnp.float32
    rw, rids = ref.route(p["logits"], 2)
    assert ref.rel_l2(np.asarray(y), ref.experts(p["x"], p["w13"], p["w2"], rw, rids)) < 2e-6
    w, ids, tei = dmoe.fused_topk(j["x"], j["logits"], 2, True, backend=backend)
    np.testing.assert_array_equal(np.asarray(ids), rids)
    np.testing.assert_array_equal(np.asarray(tei), np.arange(12).reshape(2, 6).T)
    with pytest.raises(dmoe.UnsupportedError, match="bfloat16"):
        dmoe.fused_moe(j["x"].astype(jnp.bfloat16), j["w13"], j["w2"], j["logits"], 2, True)


def test_cupy_arrays():
    cp = pytest.importorskip("cupy", reason="cupy is not installed")
    if not dmoe.backend_available("cuda"):
        pytest.skip("libdmoe was built without the cuda backend")
    p = make_problem(16, 64, 32, 8, dtype=np.float16)
    c = {k: cp.asarray(v) for k, v in p.items()}
    y = dmoe.fused_moe(c["x"], c["w13"], c["w2"], c["logits"], 2, True)
    assert isinstance(y, cp.ndarray) and y.dtype == cp.float16
    rw, rids = ref.route(p["logits"], 2)
    assert ref.rel_l2(cp.asnumpy(y), ref.experts(p["x"], p["w13"], p["w2"], rw, rids)) < 1e-2
    w, ids, tei = dmoe.fused_topk(c["x"], c["logits"], 2, True)
    np.testing.assert_array_equal(cp.asnumpy(ids), rids)
    s = cp.cuda.Stream(non_blocking=True)
    with s:  # cupy's current stream is the default
        y2 = dmoe.fused_moe(c["x"], c["w13"], c["w2"], c["logits"], 2, True)
    s.synchronize()
    np.testing.assert_array_equal(cp.asnumpy(y2), cp.asnumpy(y))
