"""torch tensors: torch in, torch out; torch.library ops under opcheck and
torch.compile; CUDA streams and graph capture when a GPU and the cuda backend
are there."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (pip install torch)")

import dmoe  # noqa: E402
import reference as ref  # noqa: E402

needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and dmoe.backend_available("cuda")),
    reason="needs a CUDA GPU and libdmoe built with the cuda backend (DMOE_CUDA=ON)")


def problem(T=7, H=16, F=8, E=8, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    p = dict(x=torch.randn(T, H, generator=g), w1=torch.randn(E, 2 * F, H, generator=g) / H**0.5,
             w2=torch.randn(E, H, F, generator=g) / F**0.5, logits=torch.randn(T, E, generator=g))
    return {k: v.to(device=device, dtype=dtype) for k, v in p.items()}


def np64(t):
    return t.detach().cpu().double().numpy()


def oracle(p, K, renormalize=True):
    w, ids = ref.route(np64(p["logits"]), K, renormalize)
    return ref.experts(np64(p["x"]), np64(p["w1"]), np64(p["w2"]), w, ids), w, ids


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 8e-3),
                                       (torch.float16, 2e-3)])
def test_fused_moe_torch_cpu(backend, dtype, tol):
    p = problem(dtype=dtype)
    y = dmoe.fused_moe(p["x"], p["w1"], p["w2"], p["logits"], 2, True, backend=backend)
    assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.device == p["x"].device
    want, _, _ = oracle(p, 2)
    assert ref.rel_l2(np64(y), want) < tol


def test_fused_topk_torch(backend):
    p = problem()
    w, ids, tei = dmoe.fused_topk(p["x"], p["logits"], 3, False, backend=backend)
    rw, rids = ref.route(np64(p["logits"]), 3, False)
    assert w.dtype == torch.float32 and ids.dtype == torch.int32 and tei.dtype == torch.int32
    np.testing.assert_array_equal(ids.numpy(), rids)
    np.testing.assert_allclose(w.numpy(), rw, rtol=1e-6, atol=1e-7)
    T = p["x"].shape[0]
    assert torch.equal(tei, torch.arange(T * 3, dtype=torch.int32).view(3, T).t())
    _, ids64, _ = dmoe.fused_topk(p["x"], p["logits"], 3, False, indices_type=torch.int64)
    assert ids64.dtype == torch.int64


def test_grouped_topk_torch(backend):
    p = problem(E=16)
    bias = torch.linspace(-0.1, 0.1, 16)
    w, ids = dmoe.grouped_topk(p["x"], p["logits"], 4, True, 4, 2, "sigmoid", 2.5, bias,
                               backend=backend)
    rw, rids = ref.route(np64(p["logits"]), 4, True, "sigmoid", 4, 2, 2.5, bias.numpy())
    np.testing.assert_array_equal(ids.numpy(), rids)
    np.testing.assert_allclose(w.numpy(), rw, rtol=1e-6, atol=1e-7)


def test_parameters_that_require_grad(backend):
    p = problem()
    w1, w2 = torch.nn.Parameter(p["w1"]), torch.nn.Parameter(p["w2"])
    y = dmoe.fused_moe(p["x"], w1, w2, p["logits"], 2, True, backend=backend)
    assert ref.rel_l2(np64(y), oracle(p, 2)[0]) < 2e-6


def test_fused_experts_torch_int64_ids_inplace_expert_map(backend):
    p = problem(T=9)
    w, ids, _ = dmoe.fused_topk(p["x"], p["logits"], 2, True)
    want = ref.experts(np64(p["x"]), np64(p["w1"]), np64(p["w2"]), w.numpy(), ids.numpy())
    x = p["x"].clone()
    out = dmoe.fused_experts(x, p["w1"], p["w2"], w, ids.long(), inplace=True, backend=backend)
    assert out is x and ref.rel_l2(np64(x), want) < 2e-6
    local = torch.tensor([0, 3, 5])
    emap = torch.full((8,), -1, dtype=torch.int32)
    emap[local] = torch.arange(3, dtype=torch.int32)
    y = dmoe.fused_experts(p["x"], p["w1"][local], p["w2"][local], w, ids, expert_map=emap,
                           global_num_experts=8, backend=backend)
    keep = np.isin(ids.numpy(), local.numpy())
    want = ref.experts(np64(p["x"]), np64(p["w1"]), np64(p["w2"]),
                       np.where(keep, w.numpy(), 0), ids.numpy())
    assert ref.rel_l2(np64(y), want) < 2e-6


def test_torch_errors():
    p = problem()
    with pytest.raises(dmoe.DmoeTypeError, match="float64"):
        dmoe.fused_moe(p["x"].double(), p["w1"], p["w2"], p["logits"], 2, True)
    with pytest.raises(ValueError, match="w1 must be C-contiguous"):
        dmoe.fused_moe(p["x"], p["w1"].transpose(1, 2).contiguous().transpose(1, 2), p["w2"],
                       p["logits"], 2, True)
    with pytest.raises(ValueError, match=r"top_k must be in \[1, n_experts=8\]"):
        dmoe.fused_moe(p["x"], p["w1"], p["w2"], p["logits"], 9, True)


def test_meta_tensors_give_shapes():
    """On the meta device the fake implementations answer: shapes, no compute."""
    p = {k: v.to("meta") for k, v in problem().items()}
    y = dmoe.fused_moe(p["x"], p["w1"], p["w2"], p["logits"], 2, True)
    assert y.device.type == "meta" and y.shape == p["x"].shape and y.dtype == p["x"].dtype


def test_opcheck():
    """Schemas, fake implementations and dispatch of every registered op."""
    import dmoe._torch  # noqa: F401

    p = problem(T=5)
    w, ids, _ = dmoe.fused_topk(p["x"], p["logits"], 2, True)
    router = torch.randn(8, 16)
    bias = torch.zeros(8)
    none3 = (None, None, None)
    cases = [
        (torch.ops.dmoe.route_logits.default, (p["logits"], 2, True, 0, 0, 0, 1.0, None)),
        (torch.ops.dmoe.route_logits.default, (p["logits"], 2, True, 1, 4, 2, 2.0, bias)),
        (torch.ops.dmoe.route.default, (p["x"], router, 2, True, 0, 0, 0, 1.0, None)),
        (torch.ops.dmoe.experts.default, (p["x"], p["w1"], p["w2"], w, ids, None, None, None)),
        (torch.ops.dmoe.forward.default,
         (p["x"], router, p["w1"], p["w2"], 2, True, 0, 0, 0, 1.0, None, None, None, None)),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args + none3)


def test_compile_fullgraph(backend):
    p = problem()
    K = 2

    def fn(x, w1, w2, logits):
        w, ids, tei = dmoe.fused_topk(x, logits, K, True, backend=backend)
        y = dmoe.fused_experts(x, w1, w2, w, ids, backend=backend)
        return y * 2.0, tei

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=True)
    for T in (7, 3, 11):
        q = problem(T=T, seed=T)
        got, tei = compiled(q["x"], q["w1"], q["w2"], q["logits"])
        want, tei0 = fn(q["x"], q["w1"], q["w2"], q["logits"])
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        assert torch.equal(tei, tei0)


def test_compile_inductor_fused_moe_and_layer(backend):
    p = problem(T=6)
    moe = dmoe.MoE(torch.randn(8, 16) / 4, p["w1"], p["w2"], 2, backend=backend)

    def fn(x, w1, w2, logits):
        return dmoe.fused_moe(x, w1, w2, logits, 2, True, backend=backend) + moe(x)

    compiled = torch.compile(fn, fullgraph=True)
    torch.testing.assert_close(compiled(p["x"], p["w1"], p["w2"], p["logits"]),
                               fn(p["x"], p["w1"], p["w2"], p["logits"]), rtol=0, atol=0)


def test_layer_from_arrays_torch(backend):
    p = problem(T=10)
    router = torch.randn(8, 16) / 4
    moe = dmoe.MoE(router, p["w1"], p["w2"], 3, renormalize=False, backend=backend)
    x3 = p["x"].view(2, 5, 16)
    y = moe(x3)
    assert y.shape == x3.shape and isinstance(y, torch.Tensor)
    want, _, _ = ref.forward(np64(p["x"]), np64(router), np64(p["w1"]), np64(p["w2"]), 3,
                             renormalize=False)
    assert ref.rel_l2(np64(y).reshape(10, 16), want) < 2e-6


# ---- CUDA (run on a GPU machine with libdmoe built with CUDA) ----

@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_matches_cpu_reference(dtype):
    p = problem(T=33, H=256, F=128, E=16, dtype=dtype, device="cuda")
    y = dmoe.fused_moe(p["x"], p["w1"], p["w2"], p["logits"], 4, True)
    assert y.device == p["x"].device and y.dtype == dtype
    cpu = {k: v.cpu() for k, v in p.items()}
    want = dmoe.fused_moe(cpu["x"], cpu["w1"], cpu["w2"], cpu["logits"], 4, True,
                          backend="cpu-ref")
    assert ref.rel_l2(np64(y), np64(want)) < 1e-2


@needs_cuda
def test_cuda_stream_and_graph_capture():
    p = problem(T=16, H=256, F=128, E=8, dtype=torch.bfloat16, device="cuda")
    args = (p["x"], p["w1"], p["w2"], p["logits"], 2, True)
    eager = dmoe.fused_moe(*args)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        on_stream = dmoe.fused_moe(*args)  # the current stream, s, by default
        explicit = dmoe.fused_moe(*args, stream=s)
    torch.cuda.current_stream().wait_stream(s)
    torch.testing.assert_close(on_stream, eager, rtol=0, atol=0)
    torch.testing.assert_close(explicit, eager, rtol=0, atol=0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = dmoe.fused_moe(*args)
    p["x"].copy_(torch.randn_like(p["x"]))
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, dmoe.fused_moe(*args), rtol=0, atol=0)


@needs_cuda
def test_cuda_compile_with_cudagraphs():
    p = problem(T=8, H=256, F=128, E=8, dtype=torch.bfloat16, device="cuda")
    f = torch.compile(lambda x, w1, w2, g: dmoe.fused_moe(x, w1, w2, g, 2, True),
                      mode="reduce-overhead", fullgraph=True)
    for _ in range(3):
        got = f(p["x"], p["w1"], p["w2"], p["logits"])
    torch.testing.assert_close(got, dmoe.fused_moe(p["x"], p["w1"], p["w2"], p["logits"], 2,
                                                   True), rtol=0, atol=0)
