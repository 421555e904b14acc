#!/usr/bin/env bash
# The device machine's half of tools/device-check, which copies this file into
# device-bundle/ beside the binaries it built. On the device machine, from the
# repo root, with device-bundle carried (the call device-check prints):
#
#   BUDGET=<N> bash device-bundle/run-on-device.sh
#
# BUDGET: seconds this script may take in all, counted from its start (the
# caller's share of the device lease; see device-check's output). The steps,
# most valuable first:
#   1. test_cuda (every GPU test: correctness first),
#   2. bench_cuda (the tables for docs/PERFORMANCE.md),
#   3. `stsweep run sweeps/standard_gpu.json --backend auto` (end to end: auto
#      must pick CUDA; the store's share of wall time), then `stsweep estimate`
#      of the same sweep (its GPU estimate against that run),
#   4. compute-sanitizer memcheck and racecheck on CudaSmall.*,
#   5. Nsight Compute on one fused_train launch, vector A on and off,
#   6. docs/FINDINGS.md's two sweeps on the GPU (their results files come back).
# Each step runs under a timeout of its own cap or what is left of BUDGET if
# less, and only when enough is left for it to be worth starting; else the
# summary says it was skipped and why. $OUT/summary.md is written as the steps
# go (a step's summary lines as its output comes, each flushed), so a kill at
# any point, a step's timeout or the run tool's limit, leaves everything that
# finished under $OUT. No `set -e`: a failing step is recorded and the next one
# runs. Logs, the summary and the findings' results files go to $OUT.
#
# The bundle's libraries (lib/) are on LD_LIBRARY_PATH only for the bundle's
# own binaries (test_cuda, bench_cuda, stsweep), so nvidia-smi, compute-
# sanitizer and ncu load the image's libraries; under the two tools the target
# is `env LD_LIBRARY_PATH=... binary`, which they follow (exec keeps their
# injection).
#
# Knobs for tests of this script (tests/python/test_run_on_device.py):
# STEP_CAP_S caps every step's timeout (and what it needs to start);
# COMPUTE_SANITIZER and NCU name the tools ("none": not found).
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
D=device-bundle
OUT=${OUT:-$PWD/device-out}
mkdir -p "$OUT"
S="$OUT/summary.md"
# $OUT may be on a file system without locks (HDF5 would fail to create files).
export HDF5_USE_FILE_LOCKING=FALSE

note=""
if ! [[ "${BUDGET:-}" =~ ^[0-9]+$ ]]; then
  note="BUDGET unset or not a number ('${BUDGET:-}'): 300 s assumed"
  BUDGET=300
fi
[[ "${STEP_CAP_S:-}" =~ ^[0-9]+$ ]] || STEP_CAP_S=0
{ echo "# device-check $(date -u +%Y-%m-%dT%H:%MZ), budget ${BUDGET} s"
  [[ -n "$note" ]] && echo "$note"
  echo "steps in order (each skipped when too little of the budget is left): test_cuda, bench_cuda,"
  echo "stsweep run standard_gpu, stsweep estimate standard_gpu, compute-sanitizer memcheck and racecheck, ncu,"
  echo "findings sweeps"
  echo; } >"$S"
echo "run-on-device: budget ${BUDGET} s${note:+ ($note)}, summary in $S"

# bin/ and lib/ travel as one xz archive (a third of their size; the carried
# tree is limited to 64 MiB). Python's lzma stands in if the image lacks xz.
if [[ -f "$D/bundle.tar.xz" && ! -d "$D/bin" ]]; then
  tar -C "$D" -xJf "$D/bundle.tar.xz" 2>/dev/null ||
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$D/bundle.tar.xz" "$D" ||
    { echo "run-on-device: cannot unpack $D/bundle.tar.xz" | tee -a "$S" >&2; exit 1; }
fi

# The bundle's binaries find its libraries, then CUDA's own (cudart, cuBLAS:
# not bundled, too large; expected in /usr/local/cuda). Any the loader still
# misses is looked for under /usr and /opt (PyTorch's nvidia-* wheels hold
# them too) and its folder added.
LIBS="$PWD/$D/lib:/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing() { for bin in "$D"/bin/*; do LD_LIBRARY_PATH="$LIBS" ldd "$bin" 2>/dev/null | awk -v b="$bin" '/not found/ {print b ": " $1}'; done; }
rm -f "$OUT/extra-lib-dirs.txt"
missing | awk -F': ' '{print $2}' | sort -u | while read -r lib; do
  found=$(find /usr /opt -name "$lib" 2>/dev/null | head -n 1)
  echo "run-on-device: $lib not found by the loader; found: ${found:-nowhere}" | tee -a "$S"
  [[ -n "$found" ]] && dirname "$found" >>"$OUT/extra-lib-dirs.txt"
