"""vLLM-compatible MoE functions: swapping is a change of import.

    from vllm.model_executor.layers.fused_moe import fused_moe, fused_experts
    from dmoe.vllm import fused_moe, fused_experts        # the same calls

Names, argument order and weight layout follow vLLM's
vllm/model_executor/layers/fused_moe/fused_moe.py:
  hidden_states (T, H); w1 (E, 2N, H): gate rows then up rows (vLLM's w13);
  w2 (E, H, N); gating_output (T, E): router LOGITS (before softmax);
  topk_weights (T, K) float32 and topk_ids (T, K) int32, as fused_topk gives.
They take numpy arrays as well as torch tensors (and cupy / jax CPU arrays),
and return the caller's kind. Keyword-only extras: backend=, n_threads=,
stream= (see dmoe._core).

Supported as in vLLM: renormalize, topk, inplace (the result is computed
apart and copied into hidden_states: no memory is saved), activation="silu",
use_grouped_topk / num_expert_group / topk_group, custom_routing_function,
scoring_func, routed_scaling_factor, e_score_correction_bias, indices_type,
global_num_experts, and expert_map (by remapping: pairs routed to experts of
other ranks get weight 0 on local expert 0, so the result is right but that
expert does the extra work; real expert parallelism is dmoe's src/ep).

Not supported (a value other than the default raises dmoe.UnsupportedError):
  activation other than "silu" ("gelu", "swigluoai", "*_no_mul");
  apply_router_weight_on_input=True;
  every quantization argument: use_fp8_w8a8, use_int8_w8a8, use_int8_w8a16,
    use_int4_w4a16, use_mxfp4_w4a4, ocp_mx_scheme, per_channel_quant,
    w1_scale, w2_scale, w1_zp, w2_zp, a1_scale, a2_scale, block_shape,
    quant_config (unless unquantized), w1_bias, w2_bias;
  grouped_topk without e_score_correction_bias when groups hold more than one
    expert: vLLM scores a group by its best expert there (DeepSeek-V2's
    group_limited_greedy), dmoe by the sum of its best two (DeepSeek-V3's
    noaux_tc). Pass a zero e_score_correction_bias to ask for the top-2 sum.
Ignored: allow_deep_gemm (a hint for fp8 kernels).

Differences: ties between equal scores go to the lower expert index, routing
is computed in float64 (cpu-ref) or float32, and fused_topk's renormalisation
leaves a row whose weights sum to 0 as it is (vLLM would divide by 0).
"""
from . import _C, _core
from ._arrays import kind_of

__all__ = ["fused_moe", "fused_topk", "grouped_topk", "fused_experts"]

_QUANT_ARGS = ("use_fp8_w8a8", "use_int8_w8a8", "use_int8_w8a16", "use_int4_w4a16",
               "use_mxfp4_w4a4", "ocp_mx_scheme", "per_channel_quant", "w1_scale", "w2_scale",
               "w1_zp", "w2_zp", "a1_scale", "a2_scale", "block_shape", "w1_bias", "w2_bias",
               "a1_gscale", "a2_gscale", "w1_alpha", "w2_alpha")


def _unsupported(what):
    raise _C.UnsupportedError(f"dmoe: {what} is not supported (see dmoe.vllm's docstring)")


def _check_common(activation, apply_router_weight_on_input, quant_config, extra):
    if activation != "silu":
        _unsupported(f"activation={activation!r} (only 'silu', i.e. SwiGLU)")
    if apply_router_weight_on_input:
        _unsupported("apply_router_weight_on_input=True")
    if quant_config is not None:
        # vLLM's FusedMoEQuantConfig: unquantized when it has no quant_dtype.
        if getattr(quant_config, "quant_dtype", None) is not None or \
                getattr(quant_config, "use_fp8_w8a8", False):
            _unsupported("a quantized quant_config")
    for name, value in extra.items():
        if name == "allow_deep_gemm":
            continue
        if name not in _QUANT_ARGS:
            raise TypeError(f"dmoe.vllm: unexpected keyword argument {name!r}")
        if value is not None and value is not False:
            _unsupported(f"{name}={value!r} (quantized weights)")


def _num_tokens(hidden_states, gating_output):
    for a, name in ((hidden_states, "hidden_states"), (gating_output, "gating_output")):
        if not hasattr(a, "__dlpack__") or not hasattr(a, "shape"):
            raise _C.DmoeTypeError(f"dmoe: {name} must be an array supporting DLPack (numpy, "
                                   f"torch, cupy, jax), got {type(a).__qualname__}")
    if hidden_states.shape[0] != gating_output.shape[0]:
        raise _C.DmoeValueError(
            f"dmoe: hidden_states has {hidden_states.shape[0]} tokens but gating_output has "
            f"{gating_output.shape[0]} (number of tokens mismatch)")


