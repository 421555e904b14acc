"""Helpers shared by the Python tests (run with Debian's /usr/bin/python3 by ctest)."""
import argparse
import os
import shutil

FAILURES = []
STATS = {}  # quantity -> largest deviation seen (note(), printed by finish())


def arguments(add=None):
    """The arguments ctest passes (--stsweep PATH --workdir DIR) and any that
    `add(parser)` adds; the work folder is emptied (made afresh)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--stsweep", required=True)
    ap.add_argument("--workdir", required=True)
    if add:
        add(ap)
    a = ap.parse_args()
    shutil.rmtree(a.workdir, ignore_errors=True)
    os.makedirs(a.workdir)
    return a


def check(cond, what):
    """Records a check: prints ok/FAIL and remembers failures (the test exits 1 if any)."""
    print(f"{'ok  ' if cond else 'FAIL'} {what}", flush=True)
    if not cond:
        FAILURES.append(what)
    return cond


def datasets(path):
    """All datasets of a results file as numpy arrays (strings decoded)."""
    import h5py
    import numpy as np
    out = {}
    with h5py.File(path, "r") as f:
        for name, d in f.items():
            a = d[()]
            if a.dtype.kind == "O":
                a = np.array([x.decode() if isinstance(x, bytes) else x for x in a], dtype=object)
            out[name] = a
    return out


def same_bits(a, b):
    """Equal shape, type and bits (NaN payloads included); strings compared as values."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "O":
        return list(a) == list(b)
    return a.tobytes() == b.tobytes()


def compare_files(path, ref, what):
    """Checks that two results files hold the same datasets, bit for bit."""
    got, exp = datasets(path), datasets(ref)
    check(sorted(got) == sorted(exp), f"{what}: same datasets")
    bad = [k for k in exp if k in got and not same_bits(got[k], exp[k])]
    check(not bad, f"{what}: every dataset equal bit for bit" + (f" (differ: {bad})" if bad else ""))


def note(name, value):
    """Keeps the largest deviation seen of a quantity, for finish()'s summary."""
    STATS[name] = max(STATS.get(name, 0.0), float(value))


def finish(summary):
    """Prints `summary`, the largest deviations noted and the failures; the exit code."""
    print(summary)
    if STATS:
        print("largest deviations: " + ", ".join(f"{k} {v:.2e}" for k, v in sorted(STATS.items())))
    if FAILURES:
        print(f"{len(FAILURES)} FAILED:")
        for f in FAILURES:
            print(f"  {f}")
        return 1
    print("all passed")
    return 0
