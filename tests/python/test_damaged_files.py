#!/usr/bin/python3
"""Damaged, edited and misdirected results files (session 14's robustness review),
run by ctest: test_damaged_files.py --stsweep PATH --workdir DIR.

Until session 14 a results file whose datasets disagreed with its header was
read without a check: a column shortened with h5py gave `summary` means of
1e238 with exit 0, and `merge` copied them into a clean-looking file. Each
case here must be refused with exit 2 and a message naming the dataset or
attribute, by every command that reads files. Also: `-o` through a symbolic
link writes, journals and locks the link's target; `--force` replaces only HDF5
files; `merge --force` refuses to replace a shard when the output's name was
forgotten; merge refuses an input a run is writing, and locks its output as a
run does; a directory or a FIFO is refused (a FIFO hung HDF5 forever); a
`summary --where` that no done trial matches names the values there are.
Exit 77 (skip) without h5py.
"""
import json
import os
import shutil
import signal
import subprocess
import sys

from stsweep_testlib import FAILURES, arguments, check

try:
    import h5py
    import numpy as np
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)

SWEEP = {
    "name": "damaged", "seed": 5,
    "defaults": {"d": 6, "k": 3, "m": 2, "hidden": [6], "n_train": 8, "steps": 50, "checkpoints": 4},
    "grid": {"noise": [0.1, 0.5], "lambda": [0, 1], "seed": {"range": [0, 3]}},
}
N_TRIALS = 12


