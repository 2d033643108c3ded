# Sources of the CUDA backend (src/cuda). Included from the top CMakeLists.txt when nvcc is found.
set(DMOE_CUDA_SOURCES
  src/cuda/cuda-backend.cu
  src/cuda/cuda-common.cu
  src/cuda/heuristics.cu
  src/cuda/router.cu
  src/cuda/plan.cu
  src/cuda/gemm-stream.cu
  src/cuda/gemm-mma.cu
  src/cuda/shared.cu
  src/cuda/combine.cu
  src/cuda/expert-cache.cu
  src/cuda/cpu-misses.cu
  src/cuda/fused-moe.cu
  src/cuda/resident.cu
)
# Line info for profilers and sanitizers; no effect on the generated code.
set_source_files_properties(${DMOE_CUDA_SOURCES} PROPERTIES COMPILE_OPTIONS "-lineinfo")
# Host C code of the backend (no device code, so no -lineinfo).
list(APPEND DMOE_CUDA_SOURCES src/cuda/path-choice.c)

# Hopper wgmma+TMA grouped GEMMs (sm90-grouped-gemm.cu, another engineer's file):
# compiled when present; heuristics.cu then offers them (DMOE_CUDA_GEMM=sm90).
if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/sm90-grouped-gemm.cu)
  list(APPEND DMOE_CUDA_SOURCES src/cuda/sm90-grouped-gemm.cu)
  set_source_files_properties(src/cuda/heuristics.cu PROPERTIES COMPILE_DEFINITIONS DMOE_HAVE_SM90_GEMM=1)
endif()
