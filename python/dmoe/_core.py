"""dmoe's array-level functions: route, experts, forward, route_logits.

Each public function takes arrays of any DLPack kind and returns arrays of the
same kind. torch tensors go through the ops registered with torch.library
(dmoe/_torch.py), so they work under torch.compile and CUDA-graph capture;
every other kind calls the *_impl functions here directly. The *_impl
functions allocate outputs with the caller's library, then hand everything to
the C extension (dmoe._C.run), which checks dtypes, shapes, strides and
devices, caches a dmoe layer for the shapes, and runs with the GIL released.

CUDA: a cached layer (and its workspace) is shared by every stream, so calls
on different streams must not overlap on the device; inside a CUDA graph
capture no layer can be created (cudaMalloc), so run each shape once before
capturing (torch.compile's cudagraphs and vLLM warm up that way).

Backends: CUDA arrays run on 'cuda'; host arrays on the default host backend,
'cpu-ref' until the fast 'cpu' backend lands (DMOE_BACKEND or
set_default_backend() choose another). Every function also takes backend=,
n_threads= (host backends; 0 = all cores) and stream= (a cudaStream_t as int,
a torch.cuda.Stream or a cupy Stream; default: the caller's current stream).
"""
import operator
import os
import sys

from . import _C
from ._arrays import is_cuda, kind_of, stream_value

# The fast CPU backend; "cpu-ref" (float64, one thread) is the oracle.
_HOST_BACKEND_BUILTIN = "cpu"

_settings = {
    "backend": os.environ.get("DMOE_BACKEND") or None,
    "n_threads": int(os.environ.get("DMOE_NUM_THREADS", "0") or 0),
}

SCORING = {"softmax": 0, "sigmoid": 1}


def set_default_backend(name):
    """Sets the backend for host (CPU) arrays: 'cpu-ref' or 'cpu'; None restores the default."""
    if name is not None and not _C.backend_available(name):
        raise _C.UnsupportedError(f"dmoe: backend '{name}' is not available in this build or "
                                  "on this machine")
    _settings["backend"] = name


def get_default_backend():
    """The backend host arrays run on when a call names none."""
    return _settings["backend"] or _HOST_BACKEND_BUILTIN


def set_num_threads(n):
    """Worker threads of host backends; 0 = all online cores."""
    if int(n) < 0:
        raise _C.DmoeValueError("dmoe: n_threads must be >= 0")
    _settings["n_threads"] = int(n)


def backend_available(name):
    """True when the backend ('cpu-ref', 'cpu', 'cuda') is built in and usable here."""
    return _C.backend_available(name)


def version():
    """libdmoe's version string, e.g. '0.1.0 (cuda: no)'."""
    return _C.version()


def cache_info():
    """Cached contexts and layers, layers created, and cache hits."""
    return _C.cache_info()


def clear_cache():
    """Frees the cached layers and contexts that no call is using."""
    _C.clear_cache()
    _identity_cache.clear()


def _backend(backend, x):
    if backend:
        return backend
    return "cuda" if is_cuda(x) else get_default_backend()


def _threads(n_threads):
    return _settings["n_threads"] if n_threads is None else int(n_threads)


def _scoring(scoring_func):
    try:
        return SCORING[scoring_func]
    except KeyError:
        raise _C.DmoeValueError(f"dmoe: scoring_func must be 'softmax' or 'sigmoid', got "
                                f"{scoring_func!r}") from None


def _as_dtype(kind, a, dtype, name):
    """a in dtype: integer ids become int32, float routing weights float32 (copies)."""
    if a is None:
        return None
    have = kind.dtype_name(a)
    if have == dtype:
        return a
    convertible = {"int32": ("int64", "int16", "int8", "uint8", "uint16", "uint32"),
                   "float32": ("float64", "float16", "bfloat16")}[dtype]
    if have in convertible:
        if have in ("int64", "uint32") and _host_values(a) and hasattr(a, "min") and \
                _numel(a) and (int(a.min()) < -2**31 or int(a.max()) >= 2**31):
            # The cast would wrap such ids (2**32 + 1 -> 1) into valid-looking ones.
            raise _C.DmoeValueError(f"dmoe: {name} holds values outside int32 ({int(a.min())} "
                                    f"to {int(a.max())}); expert ids must be in [0, E)")
        return kind.cast(a, dtype)
    raise _C.DmoeTypeError(f"dmoe: {name} must be {dtype} (got {have})")