def journal_has_records(path):
    """True when the journal at `path` holds at least one record after its header
    (magic 8 bytes, length 4, the header's JSON, checksum 8; since session 15 the
    header names its session, so a fixed size no longer tells)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(12)
            if len(raw) < 12:
                return False
            return os.path.getsize(path) > 12 + int.from_bytes(raw[8:12], "little") + 8 + 24
    except OSError:
        return False


def main():
    a = arguments()
    wd = a.workdir

    def run(*args, timeout=60):
        return subprocess.run([a.stsweep, *args], capture_output=True, text=True, timeout=timeout, cwd=wd)

    sweep = os.path.join(wd, "sweep.json")
    with open(sweep, "w") as f:
        json.dump(SWEEP, f)
    base = os.path.join(wd, "base.h5")
    p = run("run", sweep, "-o", base, "--progress", "none")
    if not check(p.returncode == 0, f"the sweep runs ({p.stderr.strip()[-200:]})"):
        return 1
    p = run("summary", base, "--by", "noise", "--format", "csv")
    check(p.returncode == 0 and p.stdout.count("\n") == 3, "summary of the intact file: two groups")

    # --- datasets that disagree with the header ---------------------------------------
    def damaged(name, edit):
        path = os.path.join(wd, name + ".h5")
        shutil.copy(base, path)
        with h5py.File(path, "r+") as f:
            edit(f)
        return path

    def replace(f, name, value):
        del f[name]
        f[name] = value

    cases = [
        ("short", lambda f: replace(f, "test_risk", f["test_risk"][()][:5]), "dataset test_risk has 5 rows"),
        ("twod", lambda f: replace(f, "test_risk", np.stack([f["test_risk"][()]] * 2, 1)),
         "dataset test_risk has 2 dimensions"),
        ("narrow_curve", lambda f: replace(f, "curve_test_risk", f["curve_test_risk"][()][:, :2]),
         "dataset curve_test_risk has 12 rows x 2"),
        ("float32", lambda f: replace(f, "test_risk", f["test_risk"][()].astype(np.float32)),
         "test_risk is not stored as IEEE float64"),
        ("missing", lambda f: f.__delitem__("bayes_risk"), "missing dataset bayes_risk"),
        ("ranges_short", lambda f: f.attrs.__setitem__("trial_ranges", np.array([0, 5], "i8")),
         "dataset trial has 12 rows, trial_ranges holds 5 trials"),
        ("ranges_negative", lambda f: f.attrs.__setitem__("trial_ranges", np.array([-3, 9], "i8")),
         "trial_ranges: [-3, 9) is not an increasing range"),
        ("ranges_huge", lambda f: f.attrs.__setitem__("trial_ranges", np.array([0, 1 << 33], "i8")),
         "trial_ranges: [0, 8589934592) is not an increasing range"),
        ("ranges_odd", lambda f: f.attrs.__setitem__("trial_ranges", np.array([0, 6, 9], "i8")),
         "trial_ranges has 3 values"),
        ("ids_reordered", lambda f: f["trial"].__setitem__(slice(0, 2), np.array([1, 0])),
         "dataset trial holds id 1 at row 0"),
        ("format", lambda f: f.attrs.__setitem__("format", "stsweep-results 2"), 'format "stsweep-results 2"'),
    ]
    for name, edit, says in cases:
        path = damaged(name, edit)
        for cmd in (["info", path], ["summary", path, "--by", "noise"],
                    ["merge", os.path.join(wd, f"m_{name}.h5"), path],
                    ["export", path, "--trial", "3", "-o", os.path.join(wd, f"e_{name}.h5")]):
            p = run(*cmd)
            check(p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr,
                  f"{name}: {cmd[0]} exits 2 naming it ({p.returncode}: {p.stderr.strip()[:160]})")
        check(not os.path.exists(os.path.join(wd, f"m_{name}.h5")), f"{name}: merge wrote nothing")
    # One bit flipped inside a data chunk: the chunk's checksum (fletcher32, since session 14)
    # fails the read; before, a flipped bit read as a plausible number.
    flipped = os.path.join(wd, "flipped.h5")
    with h5py.File(base, "r") as f:
        check(f["test_risk"].fletcher32 and f["curve_test_risk"].fletcher32, "numeric datasets carry checksums")
        ci = f["test_risk"].id.get_chunk_info(0)
    data = bytearray(open(base, "rb").read())
    data[ci.byte_offset + ci.size // 2] ^= 0x10
    with open(flipped, "wb") as f:
        f.write(data)
    p = run("summary", flipped, "--by", "noise")
    check(p.returncode == 2 and "Fletcher32" in p.stderr and "damaged" in p.stderr,
          f"a flipped bit in a chunk: exit 2, the checksum named ({p.stderr.strip()[:200]})")
    # Truncated: bad input (exit 2), not a run-time failure.
    half = os.path.join(wd, "half.h5")
    with open(base, "rb") as f, open(half, "wb") as g:
        g.write(f.read(os.path.getsize(base) // 2))
    p = run("info", half)
    check(p.returncode == 2 and "damaged or truncated" in p.stderr, f"truncated: exit 2 ({p.stderr.strip()[:160]})")

    # A shard with no trials (N > the sweep's trials): an empty file that opens (the first
    # version of the structure check refused the empty range [b, b)).
    empty = os.path.join(wd, "empty_shard.h5")
    p = run("run", sweep, "-o", empty, "--shard", "0/40", "--progress", "none")
    q = run("info", empty)
    check(p.returncode == 0 and q.returncode == 0 and not os.path.exists(empty + ".journal"),
          f"a shard with no trials runs and opens ({p.stderr.strip()[-150:]} {q.stderr.strip()[-150:]})")

    # --- not files ----------------------------------------------------------------------
    os.makedirs(os.path.join(wd, "adir"))
    p = run("info", "adir")
    check(p.returncode == 2 and "is a directory" in p.stderr, f"a directory: exit 2 ({p.stderr.strip()})")
    fifo = os.path.join(wd, "fifo")
    os.mkfifo(fifo)
    try:
        p = run("info", fifo, timeout=20)
        check(p.returncode == 2 and "not a regular file" in p.stderr, f"a FIFO: exit 2 ({p.stderr.strip()})")
    except subprocess.TimeoutExpired:
        check(False, "a FIFO: info hangs")

    # --- summary --where that matches nothing --------------------------------------------
    p = run("summary", base, "--by", "noise", "--where", "noise=0.3", "--format", "csv")
    check(p.returncode == 1 and "no done trial has noise = 0.3" in p.stderr and "0.1, 0.5" in p.stderr,
          f"summary --where matching nothing: exit 1, the values named ({p.stderr.strip()})")
    # A value copied from the hint matches (the hint had the table's 6 digits).
    logs = dict(SWEEP, name="logs", grid={"lambda": {"logspace": [-2, 0, 5]}})
    logs_json = os.path.join(wd, "logs.json")
    with open(logs_json, "w") as f:
        json.dump(logs, f)
    logs_h5 = os.path.join(wd, "logs.h5")
    run("run", logs_json, "-o", logs_h5, "--progress", "none")
    p = run("summary", logs_h5, "--by", "lambda", "--where", "lambda=0.05")
    hint = p.stderr.split("its values: ")[-1].rstrip(")\n").split(", ")
    q = run("summary", logs_h5, "--by", "lambda", "--where", f"lambda={hint[1]}") if len(hint) > 1 else p
    check(p.returncode == 1 and q.returncode == 0, f"a value from the --where hint matches ({hint})")
    p = run("summary", base, "--by", "noise", "--where", "teacher.decomposition=Balanced")
    check(p.returncode == 1 and "its values: balanced" in p.stderr,
          f"summary --where with a misspelt text value: exit 1 ({p.stderr.strip()})")
    p = run("summary", base, "--by", "noise", "--where", "noise=0.1", "--where", "lambda=1")
    check(p.returncode == 0 and p.stdout.count("\n") >= 3, f"summary --where matching some: exit 0, a table ({p.stderr.strip()})")

    # --- -o through a symbolic link -------------------------------------------------------
    os.makedirs(os.path.join(wd, "scratch"))
    target = os.path.join(wd, "scratch", "real.h5")
    link = os.path.join(wd, "link.h5")
    os.symlink(os.path.join("scratch", "real.h5"), link)  # relative, as `ln -s` makes them
    slow = dict(SWEEP, name="slow")
    slow["defaults"] = dict(SWEEP["defaults"], steps=200000)
    slow_json = os.path.join(wd, "slow.json")
    with open(slow_json, "w") as f:
        json.dump(slow, f)
    # A run through the link, stopped: its journal and file are the target's.
    proc = subprocess.Popen([a.stsweep, "run", slow_json, "-o", link, "--progress", "none", "--threads", "1",
                             "--batch-size", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen_journal = False
    for _ in range(300):
        if journal_has_records(target + ".journal"):
            seen_journal = True
            break
        if proc.poll() is not None:
            break
        subprocess.run(["sleep", "0.1"])
    # A second run through the target while the first writes: refused by the lock.
    if seen_journal:
        p = run("run", slow_json, "-o", target, "--resume", "--progress", "none")
        check(p.returncode == 1 and "another stsweep process is writing" in p.stderr,
              f"a run on the target while one writes through the link: refused ({p.stderr.strip()[-160:]})")
        # merge of a file a run is writing: said so (it advised --resume, which met the lock)
        p = run("merge", os.path.join(wd, "busy_merge.h5"), link)
        check(p.returncode == 2 and "a stsweep run is writing" in p.stderr and "after the run ends" in p.stderr,
              f"merge of a file a run writes: exit 2, said so ({p.stderr.strip()[-160:]})")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    check(seen_journal and not os.path.exists(link + ".journal"),
          "a run through a link journals at the target (scratch/real.h5.journal), not at the link")
    check(os.path.islink(link) and os.path.exists(target), "the link is still a link; the target holds the file")
    p = run("info", link)
    check(p.returncode == 0 and "[complete]" not in p.stdout, f"info through the link reads the target ({p.stdout})")

    # --- a journal the new file will not use is kept aside -----------------------------
    # (until session 14 a new run at a moved file's name emptied its journal without a word)
    moved = os.path.join(wd, "moved.h5")
    proc = subprocess.Popen([a.stsweep, "run", slow_json, "-o", moved, "--progress", "none", "--threads", "1",
                             "--batch-size", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(300):
        if journal_has_records(moved + ".journal"):
            break
        subprocess.run(["sleep", "0.1"])
    proc.kill()  # kill -9: the finished rows are in the journal only
    proc.communicate()
    kept_file = os.path.join(wd, "kept.h5")
    os.rename(moved, kept_file)  # the researcher moves the interrupted file aside
    p = run("run", sweep, "-o", moved, "--progress", "none")
    aside = [f for f in os.listdir(wd) if f.startswith("moved.h5.journal.")]
    check(p.returncode == 0 and len(aside) == 1 and "kept " in p.stderr,
          f"a new run at the moved file's name keeps its journal aside ({aside}; {p.stderr.strip()[-200:]})")
    if aside:
        os.rename(os.path.join(wd, aside[0]), kept_file + ".journal")
        p = run("run", slow_json, "-o", kept_file, "--resume", "--progress", "none", "--threads", "1",
                timeout=300)
        check(p.returncode == 0 and "recovered" in p.stderr,
              f"moved back as FILE.journal, --resume recovers its rows ({p.stderr.strip()[-200:]})")

    # --- --force replaces only HDF5 files ----------------------------------------------
    notes = os.path.join(wd, "notes.txt")
    with open(notes, "w") as f:
        f.write("my notes\n")
    for cmd in (["run", sweep, "-o", notes, "--force", "--progress", "none"],
                ["merge", notes, base, "--force"],
                ["export", base, "--trial", "3", "-o", notes, "--force"]):
        p = run(*cmd)
        check(p.returncode == 2 and "not an HDF5 file" in p.stderr, f"{cmd[0]} --force over a text file: exit 2 "
                                                                    f"({p.stderr.strip()[:160]})")
    with open(notes) as f:
        check(f.read() == "my notes\n", "the text file is kept")

    # --- merge --force with the output's name forgotten ----------------------------------
    shards = []
    for i in range(3):
        s = os.path.join(wd, f"s{i}.h5")
        p = run("run", sweep, "-o", s, "--shard", f"{i}/3", "--progress", "none")
        shards.append(s)
    p = run("merge", "--force", *shards)  # `stsweep merge --force s*.h5`: s0 would be the output
    check(p.returncode == 2 and "did you forget the output's name" in p.stderr,
          f"merge --force s0 s1 s2: refused, shard 0 kept ({p.stderr.strip()[:200]})")
    with h5py.File(shards[0], "r") as f:
        check(int((f["status"][()] == 1).sum()) == 4, "shard 0 still holds its 4 done trials")
    merged = os.path.join(wd, "merged.h5")
    p = run("merge", merged, *shards)
    p = run("merge", "--force", merged, *shards)
    check(p.returncode == 0, f"re-merging into an earlier merge of the same shards is allowed ({p.stderr.strip()})")
    check(not os.path.exists(merged + ".journal"), "merge removes the lock file it made (OUT.journal)")

    # --- many shards: one input open at a time ------------------------------------------
    # merge kept every shard open (HDF5's caches: 10-70 MB each; a 100-shard merge took
    # 949 MB, and about 1020 shards met the open-file limit as "not an HDF5 file").
    import resource
    many = dict(SWEEP, name="many", grid=dict(SWEEP["grid"], seed={"range": [0, 30]}))  # 120 trials
    many_json = os.path.join(wd, "many.json")
    with open(many_json, "w") as f:
        json.dump(many, f)
    n_shards = 60
    parts = []
    for i in range(n_shards):
        s = os.path.join(wd, f"many{i}.h5")
        run("run", many_json, "-o", s, "--shard", f"{i}/{n_shards}", "--progress", "none")
        parts.append(s)
    p = subprocess.run([a.stsweep, "merge", os.path.join(wd, "many.h5"), *parts], capture_output=True, text=True,
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32)), timeout=120)
    check(p.returncode == 0 and "merged 120 trials from 60 files" in p.stdout,
          f"merge of 60 shards under a limit of 32 open files ({p.stdout.strip()} {p.stderr.strip()[:200]})")

    print(f"{len(FAILURES)} failed" if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
