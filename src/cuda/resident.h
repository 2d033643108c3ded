/*
 * resident.h: the cuda backend's resident serving mode (resident.cu) and the
 * one helper it shares with the ordinary fused path (cuda-backend.cu).
 */
#ifndef DMOE_CUDA_RESIDENT_H
#define DMOE_CUDA_RESIDENT_H

#include "fused-moe.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The fused kernel's arguments of layer: shapes, routing and weights; the
 * caller fills n_tokens, route_from_ids, x, y, topk_ids, topk_w and ws.
 * (cuda-backend.cu; the ordinary fused forward builds its arguments with it.) */
void dmoe__cuda_fused_args_init(const dmoe_layer *layer, dmoe_fused_args *out);

extern const dmoe_resident_iface dmoe__cuda_resident_iface;

/* 1 while a resident kernel occupies device: anything that synchronises with
 * the device (cudaMalloc+memset+sync in layer creation, cudaFree) would wait
 * for it forever, so the backend refuses or defers such work. */
int dmoe__cuda_resident_active(int device);

/* The device's resident gate: every cuda backend call that may touch device
 * memory or synchronise holds it shared for its whole body (cuda-backend.cu's
 * table wraps them), and dmoe_resident_create holds it exclusive from its "no
 * resident kernel" check until the kernel runs. So a layer created, destroyed
 * or configured on another thread either finishes before the kernel starts or
 * sees it running (and refuses or defers its synchronising work), never
 * passes the check and then waits for the kernel. Writers first, so a gated
 * call must never enter the gate again. The resident kernel's own destroy and
 * the orphan reaper free an ended kernel's memory outside it. No-ops for
 * devices >= 64. */
void dmoe__cuda_device_enter(int device);
void dmoe__cuda_device_leave(int device);

/* Tests only: submits n_tokens without the host's range check, so the
 * kernel's own check of the doorbell is exercised (its wait then returns
 * DMOE_ERR_INVALID_ARGUMENT). n_tokens is truncated to 16 bits. */
dmoe_status dmoe__cuda_resident_submit_unchecked(dmoe_resident *r, int64_t n_tokens);

#ifdef __cplusplus
}
#endif

#endif /* DMOE_CUDA_RESIDENT_H */
