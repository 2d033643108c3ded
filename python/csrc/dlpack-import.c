/*
 * dlpack-import.c: borrowing caller tensors through the DLPack protocol.
 *
 * For each argument the extension asks the object for its device
 * (__dlpack_device__), then for a capsule (__dlpack__), first with
 * max_version=(1, 0) for a DLManagedTensorVersioned and, for producers that
 * predate DLPack 1.0 (numpy < 2, older torch), without it. CUDA producers are
 * given the consumer's stream, so they order their pending work before ours
 * (the protocol's rule; torch does nothing when it is its current stream).
 *
 * Every view is checked before it is used: dtype in {float32, bfloat16,
 * float16, int32} with one lane, at most 4 dims, C-contiguous (strides equal
 * to the compact row-major ones; dims of extent 1 may have any stride, as
 * torch gives them), a host or CUDA device. Only then is the capsule renamed
 * "used_..." (we own the tensor) and the deleter called in dmoe_py_release.
 * A rejected capsule is dropped unconsumed, so its producer frees it.
 */
#include "dmoe-python.h"

#include <stdio.h>
#include <string.h>

#include "dlpack.h"

/* Types whose __dlpack__ rejected max_version: asked the legacy way from then on. */
static PyObject *legacy_types; /* set */

const char *dmoe_py_dtype_name(dmoe_dtype dtype) {
    switch (dtype) {
    case DMOE_DTYPE_F32: return "float32";
    case DMOE_DTYPE_BF16: return "bfloat16";
    case DMOE_DTYPE_F16: return "float16";
    case DMOE_DTYPE_I32: return "int32";
    default: return "unknown";
    }
}

static void describe_dl_dtype(DLDataType t, char *buf, size_t len) {
    const char *kind = "type code ";
    switch (t.code) {
    case kDLInt: kind = "int"; break;
    case kDLUInt: kind = "uint"; break;
    case kDLFloat: kind = "float"; break;
    case kDLBfloat: kind = "bfloat"; break;
    case kDLComplex: kind = "complex"; break;
    case kDLBool: kind = "bool"; break;
    default: break;
    }
    if (t.code == kDLBool)
        snprintf(buf, len, "bool");
    else if (t.code > kDLBool)
        snprintf(buf, len, "DLPack type code %u with %u bits", (unsigned)t.code, (unsigned)t.bits);
    else
        snprintf(buf, len, "%s%u", kind, (unsigned)t.bits);
    if (t.lanes != 1) {
        size_t n = strlen(buf);
        snprintf(buf + n, len - n, "x%u", (unsigned)t.lanes);
    }
}

static int map_dtype(DLDataType t, dmoe_dtype *out) {
    if (t.lanes != 1) return -1;
    if (t.code == kDLFloat && t.bits == 32) *out = DMOE_DTYPE_F32;
    else if (t.code == kDLFloat && t.bits == 16) *out = DMOE_DTYPE_F16;
    else if (t.code == kDLBfloat && t.bits == 16) *out = DMOE_DTYPE_BF16;
    else if (t.code == kDLInt && t.bits == 32) *out = DMOE_DTYPE_I32;
    else return -1;
    return 0;
}

static void format_dims(const int64_t *v, int32_t n, char *buf, size_t len) {
    size_t used = 0;
    used += (size_t)snprintf(buf, len, "(");
    for (int32_t i = 0; i < n && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, i ? ", %lld" : "%lld", (long long)v[i]);
    if (n == 1 && used < len) used += (size_t)snprintf(buf + used, len - used, ",");
    if (used < len) snprintf(buf + used, len - used, ")");
}

/* Calls obj.__dlpack_device__() -> (type, id). Returns 0 or -1 with an exception. */
static int query_device(PyObject *obj, const char *name, int *dev_type, int *dev_id) {
    PyObject *res = PyObject_CallMethod(obj, "__dlpack_device__", NULL);
    if (!res) {
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            return dmoe_py_raise(DMOE_ERR_UNSUPPORTED_DTYPE,
                                 "%s must support DLPack (__dlpack__ and __dlpack_device__): a "
                                 "numpy array, torch tensor, cupy or jax array; got %s",
                                 name, Py_TYPE(obj)->tp_name);
        }
        return -1;
    }
    int ok = PyTuple_Check(res) && PyTuple_GET_SIZE(res) == 2;
    if (ok) {
        *dev_type = (int)PyLong_AsLong(PyTuple_GET_ITEM(res, 0));
        *dev_id = (int)PyLong_AsLong(PyTuple_GET_ITEM(res, 1));
        ok = !PyErr_Occurred();
    }
    Py_DECREF(res);
    if (!ok) {
        PyErr_Clear();
        return dmoe_py_raise(DMOE_ERR_INVALID_ARGUMENT,
                             "%s.__dlpack_device__() did not return (device_type, device_id)",
                             name);
    }
    return 0;
}

