# Sources of the fast CPU backend (src/cpu). Included from the top CMakeLists.txt.
# The SIMD kernel files carry their own target attributes (runtime dispatch),
# so no -m flags are needed here.
set(DMOE_CPU_SOURCES
  src/cpu/cpu.c
  src/cpu/cpu-pool.c
  src/cpu/cpu-kernels-scalar.c
  src/cpu/cpu-kernels-avx2.c
  src/cpu/cpu-kernels-avx512.c
)
