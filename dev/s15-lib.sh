# dev/s15-lib.sh: what session 15's device calls share (sourced): unpack .cudadev, gp (one library's decode cells
# through gpu_bench.py) and san (a compute-sanitizer run of one GPU test on the fused path, grids for 8 SMs).
OUT=${OUT:-$PWD/out}; mkdir -p $OUT/h
R=$PWD; B=/tmp/b; mkdir -p $B && tar xzf .cudadev/bin.tgz -C $B
for v in $(ls .cudadev/v 2>/dev/null); do n=${v%.so.gz}; mkdir -p /tmp/v/$n; gunzip -c .cudadev/v/$v > /tmp/v/$n/libdmoe.so; done
export LD_LIBRARY_PATH=$B
S=$OUT/summary.txt; CS=/usr/local/cuda/bin/compute-sanitizer
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $S
gp() { local tag=$1 lib=$2; shift 2; mkdir -p /tmp/gp_$tag
  env "$@" timeout 60 python3 bench/gpu_bench.py --lib $lib --out /tmp/gp_$tag --clean 0 --peers 0 --paths 0 \
    --presets qwen3-30b-a3b,olmoe-1b-7b --tokens 1,2,4,16 > $OUT/h/gp-$tag.txt 2>&1; echo "gp $tag rc=$? $(date +%T)" >> $S; }
san() { local tag=$1 tool=$2 lim=$3; shift 3
  ( cd $B && env ${SANENV:-} DMOE_CUDA_SMS=8 DMOE_PATH=fused DMOE_GPU_TEST_QUICK=1 timeout $lim $CS --tool $tool \
      --error-exitcode 9 "$@" > $OUT/h/san-$tag.txt 2>&1; echo "san $tag rc=$? $(date +%T) $(grep -E 'checks' $OUT/h/san-$tag.txt | tail -1) $(grep -E 'SUMMARY' $OUT/h/san-$tag.txt | tail -1) races $(grep -c 'Race reported' $OUT/h/san-$tag.txt)" ) >> $S
  grep -E "Race reported|Error|Warning" $OUT/h/san-$tag.txt | sed 's/(const dmoe[^)]*)//g' | cut -c1-220 | sort | uniq -c | sort -rn | head -6 >> $S; }
# the A/B: REPS rounds of the source defaults (new) and each variant in VARIANTS, alternating, then the table
ab() { for rep in $(seq ${REPS:-2}); do
    gp new$rep $B/libdmoe.so
    for v in $VARIANTS; do [ -f /tmp/v/$v/libdmoe.so ] && gp $v$rep /tmp/v/$v/libdmoe.so; done
  done
  ( cd $OUT && python3 $R/dev/ab-table.py gp > $OUT/ab.txt 2>&1 ); cat $OUT/ab.txt >> $S; }
# t TAG [VAR=..] CMD..: one GPU test from the unpacked build, its "checks" line and first FAILs into the summary
t() { local tag=$1; shift; ( cd $B && env "$@" > $OUT/h/t-$tag.txt 2>&1; echo "test $tag rc=$? $(date +%T) $(grep -E 'checks' $OUT/h/t-$tag.txt | tail -1)" ) >> $S
  grep -E "FAIL" $OUT/h/t-$tag.txt | head -4 >> $S; }
# pybuild_bg: builds the Python extension in the background; its pid in PYB (wait $PYB before pytest)
pybuild_bg() { ( cd python && DMOE_BUILD_JOBS=8 python3 setup.py -q build_ext --inplace > $OUT/h/pybuild.txt 2>&1
  echo "pybuild rc=$? $(date +%T)" >> $S ) & PYB=$!; }
