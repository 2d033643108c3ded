"""dmoe's functions as PyTorch custom ops (torch.library), imported on first use.

Ops, in the namespace torch.ops.dmoe:
  route(x, router, top_k, ...)           -> (topk_weights f32, topk_ids i32)
  route_logits(gating_output, top_k, ...) -> (topk_weights f32, topk_ids i32)
  experts(x, w13, w2, topk_weights, topk_ids, ...) -> y
  forward(x, router, w13, w2, top_k, ...) -> y
Each has a fake (meta) implementation giving output shapes and dtypes, so
torch.compile traces them without running them, and none mutates its inputs.
The real implementations allocate outputs with torch.empty (inside a CUDA
graph capture that is the graph's pool) and run on the current stream unless
stream= names another, with no host synchronisation, so they can be
captured: a layer used during a capture is pinned in dmoe's cache (the graph
holds its workspace), and a shape first seen inside a capture fails with a
hint to warm up first (creating a layer allocates device memory).
Nothing here is built against libtorch: the tensors reach the C
extension through DLPack.

backend (str or None), n_threads (int or None) and stream (int or None) are
op arguments so that a compiled graph keeps the caller's choices; None
resolves at run time (stream: the current stream at that moment).
"""
from typing import Optional, Tuple

import torch

from . import _core

Tensor = torch.Tensor


def _d(t):
    """Detached view: DLPack refuses tensors that require grad."""
    return None if t is None else t.detach()


def _stream(stream, x):
    if stream is not None or x.device.type != "cuda":
        return stream
    return torch.cuda.current_stream(x.device).cuda_stream


def _capturing(x):
    return x.device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def _run(fn, x, *args, **kwargs):
    """fn(*args) with pin= set inside CUDA graph captures, and a hint when a
    capture meets a shape dmoe has not seen yet."""
    capturing = _capturing(x)
    try:
        return fn(*args, **kwargs, pin=capturing)
    except _core._C.Error as e:
        if not capturing:
            raise
        hint = type(e)(f"{e} (inside a CUDA graph capture dmoe cannot create a layer: run "
                       f"the same call once before capturing)")
        for attr in ("status", "status_name"):
            if hasattr(e, attr):
                setattr(hint, attr, getattr(e, attr))
        raise hint from e


@torch.library.custom_op("dmoe::route", mutates_args=())
def _route(x: Tensor, router: Tensor, top_k: int, renormalize: bool, scoring: int,
           n_group: int, topk_group: int, routed_scaling_factor: float,
           correction_bias: Optional[Tensor], backend: Optional[str], n_threads: Optional[int],
           stream: Optional[int]) -> Tuple[Tensor, Tensor]:
    return _run(_core.route_impl, x, _d(x), _d(router), top_k, renormalize, scoring, n_group,
                topk_group, routed_scaling_factor, _d(correction_bias), backend, n_threads,
                _stream(stream, x))


@_route.register_fake
def _(x, router, top_k, renormalize, scoring, n_group, topk_group, routed_scaling_factor,
      correction_bias, backend, n_threads, stream):
    T = x.shape[0]
    return (x.new_empty((T, top_k), dtype=torch.float32),
            x.new_empty((T, top_k), dtype=torch.int32))


@torch.library.custom_op("dmoe::route_logits", mutates_args=())
def _route_logits(gating_output: Tensor, top_k: int, renormalize: bool, scoring: int,
                  n_group: int, topk_group: int, routed_scaling_factor: float,
                  correction_bias: Optional[Tensor], backend: Optional[str],
                  n_threads: Optional[int], stream: Optional[int]) -> Tuple[Tensor, Tensor]:
    return _run(_core.route_logits_impl, gating_output, _d(gating_output), top_k, renormalize,
                scoring, n_group, topk_group, routed_scaling_factor, _d(correction_bias),
                backend, n_threads, _stream(stream, gating_output))


@_route_logits.register_fake
def _(gating_output, top_k, renormalize, scoring, n_group, topk_group, routed_scaling_factor,
      correction_bias, backend, n_threads, stream):
    T = gating_output.shape[0]
    return (gating_output.new_empty((T, top_k), dtype=torch.float32),
            gating_output.new_empty((T, top_k), dtype=torch.int32))


