# Sources of the fast CPU backend (src/cpu). Included from the top CMakeLists.txt.
set(DMOE_CPU_SOURCES
  src/cpu/cpu.c
)
