#!/usr/bin/python3
"""tools/run-on-device.sh (the script tools/device-check bundles for the one GPU run)
driven with stand-ins for its binaries and tools, run by ctest:

    test_run_on_device.py --stsweep PATH --workdir DIR

The stand-ins are small shell scripts in a bundle laid out as device-check lays it out
(device-bundle/bin, lib, run-on-device.sh); nvidia-smi, compute-sanitizer and ncu are
stand-ins too (PATH, COMPUTE_SANITIZER, NCU). Checks, in a few seconds:
  - a bench_cuda killed by its step's timeout leaves the FMA peak and the rows that
    finished in summary.md, with a line saying it timed out and where;
  - a failing step (exit 1) does not stop the later ones, and the summary is complete;
  - the bundle's lib/ reaches the bundle's binaries only (not nvidia-smi, not the
    sanitizer or ncu themselves, though the binaries they run get it);
    HDF5_USE_FILE_LOCKING=FALSE reaches the binaries;
  - a small BUDGET runs what fits and skips the rest with a line for each, and the
    summary is still written.
STEP_CAP_S (a knob of the script for this test) keeps every step's timeout short.
"""
import os
import shutil
import stat
import subprocess
import sys
import time

from stsweep_testlib import FAILURES, arguments, check

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "tools", "run-on-device.sh")

# Each stand-in appends "name LD_LIBRARY_PATH=... HDF5_USE_FILE_LOCKING=..." to $ROOT/env.txt.
RECORD = 'echo "$(basename "$0") LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-} HDF5=${HDF5_USE_FILE_LOCKING:-}" >>"$ROOT/env.txt"\n'

STANDINS = {
    "device-bundle/bin/test_cuda": RECORD + """
echo "[==========] Running 3 tests"
[ -n "${TESTS_TAKE:-}" ] && sleep "$TESTS_TAKE"
echo "[  PASSED  ] 3 tests."
""",
    # As bench_cuda prints now: the peak and each row flushed as its run ends; the
    # third run is still going when the step's timeout fires.
    "device-bundle/bin/bench_cuda": RECORD + """
echo "# standard GPU grid on Fake H200"
echo "# FP32 FMA peak (measured, FMA chains): 60000 GFLOP/s"
echo "| path | train s | trial-steps/s | GFLOP/s | % of FMA peak | host set-up s | total s |"
echo "|---|---|---|---|---|---|---|"
echo "bench_cuda: running data fused"
echo "| data fused | 4.000 | 4.1e+09 | 30000 | 50.0 | 1.20 | 5.30 |"
echo "bench_cuda: running data cublas"
echo "| data cublas | error: injected | - | - | - | - | - |"
echo "bench_cuda: running moment fused"
echo "stsweep: cuda: widths 64-64-16 (stderr, after the run began)" >&2
exec sleep 60
""",
    "device-bundle/bin/stsweep": RECORD + """
case "$1 $2" in
  "run sweeps/standard_gpu.json") echo "stsweep: error: stand-in failure"; exit 1 ;;
  *) echo "stsweep: 64 trials done" ;;
esac
""",
    "fake/nvidia-smi": RECORD + 'echo "|   0  NVIDIA H200   On |"\n',
    # The sanitizer runs its target: the arguments after --error-exitcode N.
    "fake/compute-sanitizer": RECORD + """
shift 4
"$@" >/dev/null
echo "========= ERROR SUMMARY: 0 errors"
""",
    "fake/ncu": RECORD + """
echo "==PROF== Connected to process"
echo "    Shared Memory bank conflicts      0"
""",
}


def make_root(workdir, name):
    root = os.path.join(workdir, name)
    os.makedirs(os.path.join(root, "device-bundle", "lib"))
    for rel, body in STANDINS.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("#!/usr/bin/env bash\n" + body)
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    shutil.copy(SCRIPT, os.path.join(root, "device-bundle", "run-on-device.sh"))
    return root


