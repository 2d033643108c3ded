"""dmoe.MoE: one MoE layer object, from arrays or from a Hugging Face MoE block.

    moe = dmoe.MoE.from_hf(model.model.layers[3].mlp)   # Mixtral, Qwen2/3-MoE, OLMoE, DeepSeek-V3
    y = moe(x)                                           # x (..., H), same kind and dtype out

The layer keeps views of the weights in dmoe's layout (router (E, H), w13
(E, 2F, H) gate rows then up rows, w2 (E, H, F), optional shared experts and
correction bias); it copies only where the source layout differs (per-expert
modules of older transformers are stacked once, at construction). Each call
runs dmoe's forward (routing and experts in one call) through the C
extension, whose layer cache makes repeated calls cheap.
"""
from . import _C, _core
from ._arrays import kind_of

__all__ = ["MoE"]


class MoE:
    """An MoE layer: y = sum_k w[t, k] * FFN_{ids[t, k]}(x[t]) (+ shared experts).

    Arrays (one kind, one device; weights in one float dtype):
      router (E, H), w13 (E, 2F, H), w2 (E, H, F);
      correction_bias (E) float32 (DeepSeek-V3; picks experts, not weights);
      shared_w13 (S, 2Fs, H), shared_w2 (S, H, Fs), shared_gate (1, H).
    Routing: top_k, renormalize, scoring_func ('softmax' | 'sigmoid'),
    num_expert_group / topk_group (grouped top-k), routed_scaling_factor.
    backend / n_threads: as in dmoe.forward (default: by device).
    """

    def __init__(self, router, w13, w2, top_k, *, renormalize=True, scoring_func="softmax",
                 num_expert_group=0, topk_group=0, routed_scaling_factor=1.0,
                 correction_bias=None, shared_w13=None, shared_w2=None, shared_gate=None,
                 backend=None, n_threads=None):
        self.router = router
        self.w13 = w13
        self.w2 = w2
        self.top_k = _core._int_arg(top_k, "top_k")
        self.renormalize = bool(renormalize)
        self.scoring_func = scoring_func
        _core._scoring(scoring_func)  # validates
        self.num_expert_group = _core._int_arg(num_expert_group or 0, "num_expert_group")
        self.topk_group = _core._int_arg(topk_group or 0, "topk_group")
        self.routed_scaling_factor = float(routed_scaling_factor)
        self.correction_bias = correction_bias
        self.shared_w13 = shared_w13
        self.shared_w2 = shared_w2
        self.shared_gate = shared_gate
        self.backend = backend
        self.n_threads = n_threads

    @property
    def num_experts(self):
        return self.w13.shape[0]

    @property
    def hidden_size(self):
        return self.w13.shape[2]

    @property
    def intermediate_size(self):
        return self.w13.shape[1] // 2

    def __repr__(self):
        shared = f", shared={self.shared_w13.shape[0]}x{self.shared_w13.shape[1] // 2}" \
            if self.shared_w13 is not None else ""
        return (f"dmoe.MoE(E={self.num_experts}, H={self.hidden_size}, "
                f"F={self.intermediate_size}, top_k={self.top_k}, "
                f"scoring={self.scoring_func!r}, renormalize={self.renormalize}{shared})")

    def _routing(self):
        return dict(renormalize=self.renormalize, scoring_func=self.scoring_func,
                    num_expert_group=self.num_expert_group, topk_group=self.topk_group,
                    routed_scaling_factor=self.routed_scaling_factor,
                    correction_bias=self.correction_bias)

    def __call__(self, x, *, stream=None):
        """y with x's shape (..., H), kind and dtype."""
        shape = tuple(x.shape)
        x2 = x.reshape(-1, shape[-1]) if len(shape) != 2 else x
        y = _core.forward(x2, self.router, self.w13, self.w2, self.top_k, **self._routing(),
                          shared_w13=self.shared_w13, shared_w2=self.shared_w2,
                          shared_gate=self.shared_gate, backend=self.backend,
                          n_threads=self.n_threads, stream=stream)
        return y.reshape(shape) if len(shape) != 2 else y

    forward = __call__

    def route(self, x, *, stream=None):
        """(topk_weights (T, K) float32, topk_ids (T, K) int32) for x (T, H)."""
        return _core.route(x, self.router, self.top_k, **self._routing(), backend=self.backend,
                           n_threads=self.n_threads, stream=stream)

    def experts(self, x, topk_weights, topk_ids, *, stream=None):
        """The expert half (plus shared experts) with given routing."""
        return _core.experts(x, self.w13, self.w2, topk_weights, topk_ids,
                             shared_w13=self.shared_w13, shared_w2=self.shared_w2,
                             shared_gate=self.shared_gate, backend=self.backend,
                             n_threads=self.n_threads, stream=stream)

    # ---- Hugging Face blocks ----

    @classmethod
    def from_hf(cls, block, *, backend=None, n_threads=None):
        """A layer with the weights of a transformers MoE block (torch tensors, no copy
        where the layout already matches).

        Blocks: MixtralSparseMoeBlock, Qwen2MoeSparseMoeBlock (shared expert with
        sigmoid gate), Qwen3MoeSparseMoeBlock, OlmoeSparseMoeBlock, DeepseekV3MoE
        (sigmoid scoring, correction bias, grouped top-k, scaling, shared experts);
        experts stored as 3-D parameters (transformers >= 5) or as a list of MLP
        modules (older releases). SwiGLU experts only."""
        import torch

        gate = getattr(block, "gate", None)
        router = getattr(gate, "weight", None)
        if router is None or router.dim() != 2:
            raise _C.UnsupportedError(f"dmoe: {type(block).__name__} has no router "
                                      "(block.gate.weight of shape (E, H))")
        E, H = router.shape
        top_k = _first_attr([block, gate], ("top_k", "num_experts_per_tok"))
        if top_k is None:
            raise _C.UnsupportedError(f"dmoe: cannot find top_k on {type(block).__name__}")

        w13, w2 = _experts_from_hf(block.experts, E, H)
        dtype = w13.dtype
        routing = dict(renormalize=True, scoring_func="softmax")
        norm = _first_attr([block, gate], ("norm_topk_prob",))
        if norm is not None:
            routing["renormalize"] = bool(norm)
        bias = getattr(gate, "e_score_correction_bias", None)
        if bias is not None:  # DeepSeek-V3 style (noaux_tc)
            routing.update(scoring_func="sigmoid",
                           correction_bias=bias.detach().to(torch.float32).contiguous())
            n_group = _first_attr([gate, block], ("n_group", "num_group"))
            topk_group = _first_attr([gate, block], ("topk_group",))
            if n_group and n_group > 1:
                routing.update(num_expert_group=int(n_group), topk_group=int(topk_group))
            scale = _first_attr([gate, block], ("routed_scaling_factor",))
            if scale is not None:
                routing["routed_scaling_factor"] = float(scale)
            method = getattr(gate, "topk_method", "noaux_tc")
            if method not in ("noaux_tc", "greedy"):
                raise _C.UnsupportedError(f"dmoe: topk_method {method!r} is not supported")
        else:  # DeepSeek-V2 style gates (softmax, no bias) carry their own rules
            method = _first_attr([gate, block], ("topk_method",))
            n_group = _first_attr([gate, block], ("n_group", "num_group"))
            if method is not None and method != "greedy" and (method != "group_limited_greedy" or
                                                              (n_group or 0) > 1):
                raise _C.UnsupportedError(f"dmoe: topk_method {method!r} without a correction bias is "
                                          "not supported (dmoe routes greedy, and noaux_tc with a bias)")
            scale = _first_attr([gate, block], ("routed_scaling_factor",))
            # DeepSeek-V2 scales the weights only when it does not renormalise them
            if scale is not None and not routing["renormalize"]:
                routing["routed_scaling_factor"] = float(scale)
        scoring = getattr(gate, "scoring_func", None)
        if scoring is not None:
            routing["scoring_func"] = scoring

        shared = dict()
        mlp = getattr(block, "shared_expert", None)
        if mlp is None:
            mlp = getattr(block, "shared_experts", None)
        if mlp is not None:
            s13, s2 = _mlp_from_hf(mlp)
            shared.update(shared_w13=s13.unsqueeze(0).to(dtype),
                          shared_w2=s2.unsqueeze(0).to(dtype))
            sg = getattr(block, "shared_expert_gate", None)
            if sg is not None:
                shared["shared_gate"] = sg.weight.detach().to(dtype).contiguous()
        return cls(_weight(router, dtype), w13, w2, int(top_k), **routing, **shared,
                   backend=backend, n_threads=n_threads)


