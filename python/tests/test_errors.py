"""Bad inputs raise the documented exceptions, carrying dmoe's message and status."""
import numpy as np
import pytest

import dmoe
from conftest import make_problem
from fake_dlpack import fake

KDLCUDA, KDLMETAL = 2, 8


@pytest.fixture
def p():
    return make_problem(5, 8, 4, 4)


def routing(p, K=2):
    w, ids, _ = dmoe.fused_topk(p["x"], p["logits"], K, True)
    return w, ids


def test_exception_hierarchy():
    assert issubclass(dmoe.DmoeTypeError, TypeError) and issubclass(dmoe.DmoeTypeError, dmoe.Error)
    assert issubclass(dmoe.DmoeValueError, ValueError)
    assert issubclass(dmoe.UnsupportedError, NotImplementedError)
    assert issubclass(dmoe.DmoeMemoryError, MemoryError)
    assert issubclass(dmoe.DmoeRuntimeError, RuntimeError)


def test_wrong_dtype(p):
    w, ids = routing(p)
    with pytest.raises(dmoe.DmoeTypeError, match="float64") as e:
        dmoe.fused_experts(p["x"].astype(np.float64), p["w13"], p["w2"], w, ids)
    assert isinstance(e.value, TypeError)
    assert e.value.status_name == "DMOE_ERR_UNSUPPORTED_DTYPE"
    with pytest.raises(TypeError, match="hidden_states must be float32, bfloat16 or float16"):
        dmoe.fused_experts(p["x"].astype(np.int32), p["w13"], p["w2"], w, ids)
    with pytest.raises(TypeError, match="w2 has dtype float16 but w1 has float32") as e:
        dmoe.fused_experts(p["x"], p["w13"], p["w2"].astype(np.float16), w, ids)
    assert e.value.status_name == "DMOE_ERR_DTYPE_MISMATCH"
    with pytest.raises(TypeError, match="topk_ids must be int32"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"], w, ids.astype(np.float32))
    with pytest.raises(TypeError, match="bool"):
        dmoe.fused_topk(p["x"], p["logits"] > 0, 2, True)


def test_not_an_array(p):
    with pytest.raises(dmoe.DmoeTypeError, match="DLPack"):
        dmoe.fused_topk(p["x"], p["logits"].tolist(), 2, True)
    w, ids = routing(p)
    with pytest.raises(TypeError, match="w1 must support DLPack"):
        dmoe.fused_experts(p["x"], "weights", p["w2"], w, ids)


def test_non_contiguous(p):
    w, ids = routing(p)
    with pytest.raises(dmoe.DmoeValueError, match="hidden_states must be C-contiguous") as e:
        dmoe.fused_experts(np.asfortranarray(p["x"]), p["w13"], p["w2"], w, ids)
    assert isinstance(e.value, ValueError) and e.value.status_name == "DMOE_ERR_BAD_SHAPE"
    with pytest.raises(ValueError, match="w1 must be C-contiguous"):
        dmoe.fused_experts(p["x"], p["w13"][:, ::2], p["w2"], w, ids)
    with pytest.raises(ValueError, match="gating_output must be C-contiguous"):
        dmoe.fused_topk(p["x"], np.repeat(p["logits"], 2, axis=1)[:, ::2], 2, True)
    # Extent-1 dims may have any stride (torch gives such views).
    x1 = p["x"][:1]
    assert dmoe.fused_moe(x1, p["w13"], p["w2"], p["logits"][:1], 2, True).shape == x1.shape


def test_mismatched_shapes(p):
    w, ids = routing(p)
    with pytest.raises(ValueError, match=r"w1 has shape \(4, 8, 8\), expected \(E, 2\*F, H=7\)"):
        dmoe.fused_experts(p["x"][:, :7].copy(), p["w13"], p["w2"], w, ids)
    with pytest.raises(ValueError, match=r"w2 has shape \(4, 4, 8\), expected \(E=4, H=8, F=4\)"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"].transpose(0, 2, 1).copy(), w, ids)
    with pytest.raises(ValueError, match="number of tokens mismatch"):
        dmoe.fused_topk(p["x"][:3], p["logits"], 2, True)
    with pytest.raises(ValueError, match=r"topk_weights has shape \(5, 1\)"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"], w[:, :1].copy(), ids)
    with pytest.raises(ValueError, match="2-D"):
        dmoe.fused_experts(p["x"][None], p["w13"], p["w2"], w, ids)
    with pytest.raises(ValueError, match="outside"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"], w, ids + 3)


def test_top_k_larger_than_experts(p):
    with pytest.raises(dmoe.DmoeValueError, match=r"top_k must be in \[1, n_experts=4\], got 5"):
        dmoe.fused_topk(p["x"], p["logits"], 5, True)
    with pytest.raises(ValueError, match="top_k"):
        dmoe.fused_moe(p["x"], p["w13"], p["w2"], p["logits"], 0, True)


def test_bad_routing_config(p):
    with pytest.raises(ValueError, match="n_group=3 must divide n_experts=4"):
        dmoe.grouped_topk(p["x"], p["logits"], 1, True, 3, 1, "sigmoid",
                          e_score_correction_bias=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="scoring_func"):
        dmoe.grouped_topk(p["x"], p["logits"], 1, True, 2, 1, "relu")
    with pytest.raises(ValueError, match="routed_scaling_factor"):
        dmoe.grouped_topk(p["x"], p["logits"], 1, True, 0, 0, "sigmoid", -1.0)
    with pytest.raises(ValueError, match=r"e_score_correction_bias has shape \(3,\)"):
        dmoe.grouped_topk(p["x"], p["logits"], 1, True, 2, 1, "sigmoid", 1.0,
                          np.zeros(3, np.float32))


def test_wrong_device(p):
    w, ids = routing(p)
    # A CUDA tensor among host ones: refused before its pointer is touched.
    cuda_w1 = fake(p["w13"], device_type=KDLCUDA, device_id=1)
    with pytest.raises(dmoe.DmoeValueError, match="w1 is on cuda:1, but backend 'cpu-ref' needs "
                       r"the host \(cpu\)") as e:
        dmoe.fused_experts(p["x"], cuda_w1, p["w2"], w, ids, backend="cpu-ref")
    assert e.value.status_name == "DMOE_ERR_WRONG_DEVICE"
    assert cuda_w1.deleted == 1
    # Host arrays on the cuda backend.
    with pytest.raises(ValueError, match="backend 'cuda' needs CUDA tensors"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"], w, ids, backend="cuda")
    # A CUDA hidden_states picks the cuda backend; the host weights are then wrong.
    with pytest.raises(ValueError,
                       match=r"is on the host \(cpu\), but backend 'cuda' needs cuda:0"):
        dmoe.fused_experts(fake(p["x"], device_type=KDLCUDA), p["w13"], p["w2"], w, ids)
    # A device dmoe does not know.
    with pytest.raises(ValueError, match="DLPack device type 8"):
        dmoe.fused_experts(p["x"], fake(p["w13"], device_type=KDLMETAL), p["w2"], w, ids)


def test_unknown_backend(p):
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        dmoe.fused_moe(p["x"], p["w13"], p["w2"], p["logits"], 2, True, backend="gpu")
    with pytest.raises(dmoe.UnsupportedError):
        dmoe.set_default_backend("cuda") if not dmoe.backend_available("cuda") else \
            (_ for _ in ()).throw(dmoe.UnsupportedError("cuda is here"))


def test_unsupported_vllm_arguments(p):
    args = (p["x"], p["w13"], p["w2"], p["logits"], 2, True)
    with pytest.raises(dmoe.UnsupportedError, match="activation='gelu'"):
        dmoe.fused_moe(*args, activation="gelu")
    with pytest.raises(NotImplementedError, match="use_fp8_w8a8"):
        dmoe.fused_moe(*args, use_fp8_w8a8=True)
    with pytest.raises(NotImplementedError, match="w1_scale"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"], *routing(p), w1_scale=p["w2"])
    with pytest.raises(NotImplementedError, match="apply_router_weight_on_input"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"], *routing(p),
                           apply_router_weight_on_input=True)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"], *routing(p), bogus=1)
    with pytest.raises(NotImplementedError, match="quantization"):
        dmoe.fused_moe(*args, False, "silu", False, None, None, None, True)
    with pytest.raises(ValueError, match="global_num_experts"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"], *routing(p), global_num_experts=8)


def test_dlpack_protocol_details(p):
    w, ids = routing(p)
    want = dmoe.fused_experts(p["x"], p["w13"], p["w2"], w, ids)
    # Legacy producers (no max_version): asked again the old way.
    old = fake(p["w13"], accept_max_version=False)
    np.testing.assert_array_equal(dmoe.fused_experts(p["x"], old, p["w2"], w, ids), want)
    assert old.exported == 1 and old.deleted == 1
    # Versioned capsules, explicit compact strides, and the deleter runs once.
    v = fake(p["w13"], strides=(64, 8, 1))
    np.testing.assert_array_equal(dmoe.fused_experts(p["x"], v, p["w2"], w, ids), want)
    assert v.deleted == 1
    # Non-compact explicit strides.
    with pytest.raises(ValueError, match=r"strides \(64, 1, 8\)"):
        dmoe.fused_experts(p["x"], fake(p["w13"], strides=(64, 1, 8)), p["w2"], w, ids)
    # A future major version is refused and left to its producer.
    future = fake(p["w13"], major=2)
    with pytest.raises(NotImplementedError, match="DLPack 2.0"):
        dmoe.fused_experts(p["x"], future, p["w2"], w, ids)
    assert future.deleted == 1
    # Read-only exports are fine for inputs, refused for outputs.
    from dmoe import _C
    ro = fake(p["x"], read_only=True)
    y = np.empty_like(p["x"])
    _C.run(_C.OP_EXPERTS, ro, y=y, topk_ids=ids, topk_weights=w, w13=p["w13"], w2=p["w2"],
           backend=dmoe.get_default_backend())  # the backend `want` ran on: bitwise equal
    np.testing.assert_array_equal(y, want)
    with pytest.raises(ValueError, match="y is read-only"):
        _C.run(_C.OP_EXPERTS, p["x"], y=fake(y, read_only=True), topk_ids=ids, topk_weights=w,
               w13=p["w13"], w2=p["w2"])
    # Host producers get no stream argument.
    assert v.streams == [None]


def test_cuda_producers_get_the_stream(p):
    w, ids = routing(p)
    f = fake(p["x"], device_type=KDLCUDA)
    with pytest.raises(ValueError):
        dmoe.fused_experts(f, p["w13"], p["w2"], w, ids, stream=1234)
    assert f.streams == [1234]
    f = fake(p["x"], device_type=KDLCUDA)
    with pytest.raises(ValueError):
        dmoe.fused_experts(f, p["w13"], p["w2"], w, ids, stream=0)
    assert f.streams == [1]  # the legacy default stream, as the protocol spells it


def test_too_many_tokens_is_reported_as_tokens_not_max_tokens():
    # One call takes at most 2^30 / top_k tokens (dmoe.h); E = K = 4096 makes that 2^18,
    # small enough to build the arrays. The caller never set max_tokens: name the tokens.
    E = K = 4096
    x = np.ones((2**18 + 1, 1), np.float32)
    w = np.ones((E, 1), np.float32), np.ones((E, 2, 1), np.float32), np.ones((E, 1, 1), np.float32)
    with pytest.raises(dmoe.DmoeValueError, match=r"x has 262145 tokens; one call takes at most "
                       r"262144 with top_k=4096") as e:
        dmoe.forward(x, *w, K, backend="cpu-ref")
    assert e.value.status_name == "DMOE_ERR_TOO_MANY_TOKENS"


def test_too_many_experts_in_logits_refused_before_the_identity_router_is_made():
    from dmoe import _core
    dmoe.clear_cache()
    for E in (4097, 0):
        logits = np.zeros((1, E), np.float32)
        with pytest.raises(dmoe.DmoeValueError, match=f"gating_output has {E} experts; dmoe "
                           "takes 1 to 4096"):
            dmoe.fused_topk(logits[:, :1], logits, 1, True)
    # The (E, E) identity router of a refused E is not kept (64 MiB for E = 4097).
    assert _core._identity_cache == {}
    # Far beyond the limit: the same error, not a MemoryError for an (E, E) array.
    with pytest.raises(dmoe.DmoeValueError, match="200000 experts"):
        dmoe.fused_topk(np.zeros((1, 1), np.float32), np.zeros((1, 200000), np.float32), 1, True)


def test_bad_top_k_refused_before_the_outputs_are_allocated(p):
    # Negative: not numpy's "negative dimensions are not allowed".
    with pytest.raises(dmoe.DmoeValueError, match=r"top_k must be in \[1, n_experts=4\], got -1"):
        dmoe.fused_topk(p["x"], p["logits"], -1, True)
    with pytest.raises(dmoe.DmoeValueError, match=r"top_k must be in \[1, n_experts=4\], got -2"):
        dmoe.fused_moe(p["x"], p["w13"], p["w2"], p["logits"], -2, True)
    # Huge: not a MemoryError for (T, top_k) outputs of 40 GiB.
    with pytest.raises(dmoe.DmoeValueError, match=r"got 2147483647"):
        dmoe.route(p["x"], p["router"], 2**31 - 1)


def test_int64_ids_beyond_int32_are_refused_not_wrapped(p):
    w, ids = routing(p)
    # 2**32 + id would become id again in int32: a valid-looking, wrong expert.
    with pytest.raises(dmoe.DmoeValueError, match="topk_ids holds values outside int32"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"], w, ids.astype(np.int64) + 2**32)
    with pytest.raises(dmoe.DmoeValueError, match="topk_ids holds values outside int32"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"], w, ids.astype(np.int64) - 2**32)
    with pytest.raises(ValueError, match="outside int32"):
        dmoe.experts(p["x"], p["w13"], p["w2"], w, ids.astype(np.uint32) + np.uint32(2**31))
    # In range they are converted, as before.
    y = dmoe.fused_experts(p["x"], p["w13"], p["w2"], w, ids.astype(np.int64))
    np.testing.assert_array_equal(y, dmoe.fused_experts(p["x"], p["w13"], p["w2"], w, ids))


def test_expert_map_checks_the_global_ids_and_the_weights_shape(p):
    w, ids = routing(p)
    expert_map = np.array([0, 1, 2, 3, -1, -1, -1, 3], np.int32)  # 8 global experts
    kw = dict(expert_map=expert_map, global_num_experts=8)
    # A negative id would index expert_map from its end (-1 -> global expert 7).
    with pytest.raises(dmoe.DmoeValueError, match=r"outside expert_map's \[0, 8\)"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"], w, ids - 1, **kw)
    # Too large: dmoe's error, not numpy's IndexError.
    with pytest.raises(dmoe.DmoeValueError, match=r"outside expert_map's \[0, 8\)"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"], w, ids + 8, **kw)
    # Weights of another shape would be broadcast by the remap.
    with pytest.raises(dmoe.DmoeValueError, match=r"topk_weights has shape \(5, 1\), "
                       r"expected \(5, 2\)"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"], w[:, :1].copy(), ids, **kw)
    # Float ids are refused as without an expert_map, not truncated.
    with pytest.raises(dmoe.DmoeTypeError, match="topk_ids must be int32"):
        dmoe.fused_experts(p["x"], p["w13"], p["w2"], w, ids + 0.5, **kw)


def test_fused_moe_logits_must_have_one_column_per_expert(p):
    # Fewer logits than experts: expert 3 could never be picked, and nothing said so.
    with pytest.raises(dmoe.DmoeValueError, match="gating_output has 3 experts but w1 has 4"):
        dmoe.fused_moe(p["x"], p["w13"], p["w2"], p["logits"][:, :3].copy(), 2, True)
    more = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    with pytest.raises(dmoe.DmoeValueError, match="gating_output has 6 experts but w1 has 4"):
        dmoe.fused_moe(p["x"], p["w13"], p["w2"], more, 2, True)
    # With an expert_map the logits are over the global experts.
    expert_map = np.array([0, 1, 2, 3, -1, -1], np.int32)
    y = dmoe.fused_moe(p["x"], p["w13"], p["w2"], more, 2, True, expert_map=expert_map,
                       global_num_experts=6)
    assert y.shape == p["x"].shape
    with pytest.raises(dmoe.DmoeValueError, match="gating_output has 4 experts but expert_map "
                       "has 6"):
        dmoe.fused_moe(p["x"], p["w13"], p["w2"], p["logits"], 2, True, expert_map=expert_map)


def test_empty_batch_still_checks_shapes():
    """T = 0 returns empty outputs only after the same checks as any batch (H mismatch, bad router)."""
    p = make_problem(0, 8, 4, 4)
    x17 = np.zeros((0, 17), np.float32)
    with pytest.raises(dmoe.DmoeValueError, match="17|8"):
        dmoe.forward(x17, p["router"], p["w13"], p["w2"], 2)
    w, ids = dmoe.route(p["x"], p["router"], 2)
    assert w.shape == (0, 2) and ids.shape == (0, 2)
    with pytest.raises(dmoe.DmoeValueError):
        dmoe.experts(x17, p["w13"], p["w2"], w, ids)
    with pytest.raises(dmoe.DmoeValueError):
        dmoe.route(p["x"], np.ascontiguousarray(p["router"][:, :5]), 2)  # router (E, 5), H = 8
    with pytest.raises(dmoe.DmoeTypeError):
        dmoe.route(p["x"], p["router"].astype(np.float64), 2)
    y = dmoe.forward(p["x"], p["router"], p["w13"], p["w2"], 2)
    assert y.shape == (0, 8) and y.dtype == np.float32


def test_integer_arguments_are_not_truncated(p):
    for bad in (2.7, 2.0, "2", True):
        with pytest.raises(dmoe.DmoeValueError, match="top_k must be an integer"):
            dmoe.route(p["x"], p["router"], bad)
        with pytest.raises(dmoe.DmoeValueError, match="top_k must be an integer"):
            dmoe.forward(p["x"], p["router"], p["w13"], p["w2"], bad)
    with pytest.raises(dmoe.DmoeValueError, match="num_expert_group must be an integer"):
        dmoe.route(p["x"], p["router"], 2, num_expert_group=1.5)
    w, ids = dmoe.route(p["x"], p["router"], np.int64(2))  # integer types are integers
    assert ids.shape == (5, 2)
