"""Array kinds: allocating outputs with the caller's library, and finding its stream.

dmoe reads every array through DLPack, but outputs must be of the caller's kind
("numpy in, numpy out; torch in, torch out"), so they are allocated here with
the caller's own library and handed to the C extension to fill.

Kinds, found from the type of the first array argument:
  numpy   numpy.ndarray (and subclasses): numpy.empty. numpy has no bfloat16.
  torch   torch.Tensor: torch.empty on the tensor's device; the default stream
          is torch's current stream on that device.
  jax     jax.Array: jax arrays are immutable, so outputs are numpy arrays
          wrapped with jax.dlpack.from_dlpack after the call (CPU only, float32 and
          float16 results, for now).
  cupy    cupy.ndarray: cupy.empty on the array's device; the default stream is
          cupy's current stream.
  array-api  anything else with __array_namespace__: xp.empty on x.device.
No library is imported here unless the caller passes its arrays.
"""
import sys

_DTYPES = ("float32", "bfloat16", "float16", "int32", "int64")


def _dtype_name(dtype):
    """'float32' for numpy.float32, torch.float32, 'float32', cupy dtypes, ..."""
    name = getattr(dtype, "name", None)  # numpy / cupy / jax dtypes
    if not isinstance(name, str):
        name = str(dtype)
    return name.rsplit(".", 1)[-1]  # 'torch.bfloat16' -> 'bfloat16'


class Kind:
    name = "?"

    def empty(self, shape, dtype, like):
        raise NotImplementedError

    def dtype_name(self, a):
        return _dtype_name(a.dtype)

    def cast(self, a, dtype):
        return a.astype(dtype)

    def finish(self, out):
        """Turns an output allocated by empty() into what the caller gets back."""
        return out

    def default_stream(self, like):
        return 0

    def eye(self, n, dtype, like):
        raise NotImplementedError

    def arange_topk_source(self, T, K, like):
        raise NotImplementedError


class NumpyKind(Kind):
    name = "numpy"

    def __init__(self):
        import numpy

        self.np = numpy

    def empty(self, shape, dtype, like):
        return self.np.empty(shape, dtype=dtype)

    def eye(self, n, dtype, like):
        return self.np.eye(n, dtype=dtype)

    def arange_topk_source(self, T, K, like):
        return self.np.ascontiguousarray(
            self.np.arange(T * K, dtype=self.np.int32).reshape(K, T).T)


class TorchKind(Kind):
    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch

    def _dtype(self, dtype):
        return getattr(self.torch, dtype) if isinstance(dtype, str) else dtype

    def empty(self, shape, dtype, like):
        return self.torch.empty(shape, dtype=self._dtype(dtype), device=like.device)

    def dtype_name(self, a):
        return str(a.dtype)[len("torch."):]

    def cast(self, a, dtype):
        return a.to(self._dtype(dtype))

    def default_stream(self, like):
        if like.device.type != "cuda":
            return 0
        return self.torch.cuda.current_stream(like.device).cuda_stream

    def eye(self, n, dtype, like):
        return self.torch.eye(n, dtype=self._dtype(dtype), device=like.device)

    def arange_topk_source(self, T, K, like):
        t = self.torch.arange(T * K, dtype=self.torch.int32, device=like.device)
        return t.view(K, T).t().contiguous()


class ArrayApiKind(Kind):
    """cupy and other array-API libraries."""

    name = "array-api"

    def __init__(self, xp):
        self.xp = xp

    def _dtype(self, dtype):
        return getattr(self.xp, dtype) if isinstance(dtype, str) else dtype

    def empty(self, shape, dtype, like):
        try:
            return self.xp.empty(shape, dtype=self._dtype(dtype), device=like.device)
        except TypeError:  # an older namespace without device=
            return self.xp.empty(shape, dtype=self._dtype(dtype))

    def cast(self, a, dtype):
        return self.xp.astype(a, self._dtype(dtype)) if hasattr(self.xp, "astype") else \
            a.astype(self._dtype(dtype))

    def default_stream(self, like):
        mod = type(like).__module__.split(".", 1)[0]
        if mod == "cupy":
            import cupy

            return cupy.cuda.get_current_stream().ptr
        return 0

    def eye(self, n, dtype, like):
        try:
            return self.xp.eye(n, dtype=self._dtype(dtype), device=like.device)
        except TypeError:
            return self.xp.eye(n, dtype=self._dtype(dtype))

    def arange_topk_source(self, T, K, like):
        xp = self.xp
        a = xp.reshape(xp.arange(T * K, dtype=xp.int32), (K, T))
        return xp.asarray(xp.permute_dims(a, (1, 0)), copy=True)