def _first_attr(objs, names):
    for o in objs:
        for n in names:
            v = getattr(o, n, None)
            if v is not None:
                return v
        cfg = getattr(o, "config", None)
        if cfg is not None:
            for n in names:
                v = getattr(cfg, n, None)
                if v is not None:
                    return v
    return None


def _weight(t, dtype=None):
    t = t.detach()
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t.contiguous()


def _check_silu(module):
    act = getattr(module, "act_fn", None)
    if act is None:
        return
    name = type(act).__name__.lower()
    if "silu" not in name and "swish" not in name:
        raise _C.UnsupportedError(f"dmoe: experts use {type(act).__name__}; dmoe runs SwiGLU "
                                  "(SiLU-gated) experts only")


def _mlp_from_hf(mlp):
    """(w13 (2F, H), w2 (H, F)) of one gated MLP module."""
    import torch

    _check_silu(mlp)
    if hasattr(mlp, "gate_proj"):
        g, u, d = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    elif hasattr(mlp, "w1"):  # Mixtral's MixtralBlockSparseTop2MLP: w1 gate, w3 up, w2 down
        g, u, d = mlp.w1, mlp.w3, mlp.w2
    else:
        raise _C.UnsupportedError(f"dmoe: unknown expert MLP {type(mlp).__name__}")
    for lin in (g, u, d):
        if getattr(lin, "bias", None) is not None:
            raise _C.UnsupportedError("dmoe: expert projections with bias are not supported")
    return torch.cat([g.weight.detach(), u.weight.detach()], 0), d.weight.detach()