done
if [[ -s "$OUT/extra-lib-dirs.txt" ]]; then
  LIBS="$(sort -u "$OUT/extra-lib-dirs.txt" | paste -sd:):$LIBS"
  missing | sed 's/^/run-on-device: still missing: /' | tee -a "$S"
fi
BIN=(env "LD_LIBRARY_PATH=$LIBS")  # before a bundle binary: its libraries, for it alone

{ date -u; nvidia-smi; } >"$OUT/nvidia-smi.txt" 2>&1
grep -m1 -E 'H200|H100|NVIDIA' "$OUT/nvidia-smi.txt" | sed 's/^/    /' >>"$S"
echo >>"$S"

# What is left of the budget for a step of cap $1 s (STEP_CAP_S caps it too).
left() {
  local l=$((BUDGET - SECONDS)) cap=$1
  ((STEP_CAP_S > 0 && cap > STEP_CAP_S)) && cap=$STEP_CAP_S
  ((l > cap)) && l=$cap
  ((l < 0)) && l=0
  echo "$l"
}
# step NAME LOG CAP NEED PATTERN CMD...: runs CMD under a timeout of CAP s, or
# what is left of the budget if less, when at least NEED s (at most the cap)
# are left; else a "skipped" line. CMD's output goes to $OUT/LOG, and its lines
# matching PATTERN (an awk regex, case-insensitive) go to the summary as they
# come, each indented by $PREFIX (default four spaces: a code block), at most
# $MAXLINES of them (default 200). Sets rc: CMD's exit status, 99 when skipped.
step() {
  local name=$1 log=$2 cap=$3 need=$4 pat=$5
  shift 5
  local t
  t=$(left "$cap")
  ((STEP_CAP_S > 0 && cap > STEP_CAP_S)) && cap=$STEP_CAP_S
  ((need > cap)) && need=$cap
  if ((t < need)); then
    echo "== $name: skipped, ${t}s left of the budget (needs ${need}s)"
    { echo "## $name: skipped, ${t}s left of the ${BUDGET}s budget (needs ${need}s)"; echo; } >>"$S"
    rc=99
    PREFIX="    " MAXLINES=200
    return
  fi
  echo "== $name (timeout ${t}s, at ${SECONDS}s)"
  echo "## $name (timeout ${t}s, started at ${SECONDS}s)" >>"$S"
  timeout -k 10 "$t" "$@" 2>&1 | tee "$OUT/$log" |
    PAT="$pat" PRE="${PREFIX-    }" MAX="${MAXLINES:-200}" awk \
      'n < ENVIRON["MAX"] + 0 && tolower($0) ~ tolower(ENVIRON["PAT"]) { print ENVIRON["PRE"] $0; fflush(); ++n }' >>"$S"
  rc=${PIPESTATUS[0]}
  local how="exit $rc"
  case $rc in
    124) how="timed out after ${t}s (what finished is above)" ;;
    137) how="killed after ${t}s + 10s (it did not stop on SIGTERM)" ;;
  esac
  { echo
    echo "    $name: $how, at ${SECONDS}s"
    # Where it was: the test or bench run it had started, else its last line.
    if ((rc == 124 || rc == 137)); then
      local at
      at=$(grep -E '^(\[ RUN      \]|bench_cuda: running )' "$OUT/$log" | tail -n 1)
      echo "    it was at: $(echo "${at:-$(tail -n 1 "$OUT/$log")}" | cut -c1-200)"
    fi
    echo; } >>"$S"
  tail -n 5 "$OUT/$log"
  echo "   $name: $how"
  PREFIX="    " MAXLINES=200
}
PREFIX="    " MAXLINES=200
nogpu() { grep -q "no usable GPU" "$OUT/test_cuda.log" 2>/dev/null; }

# 1. Correctness on the device.
step test_cuda test_cuda.log 170 30 '^\[  (PASSED|FAILED|SKIPPED) |no usable GPU' \
  "${BIN[@]}" "$D/bin/test_cuda" --gtest_output="xml:$OUT/test_cuda.xml"

