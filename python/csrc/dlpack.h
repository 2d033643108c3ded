/*
 * dlpack.h: the DLPack data structures dmoe's Python extension consumes.
 *
 * DLPack is a small, stable C ABI for handing a tensor from one library to
 * another without a copy. A producer's __dlpack__() returns a PyCapsule named
 * "dltensor_versioned" (DLPack >= 1.0, a DLManagedTensorVersioned) or
 * "dltensor" (the legacy DLManagedTensor). The consumer renames the capsule
 * to "used_dltensor_versioned" / "used_dltensor" to take ownership, and calls
 * the deleter when it no longer needs the memory.
 *
 * Written here from the published ABI (only the parts dmoe needs) so the
 * extension depends on no header outside this repository. The layouts below
 * must not change: they are what every producer (numpy, torch, cupy, jax)
 * writes.
 */
#ifndef DMOE_DLPACK_H
#define DMOE_DLPACK_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Device types (only those dmoe distinguishes are named). */
typedef enum {
    kDLCPU = 1,
    kDLCUDA = 2,
    kDLCUDAHost = 3, /* pinned host memory: readable by the CPU */
    kDLROCM = 10,
    kDLCUDAManaged = 13,
} DLDeviceType;

typedef struct {
    DLDeviceType device_type; /* an int-sized enum in the ABI */
    int32_t device_id;
} DLDevice;

/* Type codes (bits and lanes are separate fields of DLDataType). */
typedef enum {
    kDLInt = 0,
    kDLUInt = 1,
    kDLFloat = 2,
    kDLOpaqueHandle = 3,
    kDLBfloat = 4,
    kDLComplex = 5,
    kDLBool = 6,
} DLDataTypeCode;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} DLDataType;

typedef struct {
    void *data;          /* base pointer; the first element is at data + byte_offset */
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;      /* (ndim) */
    int64_t *strides;    /* (ndim) in elements, or NULL for compact row-major */
    uint64_t byte_offset;
} DLTensor;

/* Legacy (pre-1.0) managed tensor: capsule name "dltensor". */
typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *self);
} DLManagedTensor;

typedef struct {
    uint32_t major;
    uint32_t minor;
} DLPackVersion;

#define DLPACK_FLAG_BITMASK_READ_ONLY (UINT64_C(1) << 0)
#define DLPACK_FLAG_BITMASK_IS_COPIED (UINT64_C(1) << 1)

/* DLPack >= 1.0 managed tensor: capsule name "dltensor_versioned". */
typedef struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensorVersioned *self);
    uint64_t flags;
    DLTensor dl_tensor;
} DLManagedTensorVersioned;

/* The newest major version this consumer understands. */
#define DMOE_DLPACK_MAJOR 1
#define DMOE_DLPACK_MINOR 0

#ifdef __cplusplus
}
#endif

#endif /* DMOE_DLPACK_H */