def _host_values(a):
    """True when a's values can be read here: host memory (not CUDA: that would
    synchronise; not torch's meta device: there are none)."""
    dev_type = getattr(getattr(a, "device", None), "type", None)  # torch
    if isinstance(dev_type, str):
        return dev_type == "cpu"
    return not is_cuda(a)


def _numel(a):
    n = 1
    for s in a.shape:
        n *= int(s)
    return n


# ---- implementations (any DLPack kind; outputs of the caller's kind) ----

def _int_arg(v, name):
    """An integer argument: int or any integer type (operator.index); a float such as 2.7 is an
    error, not truncated, and so is a bool."""
    if isinstance(v, bool):
        raise _C.DmoeValueError(f"dmoe: {name} must be an integer, got {v!r}")
    try:
        return operator.index(v)
    except TypeError:
        raise _C.DmoeValueError(f"dmoe: {name} must be an integer, got {v!r}") from None


_NAMES_EXPERTS = {"x": "hidden_states", "w13": "w1", "w2": "w2", "y": "output"}
_NAMES_LOGITS = {"x": "gating_output", "router": "identity router",
                 "correction_bias": "e_score_correction_bias"}


def route_impl(x, router, top_k, renormalize=True, scoring=0, n_group=0, topk_group=0,
               routed_scaling_factor=1.0, correction_bias=None, backend=None, n_threads=None,
               stream=None, names=None, sanitize=False, pin=False):
    """(topk_weights (T, K) float32, topk_ids (T, K) int32) from x (T, H) and router (E, H).

    pin=True (set by the torch ops inside a CUDA graph capture) keeps the
    cached dmoe layer alive for good: the graph holds its workspace."""
    kind = kind_of(x)
    T = x.shape[0] if len(x.shape) else 0
    top_k = _int_arg(top_k, "top_k")
    E = router.shape[0] if len(getattr(router, "shape", ())) == 2 else None
    if top_k < 1 or (E is not None and top_k > E):  # before the (T, top_k) outputs exist
        raise _C.DmoeValueError(f"dmoe: top_k must be in [1, n_experts"
                                f"{'' if E is None else f'={E}'}], got {top_k}")
    weights = kind.empty((T, top_k), "float32", x)
    ids = kind.empty((T, top_k), "int32", x)
    # T == 0 too: the C extension checks every shape and dtype, then returns without work
    bias = _as_dtype(kind, correction_bias, "float32", "correction_bias")
    _C.run(_C.OP_ROUTE, x, topk_ids=ids, topk_weights=weights, router=router,
           correction_bias=bias, top_k=top_k, scoring=int(scoring),
           renormalize=bool(renormalize), n_group=_int_arg(n_group or 0, "num_expert_group"),
           topk_group=_int_arg(topk_group or 0, "topk_group"),
           routed_scaling_factor=float(routed_scaling_factor), backend=_backend(backend, x), n_threads=_threads(n_threads),
           stream=stream_value(stream, x, kind), names=names, sanitize=sanitize, pin=pin)
    return kind.finish(weights), kind.finish(ids)


# Identity routers per (library, device, dtype, E): see route_logits_impl.
_identity_cache = {}


def _identity(kind, logits):
    dt = kind.dtype_name(logits)
    E = logits.shape[1]
    dev = getattr(logits, "device", None)
    key = (kind.name, str(dev), dt, E)
    eye = _identity_cache.get(key)
    if eye is None:  # kept for good: a CUDA graph may hold it (few (device, dtype, E) exist)
        eye = kind.eye(E, dt, logits)
        _identity_cache[key] = eye
    return eye