def _experts_from_hf(experts, E, H):
    """w13 (E, 2F, H), w2 (E, H, F) from an experts module."""
    import torch

    gate_up = getattr(experts, "gate_up_proj", None)
    if gate_up is not None:  # transformers >= 5: 3-D parameters
        _check_silu(experts)
        if getattr(experts, "has_bias", False) or getattr(experts, "gate_up_proj_bias", None) \
                is not None:
            raise _C.UnsupportedError("dmoe: expert projections with bias are not supported")
        if getattr(experts, "has_gate", True) is False:
            raise _C.UnsupportedError("dmoe: experts without a gate (non-GLU) are not supported")
        w13 = gate_up.detach()
        w2 = experts.down_proj.detach()
        if getattr(experts, "is_transposed", False):  # (E, H, 2F) and (E, F, H)
            w13 = w13.transpose(1, 2)
            w2 = w2.transpose(1, 2)
        if getattr(experts, "is_concatenated", True) is False:  # gate0, up0, gate1, up1, ...
            F2 = w13.shape[1]
            w13 = torch.cat([w13[:, 0:F2:2], w13[:, 1:F2:2]], 1)
        if w13.shape[0] != E or w13.shape[2] != H:
            raise _C.UnsupportedError(f"dmoe: gate_up_proj has shape {tuple(w13.shape)}, "
                                      f"expected (E={E}, 2F, H={H})")
        return w13.contiguous(), w2.to(w13.dtype).contiguous()
    mods = list(experts)
    if len(mods) != E:
        raise _C.UnsupportedError(f"dmoe: {len(mods)} expert modules for {E} router rows")
    pairs = [_mlp_from_hf(m) for m in mods]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