/* obj.__dlpack__(**kwargs) with max_version when the type accepts it. */
static PyObject *export_capsule(PyObject *obj, const char *name, int dev_type, uintptr_t stream) {
    PyObject *method = PyObject_GetAttrString(obj, "__dlpack__");
    if (!method) {
        PyErr_Clear();
        dmoe_py_raise(DMOE_ERR_UNSUPPORTED_DTYPE,
                      "%s must support DLPack (__dlpack__): a numpy array, torch tensor, cupy or "
                      "jax array; got %s", name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyObject *kwargs = PyDict_New();
    if (!kwargs) {
        Py_DECREF(method);
        return NULL;
    }
    if (dev_type == kDLCUDA || dev_type == kDLCUDAManaged || dev_type == kDLROCM) {
        /* The protocol reserves 0; 1 names the legacy default stream. */
        PyObject *s = PyLong_FromUnsignedLongLong(stream ? (unsigned long long)stream : 1ULL);
        if (!s || PyDict_SetItemString(kwargs, "stream", s) < 0) {
            Py_XDECREF(s);
            goto fail;
        }
        Py_DECREF(s);
    }
    PyObject *type = (PyObject *)Py_TYPE(obj);
    int legacy = PySet_Contains(legacy_types, type);
    if (legacy < 0) goto fail;
    PyObject *capsule = NULL;
    if (!legacy) {
        PyObject *ver = Py_BuildValue("(ii)", DMOE_DLPACK_MAJOR, DMOE_DLPACK_MINOR);
        if (!ver || PyDict_SetItemString(kwargs, "max_version", ver) < 0) {
            Py_XDECREF(ver);
            goto fail;
        }
        Py_DECREF(ver);
        PyObject *empty = PyTuple_New(0);
        if (!empty) goto fail;
        capsule = PyObject_Call(method, empty, kwargs);
        Py_DECREF(empty);
        if (capsule || !PyErr_ExceptionMatches(PyExc_TypeError)) goto done;
        /* An exporter older than DLPack 1.0: remember it and ask again without max_version. */
        PyErr_Clear();
        if (PySet_Add(legacy_types, type) < 0) goto fail;
        if (PyDict_DelItemString(kwargs, "max_version") < 0) goto fail;
    }
    {
        PyObject *empty = PyTuple_New(0);
        if (!empty) goto fail;
        capsule = PyObject_Call(method, empty, kwargs);
        Py_DECREF(empty);
    }
done:
    Py_DECREF(kwargs);
    Py_DECREF(method);
    if (!capsule && !PyErr_ExceptionMatches(dmoe_py_Error)) {
        /* Say which argument failed; keep the producer's text (e.g. numpy's
         * BufferError for a read-only array, torch's for requires_grad). */
        PyObject *type_, *value, *tb;
        PyErr_Fetch(&type_, &value, &tb);
        PyErr_NormalizeException(&type_, &value, &tb);
        PyObject *text = value ? PyObject_Str(value) : NULL;
        const char *msg = text ? PyUnicode_AsUTF8(text) : NULL;
        if (!msg) PyErr_Clear();
        dmoe_py_raise(DMOE_ERR_INVALID_ARGUMENT, "%s could not be exported through DLPack: %s",
                      name, msg ? msg : "(no message)");
        Py_XDECREF(text);
        /* Chain the producer's exception as the cause. */
        PyObject *t2, *v2, *tb2;
        PyErr_Fetch(&t2, &v2, &tb2);
        PyErr_NormalizeException(&t2, &v2, &tb2);
        if (v2 && value) {
            Py_INCREF(value);
            PyException_SetCause(v2, value);
        }
        PyErr_Restore(t2, v2, tb2);
        Py_XDECREF(type_);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
    return capsule;
fail:
    Py_DECREF(kwargs);
    Py_DECREF(method);
    return NULL;
}

int dmoe_py_import(PyObject *obj, const char *name, uintptr_t stream, int writable,
                   py_tensor *out) {
    memset(out, 0, sizeof *out);
    if (!legacy_types) {
        legacy_types = PySet_New(NULL);
        if (!legacy_types) return -1;
    }
    int dev_type = 0, dev_id = 0;
    if (query_device(obj, name, &dev_type, &dev_id) < 0) return -1;
    PyObject *capsule = export_capsule(obj, name, dev_type, stream);
    if (!capsule) return -1;

    int versioned;
    void *managed;
    DLTensor *dl;
    uint64_t flags = 0;
    if (PyCapsule_IsValid(capsule, "dltensor_versioned")) {
        DLManagedTensorVersioned *m = PyCapsule_GetPointer(capsule, "dltensor_versioned");
        if (!m) goto fail;
        if (m->version.major > DMOE_DLPACK_MAJOR) {
            dmoe_py_raise(DMOE_ERR_UNSUPPORTED, "%s uses DLPack %u.%u; dmoe understands %d.x",
                          name, (unsigned)m->version.major, (unsigned)m->version.minor,
                          DMOE_DLPACK_MAJOR);
            goto fail;
        }
        versioned = 1;
        managed = m;
        dl = &m->dl_tensor;
        flags = m->flags;
    } else if (PyCapsule_IsValid(capsule, "dltensor")) {
        DLManagedTensor *m = PyCapsule_GetPointer(capsule, "dltensor");
        if (!m) goto fail;
        versioned = 0;
        managed = m;
        dl = &m->dl_tensor;
    } else {
        dmoe_py_raise(DMOE_ERR_INVALID_ARGUMENT,
                      "%s.__dlpack__() returned something other than an unused DLPack capsule",
                      name);
        goto fail;
    }

    char buf[128], buf2[128];
    if (map_dtype(dl->dtype, &out->dtype) < 0) {
        describe_dl_dtype(dl->dtype, buf, sizeof buf);
        dmoe_py_raise(DMOE_ERR_UNSUPPORTED_DTYPE,
                      "%s has dtype %s; dmoe takes float32, bfloat16, float16 and int32", name,
                      buf);
        goto fail;
    }
    if (dl->ndim < 0 || dl->ndim > DMOE_PY_MAX_DIMS) {
        dmoe_py_raise(DMOE_ERR_BAD_SHAPE, "%s has %d dims; dmoe takes at most %d", name,
                      (int)dl->ndim, DMOE_PY_MAX_DIMS);
        goto fail;
    }
    out->n_dims = dl->ndim;
    int64_t numel = 1;
    for (int32_t i = 0; i < dl->ndim; i++) {
        out->shape[i] = dl->shape[i];
        numel *= dl->shape[i];
    }
    if (dl->strides && numel > 0) {
        int64_t expect = 1;
        for (int32_t i = dl->ndim - 1; i >= 0; i--) {
            if (dl->shape[i] != 1 && dl->strides[i] != expect) {
                format_dims(dl->shape, dl->ndim, buf, sizeof buf);
                format_dims(dl->strides, dl->ndim, buf2, sizeof buf2);
                dmoe_py_raise(DMOE_ERR_BAD_SHAPE,
                              "%s must be C-contiguous: shape %s has strides %s (in elements); "
                              "make a contiguous copy first (numpy.ascontiguousarray, "
                              "tensor.contiguous())",
                              name, buf, buf2);
                goto fail;
            }
            expect *= dl->shape[i];
        }
    }
    switch (dev_type = (int)dl->device.device_type) {
    case kDLCPU:
    case kDLCUDAHost: out->device = DMOE_DEVICE_HOST; break;
    case kDLCUDA:
    case kDLCUDAManaged: out->device = dl->device.device_id; break;
    default:
        dmoe_py_raise(DMOE_ERR_WRONG_DEVICE,
                      "%s lives on DLPack device type %d; dmoe runs on the CPU (1) and CUDA (2)",
                      name, dev_type);
        goto fail;
    }
    out->read_only = (flags & DLPACK_FLAG_BITMASK_READ_ONLY) != 0;
    if (writable && out->read_only) {
        dmoe_py_raise(DMOE_ERR_INVALID_ARGUMENT, "%s is read-only but dmoe writes into it", name);
        goto fail;
    }
    out->data = (char *)dl->data + dl->byte_offset;

    /* Accepted: take ownership. From here the deleter is ours to call. */
    if (PyCapsule_SetName(capsule, versioned ? "used_dltensor_versioned" : "used_dltensor") < 0)
        goto fail;
    out->managed = managed;
    out->versioned = versioned;
    Py_DECREF(capsule);
    return 0;
fail: {
    /* The unconsumed capsule goes back to its producer, whose destructor may
     * run Python code: keep our exception aside meanwhile. */
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    Py_DECREF(capsule);
    PyErr_Restore(et, ev, etb);
    memset(out, 0, sizeof *out);
    return -1;
}
}

void dmoe_py_release(py_tensor *t) {
    if (!t->managed) return;
    if (t->versioned) {
        DLManagedTensorVersioned *m = (DLManagedTensorVersioned *)t->managed;
        if (m->deleter) m->deleter(m);
    } else {
        DLManagedTensor *m = (DLManagedTensor *)t->managed;
        if (m->deleter) m->deleter(m);
    }
    memset(t, 0, sizeof *t);
}
