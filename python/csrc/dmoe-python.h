/*
 * dmoe-python.h: shared declarations of the C extension dmoe._C.
 *
 * The extension has two parts:
 *   dlpack-import.c  turns any object with __dlpack__ into a checked view
 *                    (py_tensor): dtype, shape, C-contiguity, device;
 *   module.c         caches dmoe contexts and layers, runs route / experts /
 *                    forward with the GIL released, maps dmoe_status to
 *                    Python exceptions.
 * It uses only the public C API (include/dmoe.h), so it links equally
 * against libdmoe built from source or a prebuilt (CUDA) libdmoe.
 */
#ifndef DMOE_PYTHON_H
#define DMOE_PYTHON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>

#include "dmoe.h"

#define DMOE_PY_MAX_DIMS 4

/* A tensor borrowed from a DLPack producer for the duration of one call. */
typedef struct py_tensor {
    void *managed;        /* DLManagedTensor or DLManagedTensorVersioned; NULL = empty slot */
    int versioned;        /* which of the two managed is */
    void *data;           /* first element (data + byte_offset) */
    dmoe_dtype dtype;
    int32_t n_dims;
    int64_t shape[DMOE_PY_MAX_DIMS];
    int32_t device;       /* DMOE_DEVICE_HOST or a CUDA ordinal */
    int read_only;
} py_tensor;

/* Exception classes, created at module init (module.c). */
extern PyObject *dmoe_py_Error;        /* base of all: Exception */
extern PyObject *dmoe_py_TypeError;    /* + TypeError: dtypes, non-DLPack objects */
extern PyObject *dmoe_py_ValueError;   /* + ValueError: shapes, devices, arguments */
extern PyObject *dmoe_py_MemoryError;  /* + MemoryError */
extern PyObject *dmoe_py_Unsupported;  /* + NotImplementedError: backend or feature missing */
extern PyObject *dmoe_py_RuntimeError; /* + RuntimeError: CUDA, threads, internal */

/* Raises the exception class that matches status, with a printf-style
 * message; the exception carries .status (int) and .status_name. Returns -1. */
int dmoe_py_raise(dmoe_status status, const char *fmt, ...);

/* Imports obj through DLPack into *out. name is used in messages ("w1").
 * stream: the consumer stream handed to __dlpack__ for CUDA producers
 * (a cudaStream_t as integer, 0 = the legacy default stream).
 * writable: the caller will write into it (rejects read-only exports).
 * Returns 0, or -1 with an exception set and *out left empty. */
int dmoe_py_import(PyObject *obj, const char *name, uintptr_t stream, int writable,
                   py_tensor *out);
/* Gives the memory back to its producer (calls the DLPack deleter). Empty
 * slots are a no-op. Needs the GIL. */
void dmoe_py_release(py_tensor *t);

/* "float32", "bfloat16", "float16", "int32" */
const char *dmoe_py_dtype_name(dmoe_dtype dtype);

#endif /* DMOE_PYTHON_H */