def route_logits_impl(logits, top_k, renormalize=True, scoring=0, n_group=0, topk_group=0,
                      routed_scaling_factor=1.0, correction_bias=None, backend=None,
                      n_threads=None, stream=None, pin=False):
    """Routing from router logits (T, E), which vLLM's functions receive.

    dmoe's C API routes from x and a router weight. Given logits instead, this
    routes x = logits through the identity router (E, E), in the logits' own
    dtype: each logit comes out as logits[t, e] * 1 plus zeros, exact on every
    backend (cpu-ref sums in float64, the others in float32), so routing is
    that of the logits themselves. Non-finite logits would turn into NaN on
    the way (inf * 0); on the host the C extension first rewrites them to
    the values dmoe.h gives them (NaN -> -FLT_MAX, +-inf -> +-FLT_MAX).
    """
    kind = kind_of(logits)
    if len(logits.shape) != 2:
        raise _C.DmoeValueError(f"dmoe: gating_output must be 2-D (tokens, experts), has shape "
                                f"{tuple(logits.shape)}")
    E = logits.shape[1]
    if not 1 <= E <= _C.MAX_EXPERTS:  # before the (E, E) identity is made and kept
        raise _C.DmoeValueError(f"dmoe: gating_output has {E} experts; dmoe takes 1 to "
                                f"{_C.MAX_EXPERTS}")
    eye = _identity(kind, logits)
    return route_impl(logits, eye, top_k, renormalize, scoring, n_group, topk_group,
                      routed_scaling_factor, correction_bias, backend, n_threads, stream,
                      names=_NAMES_LOGITS, sanitize=True, pin=pin)


def experts_impl(x, w13, w2, topk_weights, topk_ids, shared_w13=None, shared_w2=None,
                 shared_gate=None, backend=None, n_threads=None, stream=None, names=None,
                 pin=False):
    """y (T, H) = sum_k topk_weights[t, k] * FFN_{topk_ids[t, k]}(x[t]) (+ shared experts)."""
    kind = kind_of(x)
    y = kind.empty(tuple(x.shape), kind.dtype_name(x), x)
    # T == 0 too: the C extension checks every shape and dtype, then returns without work
    ids = _as_dtype(kind, topk_ids, "int32", "topk_ids")
    wts = _as_dtype(kind, topk_weights, "float32", "topk_weights")
    _C.run(_C.OP_EXPERTS, x, y=y, topk_ids=ids, topk_weights=wts, w13=w13, w2=w2,
           shared_w13=shared_w13, shared_w2=shared_w2, shared_gate=shared_gate,
           backend=_backend(backend, x), n_threads=_threads(n_threads),
           stream=stream_value(stream, x, kind), names=names or _NAMES_EXPERTS, pin=pin)
    return kind.finish(y)


def forward_impl(x, router, w13, w2, top_k, renormalize=True, scoring=0, n_group=0,
                 topk_group=0, routed_scaling_factor=1.0, correction_bias=None, shared_w13=None,
                 shared_w2=None, shared_gate=None, backend=None, n_threads=None, stream=None,
                 pin=False):
    """y (T, H) = MoE(x): routing and experts in one call."""
    kind = kind_of(x)
    y = kind.empty(tuple(x.shape), kind.dtype_name(x), x)
    # T == 0 too: the C extension checks every shape and dtype, then returns without work
    bias = _as_dtype(kind, correction_bias, "float32", "correction_bias")
    _C.run(_C.OP_FORWARD, x, y=y, router=router, w13=w13, w2=w2, correction_bias=bias,
           shared_w13=shared_w13, shared_w2=shared_w2, shared_gate=shared_gate,
           top_k=_int_arg(top_k, "top_k"), scoring=int(scoring), renormalize=bool(renormalize),
           n_group=_int_arg(n_group or 0, "num_expert_group"),
           topk_group=_int_arg(topk_group or 0, "topk_group"),
           routed_scaling_factor=float(routed_scaling_factor), backend=_backend(backend, x),
           n_threads=_threads(n_threads), stream=stream_value(stream, x, kind), pin=pin)
    return kind.finish(y)