def run(root, **env):
    e = dict(os.environ)
    e.pop("LD_LIBRARY_PATH", None)
    e.update(ROOT=root, OUT=os.path.join(root, "out"), PATH=os.path.join(root, "fake") + ":" + e["PATH"],
             COMPUTE_SANITIZER=os.path.join(root, "fake", "compute-sanitizer"), NCU=os.path.join(root, "fake", "ncu"))
    e.update({k: str(v) for k, v in env.items()})
    t0 = time.time()
    p = subprocess.run(["bash", os.path.join(root, "device-bundle", "run-on-device.sh")], env=e,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    with open(os.path.join(root, "out", "summary.md")) as f:
        summary = f.read()
    print(f"--- summary.md ({time.time() - t0:.1f} s, exit {p.returncode})\n{summary}---", flush=True)
    return p, summary


def env_lines(root):
    with open(os.path.join(root, "env.txt")) as f:
        return [line.split(" ", 1) for line in f.read().splitlines()]


def main():
    a = arguments()

    # A bench_cuda killed by its timeout; a failing stsweep run; every step reached.
    root = make_root(a.workdir, "timeout")
    p, s = run(root, BUDGET=120, STEP_CAP_S=3)
    check(p.returncode == 0, "the script exits 0 though steps failed")
    check("# FP32 FMA peak (measured, FMA chains): 60000 GFLOP/s" in s, "the peak of a killed bench is in the summary")
    check("| data fused | 4.000 |" in s and "| data cublas | error: injected |" in s,
          "the rows a killed bench finished (and its error row) are in the summary")
    check("bench_cuda: timed out after 3s" in s and "it was at: bench_cuda: running moment fused" in s,
          "the summary says the bench timed out, and in which run")
    check(s.count("| data fused |") == 1, "each row once in the summary")
    check("stsweep run standard_gpu: exit 1" in s and "stsweep: error: stand-in failure" in s,
          "a failing step is recorded with its error")
    for later in ("stsweep estimate standard_gpu", "compute-sanitizer memcheck", "compute-sanitizer racecheck",
                  "ncu fused_train vector A = 0",
                  "stsweep run findings_teacher", "stsweep run findings_decomposition"):
        check(f"    {later}: exit 0" in s, f"a later step ran after the failures: {later}")
    check("ERROR SUMMARY: 0 errors" in s and "Shared Memory bank conflicts" in s, "the tools' lines are in the summary")
    check("run-on-device: done" in s, "the summary is complete")
    lib = os.path.join(root, "device-bundle", "lib")
    seen = env_lines(root)
    own = [v for n, v in seen if n in ("test_cuda", "bench_cuda", "stsweep")]
    tools = [(n, v) for n, v in seen if n in ("nvidia-smi", "compute-sanitizer", "ncu")]
    check(own and all(lib in v and "HDF5=FALSE" in v for v in own),
          "the bundle's binaries get its lib/ and HDF5_USE_FILE_LOCKING=FALSE")
    check(len(tools) == 5 and all(lib not in v for n, v in tools),
          "nvidia-smi, compute-sanitizer and ncu run without the bundle's lib/")
    check(sum(n == "test_cuda" for n, v in seen) == 3, "test_cuda ran alone and under both sanitizer tools")

    # A small budget: test_cuda (9 s) runs, with the 10 s it needs (STEP_CAP_S) left of
    # 18 s if the set-up took at most 8 s (a loaded machine's margin); then at most 9 s
    # are left, and every later step, which needs 10, is skipped and says so.
    root = make_root(a.workdir, "budget")
    p, s = run(root, BUDGET=18, STEP_CAP_S=10, TESTS_TAKE=9)
    check("## test_cuda (timeout 10s" in s and "test_cuda: exit 0" in s, "small budget: the first step runs")
    for later in ("bench_cuda", "stsweep run standard_gpu", "stsweep estimate standard_gpu", "compute-sanitizer memcheck",
                  "compute-sanitizer racecheck",
                  "ncu fused_train vector A = 1", "ncu fused_train vector A = 0", "stsweep run findings_teacher",
                  "stsweep run findings_decomposition"):
        check(f"## {later}: skipped, " in s and "s left of the 18s budget (needs 10s)" in s,
              f"small budget: {later} skipped, said so")
    check("run-on-device: done" in s, "small budget: the summary is complete")
    check(not os.path.exists(os.path.join(root, "out", "bench_cuda.log")), "small budget: bench_cuda did not start")

    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