class CupyKind(Kind):
    """cupy arrays: cupy.empty on the array's device; cupy's current stream."""

    name = "cupy"

    def __init__(self):
        import cupy

        self.cp = cupy

    def empty(self, shape, dtype, like):
        with like.device:
            return self.cp.empty(shape, dtype=dtype)

    def default_stream(self, like):
        return self.cp.cuda.get_current_stream().ptr

    def eye(self, n, dtype, like):
        with like.device:
            return self.cp.eye(n, dtype=dtype)

    def arange_topk_source(self, T, K, like):
        with like.device:
            a = self.cp.arange(T * K, dtype=self.cp.int32).reshape(K, T)
            return self.cp.ascontiguousarray(a.T)


class JaxKind(Kind):
    """jax arrays are immutable: compute into numpy, return jax (CPU only)."""

    name = "jax"

    def __init__(self):
        import jax
        import jax.dlpack
        import numpy

        self.jax = jax
        self.np = numpy

    def _check_cpu(self, like):
        devices = getattr(like, "devices", None)
        if devices is not None and any(d.platform != "cpu" for d in devices()):
            from ._C import UnsupportedError

            raise UnsupportedError("dmoe: jax arrays on accelerators are not supported yet; "
                                   "pass torch or cupy arrays, or jax CPU arrays")

    def empty(self, shape, dtype, like):
        self._check_cpu(like)
        if dtype == "bfloat16":  # numpy (ml_dtypes) bfloat16 has no DLPack export
            from ._C import UnsupportedError

            raise UnsupportedError("dmoe: bfloat16 results for jax arrays are not supported "
                                   "yet; use float32 or float16 activations")
        return self.np.empty(shape, dtype=dtype)

    def cast(self, a, dtype):
        return a.astype(dtype)

    def finish(self, out):
        return self.jax.dlpack.from_dlpack(out) if hasattr(out, "__dlpack__") else out

    def eye(self, n, dtype, like):
        return self.np.eye(n, dtype=dtype)

    def arange_topk_source(self, T, K, like):
        return self.jax.numpy.arange(T * K, dtype="int32").reshape(K, T).T


_kinds = {}


def kind_of(a):
    """The Kind of array a (cached per type)."""
    t = type(a)
    k = _kinds.get(t)
    if k is not None:
        return k
    mod = t.__module__.split(".", 1)[0]
    if "numpy" in sys.modules and isinstance(a, sys.modules["numpy"].ndarray):
        k = NumpyKind()
    elif "torch" in sys.modules and isinstance(a, sys.modules["torch"].Tensor):
        k = TorchKind()
    elif mod == "cupy":
        k = CupyKind()
    elif mod in ("jax", "jaxlib"):
        k = JaxKind()
    elif hasattr(a, "__array_namespace__"):
        k = ArrayApiKind(a.__array_namespace__())
    elif hasattr(a, "__dlpack__"):
        raise TypeError(f"dmoe: cannot allocate outputs like {t.__module__}.{t.__qualname__}: "
                        "it supports DLPack but no array-API namespace")
    else:
        from ._C import DmoeTypeError

        raise DmoeTypeError(f"dmoe: expected an array supporting DLPack (numpy, torch, cupy, "
                            f"jax), got {t.__module__}.{t.__qualname__}")
    _kinds[t] = k
    return k


def dlpack_device(a):
    """(device_type, device_id) of a DLPack array; (1, 0) is the CPU."""
    try:
        return tuple(a.__dlpack_device__())
    except AttributeError:
        from ._C import DmoeTypeError

        raise DmoeTypeError(f"dmoe: expected an array supporting DLPack, got "
                            f"{type(a).__module__}.{type(a).__qualname__}") from None


def is_cuda(a):
    return dlpack_device(a)[0] in (2, 13)  # kDLCUDA, kDLCUDAManaged


def stream_value(stream, like, kind):
    """The cudaStream_t (as int) to run on: given, or the caller's current one."""
    if stream is None:
        return kind.default_stream(like) if is_cuda(like) else 0
    if isinstance(stream, int):
        return stream
    for attr in ("cuda_stream", "ptr"):  # torch.cuda.Stream, cupy Stream
        v = getattr(stream, attr, None)
        if isinstance(v, int):
            return v
    raise TypeError(f"dmoe: stream must be an int (cudaStream_t), a torch.cuda.Stream or a "
                    f"cupy Stream, got {type(stream).__qualname__}")