def fused_topk(hidden_states, gating_output, topk, renormalize, indices_type=None, *,
               backend=None, n_threads=None, stream=None):
    """Softmax top-k routing from router logits.

    Returns (topk_weights (T, K) float32, topk_ids (T, K) int32 or
    indices_type, token_expert_indices (T, K) int32), like vLLM: the third
    output is k * T + t, the row of pair (t, k) in vLLM's expanded layout.
    hidden_states is used only for its token count, as in vLLM."""
    _num_tokens(hidden_states, gating_output)
    weights, ids = _core.route_logits(gating_output, topk, renormalize=renormalize,
                                      backend=backend, n_threads=n_threads, stream=stream)
    kind = kind_of(gating_output)
    if indices_type is not None and kind.dtype_name(ids) != _dtype_str(indices_type):
        ids = kind.cast(ids, indices_type)
    T = gating_output.shape[0]
    return weights, ids, kind.arange_topk_source(T, _core._int_arg(topk, "topk"), gating_output)


def _dtype_str(dtype):
    name = getattr(dtype, "name", None)
    return (name if isinstance(name, str) else str(dtype)).rsplit(".", 1)[-1]


def grouped_topk(hidden_states, gating_output, topk, renormalize, num_expert_group=0,
                 topk_group=0, scoring_func="softmax", routed_scaling_factor=1.0,
                 e_score_correction_bias=None, *, backend=None, n_threads=None, stream=None):
    """Grouped top-k routing (DeepSeek-V2/V3) from router logits.

    Returns (topk_weights (T, K) float32, topk_ids (T, K) int32). Experts form
    num_expert_group equal groups, the topk_group best groups are kept, then
    top-k over their experts; e_score_correction_bias (E) steers the choice
    only. Without a bias, groups of more than one expert are refused (vLLM
    scores them by their best expert, dmoe by its best two)."""
    _num_tokens(hidden_states, gating_output)
    _core._scoring(scoring_func)
    E = gating_output.shape[-1]
    n_group = _core._int_arg(num_expert_group or 0, "num_expert_group")
    if n_group > 1 and e_score_correction_bias is None and E // n_group > 1:
        _unsupported("grouped_topk without e_score_correction_bias (vLLM scores a group by "
                     "its best expert; dmoe by the sum of its best two: pass a zero bias "
                     "for that)")
    return _core.route_logits(gating_output, topk, renormalize=renormalize,
                              scoring_func=scoring_func, num_expert_group=n_group,
                              topk_group=_core._int_arg(topk_group or 0, "topk_group"),
                              routed_scaling_factor=routed_scaling_factor,
                              correction_bias=e_score_correction_bias, backend=backend,
                              n_threads=n_threads, stream=stream)


def _apply_expert_map(topk_weights, topk_ids, expert_map, kind):
    """Global ids -> local ids; pairs of other ranks (-1) get weight 0 on expert 0."""
    # Checked here because the remap hides what the C extension would catch: numpy and
    # torch indexing wrap negative ids, and np.where / torch.where broadcast the weights.
    topk_ids = _core._as_dtype(kind, topk_ids, "int32", "topk_ids")
    if tuple(topk_weights.shape) != tuple(topk_ids.shape):
        raise _C.DmoeValueError(f"dmoe: topk_weights has shape {tuple(topk_weights.shape)}, "
                                f"expected {tuple(topk_ids.shape)} like topk_ids")
    n_global = expert_map.shape[0]
    if _core._host_values(topk_ids) and _core._numel(topk_ids) and \
            (int(topk_ids.min()) < 0 or int(topk_ids.max()) >= n_global):
        raise _C.DmoeValueError(f"dmoe: topk_ids holds ids from {int(topk_ids.min())} to "
                                f"{int(topk_ids.max())}, outside expert_map's [0, {n_global})")
    if kind.name == "torch":
        import torch

        local = expert_map[topk_ids.long()]
        keep = local >= 0
        return (torch.where(keep, topk_weights.float(), 0.0),
                torch.where(keep, local, 0).to(torch.int32))
    if kind.name == "numpy":
        import numpy as np

        local = np.asarray(expert_map)[np.asarray(topk_ids).astype(np.int64)]
        keep = local >= 0
        return (np.where(keep, topk_weights, 0).astype(np.float32),
                np.where(keep, local, 0).astype(np.int32))
    _unsupported(f"expert_map with {kind.name} arrays")


def fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, inplace=False,
                  activation="silu", apply_router_weight_on_input=False, global_num_experts=-1,
                  expert_map=None, quant_config=None, allow_deep_gemm=False, *, backend=None,
                  n_threads=None, stream=None, **quant_kwargs):
    """y (T, H) = sum_k topk_weights[t, k] * w2_e @ (silu(gate_e x) * up_e x), e = topk_ids[t, k].

    w1 (E, 2N, H), w2 (E, H, N), all in one float dtype; hidden_states float32,
    bfloat16 or float16 (numpy: float32 or float16); topk_ids int32 (other
    integers are converted); topk_weights float32 (other floats converted).
    Older vLLM's keyword arguments (use_fp8_w8a8=False, w1_scale=None, ...)
    are accepted when they ask for no quantization."""
    _check_common(activation, apply_router_weight_on_input, quant_config, quant_kwargs)
    kind = kind_of(hidden_states)
    E = w1.shape[0] if hasattr(w1, "shape") else None  # else the C extension says what is wrong
    if expert_map is not None:
        topk_weights, topk_ids = _apply_expert_map(topk_weights, topk_ids, expert_map, kind)
    elif global_num_experts not in (-1, None) and E is not None and int(global_num_experts) != E:
        raise _C.DmoeValueError(f"dmoe: global_num_experts={global_num_experts} differs from "
                                f"w1's {E} experts and no expert_map was given")
    out = _core.experts(hidden_states, w1, w2, topk_weights, topk_ids, backend=backend,
                        n_threads=n_threads, stream=stream)
    if inplace:
        if kind.name == "torch":
            hidden_states.copy_(out)
        elif kind.name in ("numpy", "cupy"):
            hidden_states[...] = out
        else:
            _unsupported(f"inplace=True with {kind.name} arrays")
        return hidden_states
    return out


def fused_moe(hidden_states, w1, w2, gating_output, topk, renormalize, inplace=False,
              activation="silu", use_grouped_topk=False, num_expert_group=None, topk_group=None,
              custom_routing_function=None, *quant_args, scoring_func="softmax",
              routed_scaling_factor=1.0, e_score_correction_bias=None, global_num_experts=-1,
              expert_map=None, quant_config=None, backend=None, n_threads=None, stream=None,
              **quant_kwargs):
    """One MoE layer from router logits: routing (fused_topk, grouped_topk or
    custom_routing_function) then fused_experts.

    Positional order as vLLM's fused_moe up to custom_routing_function; the
    quantization flags that follow it in vLLM are accepted (positionally or
    by name) only when they ask for no quantization."""
    for value in quant_args:
        if value is not None and value is not False:
            _unsupported("quantization arguments")
    _check_common(activation, False, quant_config, quant_kwargs)
    if custom_routing_function is None and len(getattr(gating_output, "shape", ())) == 2 and \
            len(getattr(w1, "shape", ())) == 3:
        # One logit per expert: w1's, or the global ones of expert_map. Otherwise routing
        # silently never picks the experts past the logits (or picks ones w1 lacks).
        n, of = (expert_map.shape[0], "expert_map") if expert_map is not None else \
            (w1.shape[0], "w1")
        if gating_output.shape[1] != n:
            raise _C.DmoeValueError(f"dmoe: gating_output has {gating_output.shape[1]} experts "
                                    f"but {of} has {n}")
    if use_grouped_topk:
        if num_expert_group is None or topk_group is None:
            raise _C.DmoeValueError("dmoe: use_grouped_topk needs num_expert_group and topk_group")
        topk_weights, topk_ids = grouped_topk(
            hidden_states, gating_output, topk, renormalize, num_expert_group, topk_group,
            scoring_func, routed_scaling_factor, e_score_correction_bias, backend=backend,
            n_threads=n_threads, stream=stream)
    elif custom_routing_function is not None:
        topk_weights, topk_ids = custom_routing_function(hidden_states, gating_output, topk,
                                                         renormalize)
    elif scoring_func != "softmax" or e_score_correction_bias is not None or \
            routed_scaling_factor != 1.0:
        _num_tokens(hidden_states, gating_output)
        topk_weights, topk_ids = _core.route_logits(
            gating_output, topk, renormalize=renormalize, scoring_func=scoring_func,
            routed_scaling_factor=routed_scaling_factor, correction_bias=e_score_correction_bias,
            backend=backend, n_threads=n_threads, stream=stream)
    else:
        topk_weights, topk_ids, _ = fused_topk(hidden_states, gating_output, topk, renormalize,
                                               backend=backend, n_threads=n_threads,
                                               stream=stream)
    return fused_experts(hidden_states, w1, w2, topk_weights, topk_ids, inplace=inplace,
                         global_num_experts=global_num_experts, expert_map=expert_map,
                         backend=backend, n_threads=n_threads, stream=stream)