# ---- public functions: torch tensors go through torch.library ops ----

def _is_torch(x):
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _torch_ops():
    from . import _torch  # registers the ops on first import

    return _torch


def route(x, router, top_k, *, renormalize=True, scoring_func="softmax", num_expert_group=0,
          topk_group=0, routed_scaling_factor=1.0, correction_bias=None, backend=None,
          n_threads=None, stream=None):
    """Routes x (T, H) with router (E, H): returns (topk_weights (T, K) float32,
    topk_ids (T, K) int32), following the routing rules of dmoe.h."""
    scoring = _scoring(scoring_func)
    if _is_torch(x):
        return _torch_ops().route(x, router, top_k, renormalize, scoring, num_expert_group,
                                  topk_group, routed_scaling_factor, correction_bias, backend,
                                  n_threads, stream)
    return route_impl(x, router, top_k, renormalize, scoring, num_expert_group, topk_group,
                      routed_scaling_factor, correction_bias, backend, n_threads, stream)


def route_logits(gating_output, top_k, *, renormalize=True, scoring_func="softmax",
                 num_expert_group=0, topk_group=0, routed_scaling_factor=1.0,
                 correction_bias=None, backend=None, n_threads=None, stream=None):
    """Routes from router logits (T, E): returns (topk_weights, topk_ids)."""
    scoring = _scoring(scoring_func)
    if _is_torch(gating_output):
        return _torch_ops().route_logits(gating_output, top_k, renormalize, scoring,
                                         num_expert_group, topk_group, routed_scaling_factor,
                                         correction_bias, backend, n_threads, stream)
    return route_logits_impl(gating_output, top_k, renormalize, scoring, num_expert_group,
                             topk_group, routed_scaling_factor, correction_bias, backend,
                             n_threads, stream)


def experts(x, w13, w2, topk_weights, topk_ids, *, shared_w13=None, shared_w2=None,
            shared_gate=None, backend=None, n_threads=None, stream=None):
    """The expert half with caller-given routing: y (T, H) in x's dtype.

    w13 (E, 2F, H): gate rows then up rows; w2 (E, H, F); topk_ids (T, K)
    integer (int32 used as is, other integers converted); topk_weights (T, K)
    float (float32 used as is). Optional shared experts: shared_w13 (S, 2Fs, H),
    shared_w2 (S, H, Fs), shared_gate (1, H) (Qwen2-MoE's sigmoid gate)."""
    if _is_torch(x):
        return _torch_ops().experts(x, w13, w2, topk_weights, topk_ids, shared_w13, shared_w2,
                                    shared_gate, backend, n_threads, stream)
    return experts_impl(x, w13, w2, topk_weights, topk_ids, shared_w13, shared_w2, shared_gate,
                        backend, n_threads, stream)


def forward(x, router, w13, w2, top_k, *, renormalize=True, scoring_func="softmax",
            num_expert_group=0, topk_group=0, routed_scaling_factor=1.0, correction_bias=None,
            shared_w13=None, shared_w2=None, shared_gate=None, backend=None, n_threads=None,
            stream=None):
    """One MoE layer: y (T, H) = MoE(x (T, H)) with routing and experts in one call."""
    scoring = _scoring(scoring_func)
    if _is_torch(x):
        return _torch_ops().forward(x, router, w13, w2, top_k, renormalize, scoring,
                                    num_expert_group, topk_group, routed_scaling_factor,
                                    correction_bias, shared_w13, shared_w2, shared_gate,
                                    backend, n_threads, stream)
    return forward_impl(x, router, w13, w2, top_k, renormalize, scoring, num_expert_group,
                        topk_group, routed_scaling_factor, correction_bias, shared_w13, shared_w2,
                        shared_gate, backend, n_threads, stream)