@torch.library.custom_op("dmoe::experts", mutates_args=())
def _experts(x: Tensor, w13: Tensor, w2: Tensor, topk_weights: Tensor, topk_ids: Tensor,
             shared_w13: Optional[Tensor], shared_w2: Optional[Tensor],
             shared_gate: Optional[Tensor], backend: Optional[str], n_threads: Optional[int],
             stream: Optional[int]) -> Tensor:
    return _run(_core.experts_impl, x, _d(x), _d(w13), _d(w2), _d(topk_weights), _d(topk_ids),
                _d(shared_w13), _d(shared_w2), _d(shared_gate), backend, n_threads,
                _stream(stream, x))


@_experts.register_fake
def _(x, w13, w2, topk_weights, topk_ids, shared_w13, shared_w2, shared_gate, backend,
      n_threads, stream):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("dmoe::forward", mutates_args=())
def _forward(x: Tensor, router: Tensor, w13: Tensor, w2: Tensor, top_k: int,
             renormalize: bool, scoring: int, n_group: int, topk_group: int,
             routed_scaling_factor: float, correction_bias: Optional[Tensor],
             shared_w13: Optional[Tensor], shared_w2: Optional[Tensor],
             shared_gate: Optional[Tensor], backend: Optional[str], n_threads: Optional[int],
             stream: Optional[int]) -> Tensor:
    return _run(_core.forward_impl, x, _d(x), _d(router), _d(w13), _d(w2), top_k, renormalize,
                scoring, n_group, topk_group, routed_scaling_factor, _d(correction_bias),
                _d(shared_w13), _d(shared_w2), _d(shared_gate), backend, n_threads,
                _stream(stream, x))


@_forward.register_fake
def _(x, router, w13, w2, top_k, renormalize, scoring, n_group, topk_group,
      routed_scaling_factor, correction_bias, shared_w13, shared_w2, shared_gate, backend,
      n_threads, stream):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _stream_arg(stream):
    """torch.cuda.Stream -> int; ints and None pass."""
    if stream is None or isinstance(stream, int):
        return stream
    return int(stream.cuda_stream)


# Entry points used by dmoe._core for torch tensors (positional, as there). Integer
# arguments go through _core._int_arg: 2.7 is an error, not 2.
def _ints(top_k, n_group, topk_group):
    return (_core._int_arg(top_k, "top_k"), _core._int_arg(n_group or 0, "num_expert_group"),
            _core._int_arg(topk_group or 0, "topk_group"))


def route(x, router, top_k, renormalize, scoring, n_group, topk_group, routed_scaling_factor,
          correction_bias, backend, n_threads, stream):
    k, g, tg = _ints(top_k, n_group, topk_group)
    return torch.ops.dmoe.route(x, router, k, bool(renormalize), int(scoring), g, tg,
                                float(routed_scaling_factor), correction_bias, backend,
                                n_threads, _stream_arg(stream))


def route_logits(gating_output, top_k, renormalize, scoring, n_group, topk_group,
                 routed_scaling_factor, correction_bias, backend, n_threads, stream):
    k, g, tg = _ints(top_k, n_group, topk_group)
    return torch.ops.dmoe.route_logits(gating_output, k, bool(renormalize), int(scoring), g, tg,
                                       float(routed_scaling_factor), correction_bias, backend,
                                       n_threads, _stream_arg(stream))


def experts(x, w13, w2, topk_weights, topk_ids, shared_w13, shared_w2, shared_gate, backend,
            n_threads, stream):
    return torch.ops.dmoe.experts(x, w13, w2, topk_weights, topk_ids, shared_w13, shared_w2,
                                  shared_gate, backend, n_threads, _stream_arg(stream))


def forward(x, router, w13, w2, top_k, renormalize, scoring, n_group, topk_group,
            routed_scaling_factor, correction_bias, shared_w13, shared_w2, shared_gate, backend,
            n_threads, stream):
    k, g, tg = _ints(top_k, n_group, topk_group)
    return torch.ops.dmoe.forward(x, router, w13, w2, k, bool(renormalize), int(scoring), g, tg,
                                  float(routed_scaling_factor), correction_bias, shared_w13,
                                  shared_w2, shared_gate, backend, n_threads,
                                  _stream_arg(stream))
