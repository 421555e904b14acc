#!/usr/bin/python3
"""`stsweep run` on the CUDA backend end to end, on the fake CUDA runtime
(tests/fake_cuda; stsweep_fake is stsweep linked against it), run by ctest:

    fake_cli.py --stsweep PATH --fake PATH --sweeps DIR --workdir DIR

The fake's kernels are the device bodies on one-thread host teams, so every
dataset of the results file must be the CPU backend's bit for bit: with
`--backend auto` (which must pick cuda and print the `cuda time` line), in
small waves, on two devices (`--devices all`), and with trained teachers
trained on the device (none by set-up). And `stsweep estimate` on the fake
device (wall time, a warm-up trial). Exit 77 (skip) when h5py is missing.
"""
import json
import os
import subprocess
import sys

from stsweep_testlib import FAILURES, arguments, check, compare_files

try:
    import h5py  # noqa: F401
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)


def run(binary, args, env=None):
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([binary] + args, capture_output=True, text=True, env=e)
    if p.returncode != 0:
        print(f"command {binary} {args} -> {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def main():
    def more(ap):
        ap.add_argument("--fake", required=True)
        ap.add_argument("--sweeps", required=True)

    a = arguments(more)
    w = lambda name: os.path.join(a.workdir, name)  # noqa: E731

    # Trained teachers (3, each shared by 4 trials), small enough for the
    # fake's one-thread kernels.
    teachers = {
        "name": "fake-teachers", "seed": 3,
        "defaults": {"d": 8, "k": 4, "m": 4, "hidden": [8], "n_train": 8, "steps": 300, "lr": 0.05,
                     "checkpoints": 6, "teacher": {"kind": "trained", "n_train": 32, "steps": 300, "lr": 0.05}},
        "grid": {"seed": {"range": [0, 3]}, "noise": [0.1, 0.5], "lambda": [0, 1]},
    }
    with open(w("trained_teachers.json"), "w") as f:
        json.dump(teachers, f)
    for sweep in ("tiny", "trained_teachers"):
        path = os.path.join(a.sweeps, "tiny.json") if sweep == "tiny" else w("trained_teachers.json")
        ref = w(sweep + "_cpu.h5")
        p = run(a.stsweep, ["run", path, "-o", ref, "--backend", "cpu", "--progress", "none"])
        check(p.returncode == 0, f"{sweep}: the CPU run")
        cases = [
            ("auto", ["--backend", "auto"], {}),
            ("waves of 5", ["--backend", "cuda", "--batch-size", "16"], {"STSWEEP_CUDA_WAVE": "5"}),
            ("two devices", ["--backend", "cuda", "--devices", "all"], {"STSWEEP_FAKE_CUDA_DEVICES": "2"}),
        ]
        for what, args, env in cases:
            out = w(f"{sweep}_{what.replace(' ', '_')}.h5")
            p = run(a.fake, ["run", path, "-o", out, "--progress", "none"] + args, env)
            if not check(p.returncode == 0, f"{sweep}, {what}: stsweep_fake run exits 0"):
                continue
            said = p.stdout + p.stderr
            check("stsweep: backend cuda" in said, f"{sweep}, {what}: ran on cuda")
            check("stsweep: cuda time:" in said, f"{sweep}, {what}: printed the cuda time line")
            if what == "two devices":
                check("2 devices" in said, f"{sweep}, {what}: on two devices")
            if sweep == "trained_teachers":
                check("0 trained (" in said and " on the device" in said and " 0 on the device" not in said,
                      f"{sweep}, {what}: teachers trained on the device, none by set-up")
            compare_files(out, ref, f"{sweep}, {what} against the CPU")

    # `stsweep estimate` on "CUDA": wall seconds (not CPU time), rounds of
    # --round-size trials after one uncounted warm-up trial, nothing written.
    before = set(os.listdir(a.workdir))
    p = run(a.fake, ["estimate", os.path.join(a.sweeps, "tiny.json"), "--backend", "cuda", "--round-size", "8",
                     "--seconds", "3"])
    if check(p.returncode == 0, "estimate on the fake device exits 0"):
        check("warm-up: 1 trial (not counted)" in p.stderr and "on this device" in p.stdout
              and "backend:   cuda (fake device 0" in p.stdout, f"estimate on cuda: warm-up, wall time ({p.stdout})")
    p = run(a.fake, ["estimate", os.path.join(a.sweeps, "tiny.json"), "--backend", "cuda", "--round-size", "8",
                     "--seconds", "3", "--format", "json"])
    if check(p.returncode == 0, "estimate --format json on the fake device exits 0"):
        j = json.loads(p.stdout)
        check(j["backend"] == "cuda" and j["cost_unit"] == "seconds" and j["threads"] == 0
              and abs(j["wall_seconds"] - j["total_cost"]) <= 1e-12 * j["total_cost"]
              and j["round_size"] == 8 and j["trials"] == 36,
              f"estimate on cuda: wall seconds, the total is the wall time ({j})")
    check(set(os.listdir(a.workdir)) == before, "estimate wrote nothing")

    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