# 2. The benchmark: its '#' and '|' lines (the FMA peak, each table row as its
# run ends) are the summary's tables, copied as they come.
PREFIX=""
step bench_cuda bench_cuda.log 180 40 '^(#|\|)' "${BIN[@]}" "$D/bin/bench_cuda"

# 3. End to end: backend auto must pick CUDA (the CPU would take minutes).
if nogpu; then
  { echo "## stsweep run standard_gpu: skipped (test_cuda found no usable GPU)"; echo; } >>"$S"
else
  rm -f "$OUT/standard_gpu.h5"*
  step "stsweep run standard_gpu" stsweep_run.log 80 20 \
    '^stsweep: (backend|[0-9]+ trials|cuda time|trained teachers|error|failed)|^results:' \
    "${BIN[@]}" "$D/bin/stsweep" run sweeps/standard_gpu.json -o "$OUT/standard_gpu.h5" --backend auto \
    --progress jsonl
  rm -f "$OUT/standard_gpu.h5"*  # too large to bring back; the log has the figures
  # `stsweep estimate` on the GPU (wall time of rounds of 4096 trials), against
  # the run just above: docs/SLURM.md, "Sizing a job", has no GPU row yet.
  step "stsweep estimate standard_gpu" estimate.log 40 15 '^\{|^stsweep: (backend|error|failed)' \
    "${BIN[@]}" "$D/bin/stsweep" estimate sweeps/standard_gpu.json --backend cuda --seconds 20 --format json
fi

# 4. compute-sanitizer on the small tests. memcheck with STSWEEP_CUDA_POOL=split:
# every buffer its own allocation, so a kernel past its buffer is an error
# (in one pool it would land in the next carve, valid memory).
CS=${COMPUTE_SANITIZER:-$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer \
  /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null | head -n 1)}
if [[ -n "$CS" && "$CS" != none ]]; then
  for tool in memcheck racecheck; do
    pool=one
    [[ $tool == memcheck ]] && pool=split
    step "compute-sanitizer $tool" "$tool.log" 70 20 \
      'ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED' \
      "$CS" --tool "$tool" --error-exitcode 9 "${BIN[@]}" "STSWEEP_CUDA_POOL=$pool" "$D/bin/test_cuda" \
      --gtest_filter='CudaSmall.*'
  done
else
  { echo "## compute-sanitizer: not found"; echo; } >>"$S"
fi

# 5. Nsight Compute on one launch of each fused_train variant (vector A,
# scalar A) of a small run: shared-memory wavefronts and bank conflicts against
# FMA issue, the model in docs/PERFORMANCE.md (GPU). Containers often deny the
# counters (ERR_NVGPUCTRPERM): then the log says so. Only ncu's own lines
# (indented or ==...==) count, not bench_cuda's tables.
NCU=${NCU:-$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null | head -n 1)}
if [[ -n "$NCU" && "$NCU" != none ]]; then
  for v in 1 0; do
    MAXLINES=30
    step "ncu fused_train vector A = $v" "ncu_vector_a_$v.log" 60 25 \
      '^( |==).*(bank|wavefront|shared|fma|compute \(sm\) throughput|memory throughput|achieved occupancy|err_)' \
      env STSWEEP_CUDA_VECTOR_A=$v "$NCU" --kernel-name-base mangled \
      --kernel-name "regex:fused_trainIfLb${v}ELb1" --launch-count 1 \
      --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis_Tables \
      --section Occupancy "${BIN[@]}" "$D/bin/bench_cuda" --trials 512 --steps 50
  done
else
  { echo "## ncu: not found"; echo; } >>"$S"
fi

# 6. docs/FINDINGS.md's two sweeps on the GPU (last: a bonus): their results
# come back under $OUT, and tools/findings-report --check on them says whether
# the GPU finds what the CPU found (the same seeds, float32 rounding apart).
if nogpu; then
  { echo "## findings sweeps: skipped (test_cuda found no usable GPU)"; echo; } >>"$S"
else
  for f in teacher decomposition; do
    rm -f "$OUT/findings_$f.h5"*
    step "stsweep run findings_$f" "findings_$f.log" 60 10 '^stsweep: ([0-9]+ trials|error|failed)' \
      "${BIN[@]}" "$D/bin/stsweep" run "sweeps/findings_$f.json" -o "$OUT/findings_$f.h5" --backend cuda \
      --progress none
    rm -f "$OUT/findings_$f.h5.journal"
  done
fi

echo "run-on-device: done at ${SECONDS}s of the ${BUDGET}s budget" | tee -a "$S"
echo
cat "$S"
