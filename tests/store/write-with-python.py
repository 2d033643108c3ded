"""Writes a .safetensors file with the reference Python package (safetensors,
from PyPI), for test-safetensors-python: our reader is checked against a
writer we did not write. Exits 77 (ctest: skipped) when the package is missing.

numpy has no bfloat16, so the raw serializer is used (the one safetensors'
own torch front end calls), with the bf16 bytes made by hand: value i at flat
index i, exact in bf16 for i < 256."""
import struct
import sys

try:
    from safetensors import serialize_file
except ImportError as e:
    print(f"SKIPPED: python package safetensors not installed ({e})")
    sys.exit(77)


def bf16_bytes(values):
    out = bytearray()
    for v in values:
        bits = struct.unpack("<I", struct.pack("<f", float(v)))[0]
        out += struct.pack("<H", bits >> 16)
    return bytes(out)


tensors = {
    "w.bf16": {"dtype": "bfloat16", "shape": [2, 3, 5], "data": bf16_bytes(range(30))},
    "x.f32": {"dtype": "float32", "shape": [7], "data": struct.pack("<7f", *[i + 0.5 for i in range(7)])},
    "ids.i64": {"dtype": "int64", "shape": [4], "data": struct.pack("<4q", 0, -1, -2, -3)},
}
try:
    from safetensors._safetensors_rust import TensorSpec  # safetensors >= 0.8 takes specs over raw memory
except ImportError:
    TensorSpec = None
if TensorSpec is not None:
    import ctypes

    keep = {}
    specs = {}
    for name, t in tensors.items():
        buf = ctypes.create_string_buffer(t["data"], len(t["data"]))
        keep[name] = buf
        specs[name] = TensorSpec(dtype=t["dtype"], shape=t["shape"], data_ptr=ctypes.addressof(buf), data_len=len(t["data"]))
    serialize_file(specs, sys.argv[1], metadata={"writer": "python-safetensors"})
else:
    serialize_file(tensors, sys.argv[1], metadata={"writer": "python-safetensors"})
print(f"wrote {sys.argv[1]}")
