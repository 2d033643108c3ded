# Sources of the CUDA backend (src/cuda). Included from the top CMakeLists.txt when nvcc is found.
set(DMOE_CUDA_SOURCES
  src/cuda/cuda-backend.cu
)
