"""dmoe: Mixture-of-Experts layers on CPUs and NVIDIA Hopper GPUs.

Arrays of any DLPack kind in (numpy, torch, cupy, jax on the CPU), the same
kind out, no copies on the way. Three levels:

  dmoe.vllm.fused_moe / fused_topk / grouped_topk / fused_experts
      vLLM's functions, names, argument order and weight layout
      (also importable from dmoe directly);
  dmoe.MoE, dmoe.MoE.from_hf(block)
      a layer object from arrays or a Hugging Face MoE block;
  dmoe.forward / route / route_logits / experts
      dmoe's own calls, one to one with its C API.

torch tensors run through ops registered with torch.library (torch.ops.dmoe.*)
so they work under torch.compile and CUDA-graph capture; torch itself is an
optional dependency, imported only when torch tensors are passed.
Errors are dmoe.Error subclasses that are also the matching built-in
(DmoeTypeError is a TypeError, DmoeValueError a ValueError, UnsupportedError
a NotImplementedError), carrying dmoe's message and status code.
"""
import sys as _sys

from ._C import (DmoeMemoryError, DmoeRuntimeError, DmoeTypeError, DmoeValueError, Error,
                 UnsupportedError)
from ._core import (backend_available, cache_info, clear_cache, experts, forward,
                    get_default_backend, route, route_logits, set_default_backend,
                    set_num_threads, version)
from .layer import MoE
from .vllm import fused_experts, fused_moe, fused_topk, grouped_topk

__version__ = "0.1.0"

__all__ = [
    "Error", "DmoeTypeError", "DmoeValueError", "DmoeMemoryError", "UnsupportedError",
    "DmoeRuntimeError", "MoE", "fused_moe", "fused_topk", "grouped_topk", "fused_experts",
    "forward", "route", "route_logits", "experts", "backend_available", "set_default_backend",
    "get_default_backend", "set_num_threads", "version", "cache_info", "clear_cache",
]

# With torch already imported, register the torch.library ops now, so that the
# first call may come from inside torch.compile. Otherwise they register on the
# first call with a torch tensor.
if "torch" in _sys.modules:
    from . import _torch  # noqa: F401
