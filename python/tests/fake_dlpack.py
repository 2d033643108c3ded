"""A DLPack producer written with ctypes, to test what real libraries cannot show
on a CPU-only machine: CUDA or unknown devices, legacy and future capsules,
explicit strides, read-only exports, and that the deleter runs exactly once.

The memory is a numpy array's (for CUDA "devices" too: dmoe must reject those
before it touches the pointer)."""
import ctypes

import numpy as np

c = ctypes


class DLDevice(c.Structure):
    _fields_ = [("device_type", c.c_int), ("device_id", c.c_int32)]


class DLDataType(c.Structure):
    _fields_ = [("code", c.c_uint8), ("bits", c.c_uint8), ("lanes", c.c_uint16)]


class DLTensor(c.Structure):
    _fields_ = [("data", c.c_void_p), ("device", DLDevice), ("ndim", c.c_int32),
                ("dtype", DLDataType), ("shape", c.POINTER(c.c_int64)),
                ("strides", c.POINTER(c.c_int64)), ("byte_offset", c.c_uint64)]


DELETER = c.CFUNCTYPE(None, c.c_void_p)


class DLManagedTensorVersioned(c.Structure):
    _fields_ = [("major", c.c_uint32), ("minor", c.c_uint32), ("manager_ctx", c.c_void_p),
                ("deleter", DELETER), ("flags", c.c_uint64), ("dl_tensor", DLTensor)]


class DLManagedTensor(c.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", c.c_void_p), ("deleter", DELETER)]


_api = c.pythonapi
_api.PyCapsule_New.restype = c.py_object
_api.PyCapsule_New.argtypes = [c.c_void_p, c.c_char_p, c.c_void_p]
_api.PyCapsule_IsValid.restype = c.c_int
_api.PyCapsule_IsValid.argtypes = [c.py_object, c.c_char_p]
_api.PyCapsule_GetPointer.restype = c.c_void_p
_api.PyCapsule_GetPointer.argtypes = [c.py_object, c.c_char_p]

_CAPSULE_DESTRUCTOR = c.CFUNCTYPE(None, c.c_void_p)

_DTYPES = {"float32": (2, 32), "float16": (2, 16), "bfloat16": (4, 16), "int32": (0, 32),
           "int64": (0, 64), "float64": (2, 64)}

_live = {}  # capsule address -> FakeTensor, for the capsule destructor


# PyCapsule_IsValid on a raw pointer: the capsule is being destroyed, so no
# Python reference to it may be made here.
_is_valid_raw = c.PYFUNCTYPE(c.c_int, c.c_void_p, c.c_char_p)(("PyCapsule_IsValid", _api))


@_CAPSULE_DESTRUCTOR
def _capsule_destructor(capsule_addr):
    # An unconsumed capsule ("dltensor..." still): the producer frees the tensor.
    entry = _live.pop(capsule_addr, None)
    if entry is not None and _is_valid_raw(capsule_addr, entry[1]):
        entry[0]._on_delete()


class FakeTensor:
    """Wraps a numpy array; exports it as device (device_type, device_id)."""

    device = "cpu"  # for numpy's array-API functions, which allocate outputs like it

    def __array_namespace__(self, api_version=None):
        return np

    def __init__(self, array, device_type=1, device_id=0, versioned=True, accept_max_version=True,
                 strides=None, read_only=False, dtype=None, major=1):
        self.array = array
        self.device_type = device_type
        self.device_id = device_id
        self.versioned = versioned
        self.accept_max_version = accept_max_version
        self.strides = strides
        self.read_only = read_only
        self.dtype = dtype or array.dtype.name
        self.major = major
        self.exported = 0
        self.deleted = 0
        self.streams = []
        self._keep = []

    @property
    def shape(self):
        return self.array.shape

    def __dlpack_device__(self):
        return (self.device_type, self.device_id)

    def _on_delete(self):
        self.deleted += 1

    def __dlpack__(self, stream=None, max_version=None, **kwargs):
        if max_version is not None and not self.accept_max_version:
            raise TypeError("__dlpack__() got an unexpected keyword argument 'max_version'")
        self.streams.append(stream)
        use_versioned = self.versioned and max_version is not None
        a = self.array
        shape = (c.c_int64 * max(a.ndim, 1))(*a.shape)
        strides = None
        if self.strides is not None:
            strides = (c.c_int64 * max(a.ndim, 1))(*self.strides)
        code, bits = _DTYPES[self.dtype]
        dl = DLTensor(a.ctypes.data, DLDevice(self.device_type, self.device_id), a.ndim,
                      DLDataType(code, bits, 1), shape,
                      c.cast(strides, c.POINTER(c.c_int64)) if strides is not None else None, 0)

        @DELETER
        def deleter(_ptr):
            self._on_delete()

        if use_versioned:
            m = DLManagedTensorVersioned(self.major, 0, None, deleter,
                                         1 if self.read_only else 0, dl)
            name = b"dltensor_versioned"
        else:
            m = DLManagedTensor(dl, None, deleter)
            name = b"dltensor"
        self._keep.append((shape, strides, m, deleter))
        self.exported += 1
        cap = _api.PyCapsule_New(c.addressof(m), name, c.cast(_capsule_destructor, c.c_void_p))
        _live[id(cap)] = (self, name)
        return cap


class LegacyFakeTensor(FakeTensor):
    """A producer older than DLPack 1.0 (dmoe remembers that per type)."""


def fake(array, **kw):
    cls = LegacyFakeTensor if kw.get("accept_max_version") is False else FakeTensor
    return cls(np.ascontiguousarray(array), **kw)
