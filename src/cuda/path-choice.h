/*
 * path-choice.h: which CUDA path (staged kernels or the fused persistent
 * kernel) a forward of T tokens runs, decided in one place (path-choice.c)
 * from a small table of measured wins that the lead retunes with new numbers.
 */
#ifndef DMOE_CUDA_PATH_CHOICE_H
#define DMOE_CUDA_PATH_CHOICE_H

#include <stddef.h>
#include <stdint.h>

#include "dmoe.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The fused kernel's token limit: its workspace holds at most this many
 * tokens; a FUSED request above it runs staged. */
#define DMOE_FUSED_MAX_TOKENS 64

/* What a layer asked for: desc->path, overridden by DMOE_PATH=staged|fused|auto.
 * Returns 0, or -1 for an unknown DMOE_PATH value (then *out is untouched). */
int dmoe__cuda_path_request(const dmoe_layer_desc *d, dmoe_path *out);

/* The path of a forward of n_tokens tokens, given the request; why (may be
 * NULL) receives one line saying why. */
dmoe_path dmoe__cuda_choose_path(const dmoe_layer_desc *d, dmoe_path request, int64_t n_tokens,
                                 char *why, size_t why_len);

/* 1 when some T in [1, max_tokens] may run fused (the fused workspace is needed). */
int dmoe__cuda_path_may_fuse(const dmoe_layer_desc *d, dmoe_path request);

#ifdef __cplusplus
}
#endif

#endif /* DMOE_CUDA_PATH_CHOICE_H */
