"""dmoe.MoE.from_hf against the Hugging Face transformers MoE blocks themselves
(Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3), with small random weights.

Runs on the CPU (float32, host backends) whenever torch and transformers are
installed, and on CUDA (bfloat16, backend 'cuda') when a GPU and a libdmoe
built with CUDA are there. Skipped otherwise."""
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed")
transformers = pytest.importorskip("transformers", reason="transformers is not installed")

import dmoe  # noqa: E402
import reference as ref  # noqa: E402

H, F, E, K = 64, 32, 8, 2


HAS_CUDA = torch.cuda.is_available() and dmoe.backend_available("cuda")


def _init(block, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in block.named_parameters():
            fan_in = p.shape[-1]
            p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
        for name, b in block.named_buffers():
            if "correction_bias" in name:
                b.copy_(torch.randn(b.shape, generator=g) * 0.05)
    return block


def mixtral():
    from transformers.models.mixtral import modeling_mixtral as m

    cfg = transformers.MixtralConfig(hidden_size=H, intermediate_size=F, num_local_experts=E,
                                     num_experts_per_tok=K)
    return m.MixtralSparseMoeBlock(cfg)


def qwen2_moe():
    from transformers.models.qwen2_moe import modeling_qwen2_moe as m

    cfg = transformers.Qwen2MoeConfig(hidden_size=H, moe_intermediate_size=F, num_experts=E,
                                      num_experts_per_tok=K, shared_expert_intermediate_size=48,
                                      norm_topk_prob=False)
    return m.Qwen2MoeSparseMoeBlock(cfg)


def qwen3_moe():
    from transformers.models.qwen3_moe import modeling_qwen3_moe as m

    cfg = transformers.Qwen3MoeConfig(hidden_size=H, moe_intermediate_size=F, num_experts=E,
                                      num_experts_per_tok=K, norm_topk_prob=True)
    return m.Qwen3MoeSparseMoeBlock(cfg)


def olmoe():
    from transformers.models.olmoe import modeling_olmoe as m

    cfg = transformers.OlmoeConfig(hidden_size=H, intermediate_size=F, num_experts=E,
                                   num_experts_per_tok=K, norm_topk_prob=False)
    return m.OlmoeSparseMoeBlock(cfg)


def deepseek_v3():
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m

    cfg = transformers.DeepseekV3Config(hidden_size=H, moe_intermediate_size=F,
                                        n_routed_experts=16, num_experts_per_tok=4, n_group=4,
                                        topk_group=2, n_shared_experts=2,
                                        routed_scaling_factor=2.5, norm_topk_prob=True)
    return m.DeepseekV3MoE(cfg)


BLOCKS = {"mixtral": mixtral, "qwen2_moe": qwen2_moe, "qwen3_moe": qwen3_moe, "olmoe": olmoe,
          "deepseek_v3": deepseek_v3}


def _make(name, seed=0):
    try:
        block = BLOCKS[name]()
    except (ImportError, AttributeError, TypeError) as e:
        pytest.skip(f"transformers {transformers.__version__} has no usable {name} block: {e}")
    return _init(block, seed).eval()


def _compare(name, device, dtype, backend, tol):
    """dmoe on a block in dtype against transformers on the same values in float32
    (so that bfloat16 rounding inside the block's router cannot flip a routing
    decision the comparison would then blame on dmoe)."""
    import copy

    block = _make(name).to(device=device, dtype=dtype)
    bias = getattr(getattr(block, "gate", None), "e_score_correction_bias", None)
    if bias is not None:  # a float32 buffer in the checkpoints
        block.gate.e_score_correction_bias.data = bias.float()
    x = torch.randn(3, 11, H, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    moe = dmoe.MoE.from_hf(block, backend=backend)
    oracle = copy.deepcopy(block).float()
    with torch.no_grad():
        want = oracle(x.float())
        if isinstance(want, tuple):  # some releases also return router logits
            want = want[0]
    got = moe(x)
    assert got.shape == x.shape and got.dtype == dtype and got.device == x.device
    err = ref.rel_l2(got.float().cpu().numpy(), want.float().cpu().numpy())
    assert err < tol, f"{name}: relative L2 error {err:.3g}"


@pytest.mark.parametrize("name", list(BLOCKS))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 1.5e-2)],
                         ids=["float32", "bfloat16"])
def test_block_matches_transformers_cpu(name, dtype, tol, backend):
    _compare(name, "cpu", dtype, backend, tol)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and libdmoe built with the cuda "
                    "backend (DMOE_CUDA=ON)")
@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_matches_transformers_cuda(name):
    _compare(name, "cuda", torch.bfloat16, None, 1.5e-2)


def test_from_hf_is_zero_copy_for_3d_experts():
    block = _make("mixtral")
    moe = dmoe.MoE.from_hf(block)
    experts = block.experts
    if not hasattr(experts, "gate_up_proj"):
        pytest.skip("this transformers release keeps experts as modules")
    assert moe.w13.data_ptr() == experts.gate_up_proj.data_ptr()
    assert moe.w2.data_ptr() == experts.down_proj.data_ptr()
    assert "E=8" in repr(moe)


def test_per_expert_modules_like_older_transformers():
    """transformers < 5 kept one MLP module per expert (Mixtral: w1 gate, w3 up,
    w2 down); from_hf stacks them into the same layout."""
    block = _make("mixtral", seed=3)
    if not hasattr(block.experts, "gate_up_proj"):
        pytest.skip("needs the 3-D expert layout to build the comparison")
    nn = torch.nn

    class Expert(nn.Module):
        def __init__(self, gate_up, down):
            super().__init__()
            self.w1 = nn.Linear(H, F, bias=False)
            self.w3 = nn.Linear(H, F, bias=False)
            self.w2 = nn.Linear(F, H, bias=False)
            self.act_fn = nn.SiLU()
            with torch.no_grad():
                self.w1.weight.copy_(gate_up[:F])
                self.w3.weight.copy_(gate_up[F:])
                self.w2.weight.copy_(down)

    class OldBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.top_k = K
            self.gate = nn.Linear(H, E, bias=False)
            with torch.no_grad():
                self.gate.weight.copy_(block.gate.weight)
            self.experts = nn.ModuleList(
                Expert(block.experts.gate_up_proj[e], block.experts.down_proj[e])
                for e in range(E))

    x = torch.randn(9, H)
    new, old = dmoe.MoE.from_hf(block), dmoe.MoE.from_hf(OldBlock())
    torch.testing.assert_close(old(x), new(x), rtol=0, atol=0)


def test_deepseek_v2_style_gates():
    """A gate without a correction bias (DeepSeek-V2): group_limited_greedy with groups, or a
    method dmoe does not know, is refused; greedy keeps its scaling factor where V2 applies it
    (norm_topk_prob off) and drops it where V2 ignores it (norm_topk_prob on)."""
    block = _make("mixtral", seed=5)
    if not hasattr(block.experts, "gate_up_proj"):
        pytest.skip("needs the 3-D expert layout")
    nn = torch.nn

    class Gate(nn.Module):
        def __init__(self, method, n_group, norm):
            super().__init__()
            self.weight = nn.Parameter(block.gate.weight.detach().clone())
            self.top_k, self.topk_method, self.n_group, self.topk_group = K, method, n_group, 1
            self.norm_topk_prob, self.routed_scaling_factor = norm, 16.0

    class V2Block(nn.Module):
        def __init__(self, *gate_args):
            super().__init__()
            self.gate = Gate(*gate_args)
            self.experts = block.experts

    for method, n_group in (("group_limited_greedy", 2), ("gready", 1), ("noaux_tc", 1)):
        with pytest.raises(dmoe.UnsupportedError, match="topk_method"):
            dmoe.MoE.from_hf(V2Block(method, n_group, False))
    assert dmoe.MoE.from_hf(V2Block("greedy", 2, False)).routed_scaling_factor == 16.0
    assert dmoe.MoE.from_hf(V2Block("greedy", 2, True)).routed_scaling_factor == 1.0
    moe = dmoe.MoE.from_hf(V2Block("group_limited_greedy", 1, False))
    assert moe.num_expert_group == 0 and moe.routed_scaling_factor == 16.0
