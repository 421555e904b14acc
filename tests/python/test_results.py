#!/usr/bin/python3
"""End-to-end checks of the results file (issue 4), run by ctest:

    test_results.py --stsweep PATH --workdir DIR [--kills N] [--seed S]

Runs small sweeps with the real engine and checks: xarray (h5netcdf) and h5py
open the file with no options; one dataframe row per trial; parameters equal
`stsweep list`; dimension scales (h5dump -H); kill -9 at random points then
--resume equals an uninterrupted run bit for bit; SIGTERM; merge of 3 shards
equals the unsharded run; refused resumes and merges; bad outputs (directory,
unwritable, full disk). Exit 77 (skip) when h5py or xarray are missing.
"""
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time

from stsweep_testlib import FAILURES, arguments, check, compare_files as compare

try:
    import h5py
    import numpy as np
    import xarray as xr
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)

SWEEP = {
    "name": "store-e2e",
    "description": "results store end-to-end test",
    "seed": 11,
    "defaults": {"d": 16, "k": 4, "m": 4, "hidden": [16], "n_train": 12, "steps": 4000,
                 "checkpoints": 12, "n_test": 50},
    "grid": {"noise": [0.1, 0.5, 1.0], "lambda": [0, 0.3, 1, 3],
             "teacher.decomposition": ["balanced", "rotated"], "seed": {"range": [0, 6]}},
}

def run(args, ok=(0,), **kw):
    p = subprocess.run([STSWEEP] + args, capture_output=True, text=True, **kw)
    if p.returncode not in ok:
        print(f"command {args} -> {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def opens(path):
    try:
        with h5py.File(path, "r") as f:
            f["status"][()]
            f["test_risk"][()]
        xr.open_dataset(path, engine="h5netcdf").load().close()
        return True
    except Exception as e:  # noqa: BLE001
        print(f"  cannot open {path}: {e}")
        return False


def main():
    global STSWEEP
    def more(ap):
        ap.add_argument("--kills", type=int, default=6)
        ap.add_argument("--seed", type=int, default=None)

    a = arguments(more)
    STSWEEP = a.stsweep
    seed = a.seed if a.seed is not None else random.randrange(1 << 30)
    print(f"random seed {seed} (rerun with --seed {seed})")
    rng = random.Random(seed)
    wd = a.workdir
    sweep = os.path.join(wd, "sweep.json")
    with open(sweep, "w") as f:
        json.dump(SWEEP, f, indent=1)
    n_trials = 3 * 4 * 2 * 6
    common = ["--backend", "cpu", "--batch-size", "8", "--progress", "none"]

    # --- an uninterrupted run ---------------------------------------------------------
    ref = os.path.join(wd, "ref.h5")
    t0 = time.time()
    p = run(["run", sweep, "-o", ref] + common)
    t_ref = time.time() - t0
    check(p.returncode == 0, "uninterrupted run exits 0")
    check(not os.path.exists(ref + ".journal"), "journal removed after a complete run")
    print(f"  uninterrupted run: {t_ref:.2f} s")

    # xarray, no options; one row per trial
    ds = xr.open_dataset(ref, engine="h5netcdf")
    check(ds.sizes["trial"] == n_trials, "xarray: trial dimension has every trial")
    check(list(ds["trial"].values) == list(range(n_trials)), "xarray: trial coordinate = ids")
    check("checkpoint" in ds.dims and "step" in ds.coords, "xarray: checkpoint dimension, step coordinate")
    df = ds.drop_dims("checkpoint").to_dataframe()
    check(len(df) == n_trials and df.index.name == "trial", "to_dataframe without curves: one row per trial")
    check(set(ds.attrs) >= {"sweep_json", "sweep_hash", "engine_version", "git_commit", "backend", "device",
                            "host", "precision", "start_time", "end_time", "wall_seconds", "compute_seconds",
                            "shard"}, "root attributes present")
    check(json.loads(ds.attrs["sweep_json"]) == SWEEP, "sweep_json is the sweep file")
    check(ds.attrs["backend"] == "cpu" and ds.attrs["precision"] == "f32", "backend and precision attributes")
    check(ds["status"].dtype == np.int8 and list(ds["status"].attrs["flag_values"]) == [0, 1, 2, 3]
          and ds["status"].attrs["flag_meanings"] == "pending done diverged failed", "status flags")
    check(bool((ds["status"].values == 1).all()), "every trial done")

    # parameters equal `stsweep list`
    lp = run(["list", sweep, "--format", "json"])
    rows = [json.loads(line) for line in lp.stdout.splitlines() if line.strip()]
    check(len(rows) == n_trials, "list shows every trial")
    mism = []
    for r in rows:
        i = r["id"]
        for k, v in r.items():
            if k == "id":
                continue
            if k not in ds:
                mism.append(f"missing {k}")
                continue
            got = ds[k].values[i]
            if isinstance(v, str):
                ok = str(got) == v
            else:
                ok = float(got) == float(v)
            if not ok:
                mism.append(f"trial {i} {k}: file {got!r} list {v!r}")
    check(not mism, "every parameter of every trial equals `stsweep list`" + (f": {mism[:5]}" if mism else ""))

    # metrics: consistent with the curves and with each other
    tr = ds["test_risk"].values
    last = np.array([c[~np.isnan(c)][-1] for c in ds["curve_test_risk"].values])
    check(np.allclose(tr, last, rtol=1e-6), "test_risk = last point of curve_test_risk")
    steps = ds["step"].values
    check(bool((steps[:, 0] == 0).all()) and bool((steps.max(axis=1) == ds["steps_run"].values).all()),
          "step runs from 0 to steps_run")
    check(np.allclose(ds["excess_risk"].values, tr - ds["bayes_risk"].values, rtol=1e-6, atol=1e-12),
          "excess_risk = test_risk - bayes_risk")
    ds.close()

    # h5dump -H shows the dimension scales
    if shutil.which("h5dump"):
        hd = subprocess.run(["h5dump", "-H", ref], capture_output=True, text=True).stdout
        check(hd.count('ATTRIBUTE "DIMENSION_LIST"') == hd.count("DATASET ") - 2
              and hd.count('ATTRIBUTE "CLASS"') == 2 and hd.count('ATTRIBUTE "REFERENCE_LIST"') == 2,
              "h5dump -H: every variable has a DIMENSION_LIST; trial and checkpoint are scales")
        hv = subprocess.run(["h5dump", "-a", "/trial/CLASS", ref], capture_output=True, text=True).stdout
        check('"DIMENSION_SCALE"' in hv, "h5dump: trial's CLASS is DIMENSION_SCALE")
    with h5py.File(ref, "r") as f:
        check(f["test_risk"].dims[0][0].name == "/trial" and f["curve_test_risk"].dims[1][0].name == "/checkpoint",
              "h5py: scales attached to trial and checkpoint dims")
        check(f["test_risk"].compression == "gzip" and f["test_risk"].shuffle and f["test_risk"].chunks,
              "chunked, shuffle + deflate")

    # info and summary against the data
    p = run(["info", ref])
    check(p.returncode == 0 and f"{n_trials} done" in p.stdout and "store-e2e" in p.stdout, "info: counts, sweep")
    p = run(["summary", ref, "--by", "noise,lambda", "--format", "csv"])
    lines = p.stdout.strip().splitlines()
    check(lines[0] == "noise,lambda,count,mean,std,ci95_low,ci95_high", "summary csv header")
    df = xr.open_dataset(ref, engine="h5netcdf").drop_dims("checkpoint").to_dataframe()
    g = df.groupby(["noise", "lambda"])["test_risk"]
    exp = {(float(k[0]), float(k[1])): (len(v), v.mean(), v.std()) for k, v in g}
    okk = len(lines) - 1 == len(exp)
    for line in lines[1:]:
        nz, lam, cnt, mean, std, lo, hi = line.split(",")
        e = exp.get((float(nz), float(lam)))
        okk = okk and e is not None and int(cnt) == e[0] and abs(float(mean) - e[1]) <= 1e-5 * abs(e[1]) \
            and abs(float(std) - e[2]) <= 1e-5 * abs(e[2]) and float(lo) < float(mean) < float(hi)
        half = (float(hi) - float(lo)) / 2
        t975 = {5: 2.571, 11: 2.201}[e[0] - 1]  # Student t quantiles for the counts used here
        okk = okk and abs(half - t975 * e[2] / np.sqrt(e[0])) <= 1e-4 * half
    check(okk, "summary: count, mean, std and 95% CI equal pandas' over the other axes")
    # --paired: the per-row difference (and ratio - 1), summarised like a metric
    for rel in (False, True):
        p = run(["summary", ref, "--by", "noise", "--paired", "baseline_test_risk", "--format", "csv"]
                + (["--relative"] if rel else []))
        lines = p.stdout.strip().splitlines()
        x = df["test_risk"] / df["baseline_test_risk"] - 1 if rel else df["test_risk"] - df["baseline_test_risk"]
        g = x.groupby(df["noise"])
        okk = p.returncode == 0 and len(lines) - 1 == g.ngroups
        for line in lines[1:]:
            nz, cnt, mean, std = line.split(",")[:4]
            v = g.get_group(float(nz))
            okk = okk and int(cnt) == len(v) and abs(float(mean) - v.mean()) <= 1e-9 + 1e-5 * abs(v.mean()) \
                and abs(float(std) - v.std()) <= 1e-9 + 1e-5 * abs(v.std())
        check(okk and x.abs().max() > 0, f"summary --paired baseline_test_risk{' --relative' if rel else ''} "
              "equals pandas on the per-row difference")

    # Non-finite values are left out and counted, in both formats: test_risk / lambda - 1
    # is +inf at lambda = 0 (before session 12 inf entered the mean, which became NaN).
    for fmt in ("table", "csv"):
        p = run(["summary", ref, "--by", "noise", "--paired", "lambda", "--relative", "--format", fmt])
        zero = int((df["lambda"] == 0).sum())
        x = (df["test_risk"] / df["lambda"] - 1)[df["lambda"] != 0]
        body = [ln for ln in p.stdout.strip().splitlines() if ln.strip() and ln.split()[0][0].isdigit()]
        counts = [int((ln.split(",") if fmt == "csv" else ln.split())[1]) for ln in body]
        means = [float((ln.split(",") if fmt == "csv" else ln.split())[2]) for ln in body]
        said = f"{zero} done trials with no finite value" in (p.stderr if fmt == "csv" else p.stdout)
        check(p.returncode == 0 and zero > 0 and sum(counts) == len(x) and all(np.isfinite(means)) and said,
              f"summary --paired lambda --relative ({fmt}): the {zero} infinite ratios left out and counted")

    # --where: the same numbers over a slice (a value given as text finds the stored double)
    nz0 = sorted(df["noise"].unique())[0]
    p = run(["summary", ref, "--by", "lambda", "--where", f"noise={nz0!r}", "--format", "csv"])
    lines = p.stdout.strip().splitlines()
    g = df[df["noise"] == nz0].groupby("lambda")["test_risk"]
    okk = p.returncode == 0 and len(lines) - 1 == g.ngroups and g.ngroups > 0
    for line in lines[1:]:
        lam, cnt, mean = line.split(",")[:3]
        v = g.get_group(float(lam))
        okk = okk and int(cnt) == len(v) and abs(float(mean) - v.mean()) <= 1e-5 * abs(v.mean())
    check(okk and g.size().sum() < len(df), f"summary --where noise={nz0!r} equals pandas on the slice")
    p = run(["summary", ref, "--where", "noise=x"], ok=(2,))
    check(p.returncode == 2 and "--where" in p.stderr and "is not a number" in p.stderr,
          f"summary --where noise=x: exit 2, named ({p.stderr.strip()})")

    # --- integer metrics with no value: -1 on disk, NaN in xarray, left out by summary ----------
    # A row without a twin has baseline_best_step -1. Before session 15 summary and
    # xarray averaged those -1s in with the twins' steps.
    mixed = os.path.join(wd, "mixed.json")
    with open(mixed, "w") as f:
        json.dump(dict(SWEEP, name="mixed-baseline", grid={"noise": [0.1, 1.0], "lambda": [0.3, 1],
                                                          "baseline": [True, False], "seed": {"range": [0, 3]}}), f)
    mh5 = os.path.join(wd, "mixed.h5")
    p = run(["run", mixed, "-o", mh5] + common)
    with h5py.File(mh5, "r") as f:
        raw, base = f["baseline_best_step"][()], f["baseline"][()]
        attr = f["baseline_best_step"].attrs.get("missing_value")
        status_attr = "missing_value" in f["status"].attrs
    check(p.returncode == 0 and bool((raw[base == 0] == -1).all()) and bool((raw[base == 1] >= 0).all())
          and attr == -1 and not status_attr,
          "h5py: baseline_best_step is -1 exactly where baseline is false, with missing_value = -1 (status has none)")
    mds = xr.open_dataset(mh5, engine="h5netcdf")
    xv = mds["baseline_best_step"].values
    check(bool(np.isnan(xv[base == 0]).all()) and bool((xv[base == 1] == raw[base == 1]).all())
          and mds["best_step"].dtype.kind == "f" and mds["status"].dtype == np.int8,
          "xarray: baseline_best_step is NaN where there is no twin and the step where there is")
    p = run(["summary", mh5, "--by", "noise", "--metric", "baseline_best_step", "--format", "csv"])
    lines = p.stdout.strip().splitlines()
    okk = p.returncode == 0 and len(lines) == 3
    for line in lines[1:]:
        nz, cnt, mean = line.split(",")[:3]
        want = raw[(base == 1) & np.isclose(mds["noise"].values, float(nz))]
        okk = okk and int(cnt) == len(want) and abs(float(mean) - want.mean()) <= 1e-5 * max(1.0, want.mean())
    nobase = int((base == 0).sum())
    check(okk and f"{nobase} done trials with no finite value" in p.stderr,
          f"summary --metric baseline_best_step: the mean over rows with a twin; the {nobase} without are left out "
          f"and counted ({p.stdout.strip()!r}, {p.stderr.strip()!r})")
    mds.close()

    # --- kill -9 at random points, then --resume -----------------------------------------
    out = os.path.join(wd, "killed.h5")
    kills_done = attempts = 0
    while kills_done < a.kills and attempts < 3 * a.kills:
        attempts += 1
        delay = rng.uniform(0.02, max(0.05, t_ref * 0.6))
        proc = subprocess.Popen([STSWEEP, "run", sweep, "-o", out, "--resume", "--checkpoint-every", "0"] + common,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            proc.kill()
            kills_done += 1
        proc.wait()
        if os.path.exists(out):
            check(opens(out), f"kill -9 #{attempts} after {delay:.2f} s: the file opens")
        if not killed:  # it finished first: start again, so that the kills hit a run
            for x in (out, out + ".journal"):
                if os.path.exists(x):
                    os.remove(x)
    check(kills_done >= 2, f"at least 2 runs were killed in flight ({kills_done})")
    # Sessions the killed runs left: those in the file, and (since session 15) the one
    # the journal names when it killed before its first checkpoint with rows journaled.
    sess_before, ids_before = 0, set()
    if os.path.exists(out):
        with h5py.File(out, "r") as f:
            ids_before = {x.get("id", "") for x in json.loads(f.attrs["sessions"])}
            sess_before = len(ids_before)
    journal_session = None
    if os.path.exists(out + ".journal"):
        with open(out + ".journal", "rb") as jf:
            raw = jf.read()
        hl = int.from_bytes(raw[8:12], "little")
        if len(raw) > 12 + hl + 8:  # a record follows the header
            journal_session = json.loads(raw[12:12 + hl]).get("session", {}).get("id")
    extra = 1 if journal_session and journal_session not in ids_before else 0
    p = run(["run", sweep, "-o", out, "--resume"] + common)
    check(p.returncode == 0, "--resume after kills completes")
    compare(out, ref, "killed + resumed vs uninterrupted")
    with h5py.File(out, "r") as f:
        sess = json.loads(f.attrs["sessions"])
    check(len(sess) == sess_before + extra + 1 and sum(x["trials"] for x in sess) >= n_trials,
          f"the resume adds one session to the {sess_before} before it, and {extra} the journal names ({len(sess)})")

    # resume of a complete file does nothing: no session is added, the file is not
    # rewritten, and another --precision (with --force) leaves its precision alone
    # (until session 13 it became "f32,f64" and export refused the file)
    mtime = os.stat(out).st_mtime_ns
    with h5py.File(out, "r") as f:
        prec = f.attrs["precision"]
    other = [x for x in common if x != "--force"] + ["--precision", "f64" if prec == "f32" else "f32", "--force"]
    for args in (common, other):
        p = run(["run", sweep, "-o", out, "--resume"] + args)
        check(p.returncode == 0 and "nothing to do" in p.stdout, "resume of a complete file: nothing to do")
    with h5py.File(out, "r") as f:
        check(len(json.loads(f.attrs["sessions"])) == len(sess) and f.attrs["precision"] == prec,
              f"a no-op resume records no session ({len(json.loads(f.attrs['sessions']))} vs {len(sess)}), "
              f"precision {f.attrs['precision']}")
    check(os.stat(out).st_mtime_ns == mtime, "a no-op resume leaves the file untouched")
    check(not os.path.exists(out + ".journal"), "a no-op resume leaves no journal")

    # --- SIGTERM, SIGUSR1: finish the write, clear message, non-zero ---------------------------
    # (SIGUSR1 is what `#SBATCH --signal=USR1@N` sends; until session 13 it killed the run)
    # The same request twice at once (GNU timeout signals the process and its group) is one
    # stop with a checkpoint, not "second signal, exiting now" (until session 14).
    # --stop-checkpoint-limit 0: the stop syncs the journal and leaves the fold to --resume
    # (a checkpoint copies the whole file, which at 10^8 rows can outlast a grace period).
    interrupted = []
    for signame, twice, nofold in (("SIGTERM", False, False), ("SIGUSR1", False, False), ("SIGTERM", True, False),
                                   ("SIGTERM", False, True)):
        out2 = os.path.join(wd, f"term_{signame}{'_twice' if twice else ''}{'_nofold' if nofold else ''}.h5")
        # The signal once the first batch is stored: progress as JSON lines after every batch.
        term_args = [x for x in common if x not in ("--progress", "none")] + ["--progress", "jsonl"] \
            + (["--stop-checkpoint-limit", "0"] if nofold else [])
        proc = subprocess.Popen([STSWEEP, "run", sweep, "-o", out2] + term_args, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, STSWEEP_PROGRESS_INTERVAL="0"))
        first = []
        for line in proc.stderr:
            first.append(line)
            if line.startswith("{") and json.loads(line).get("done", 0) > 0:
                break
        proc.send_signal(getattr(signal, signame))
        if twice:  # after the first is handled (two pending signals of one kind merge into one)
            time.sleep(0.01)
            proc.send_signal(getattr(signal, signame))
        so, se = proc.communicate()
        se = "".join(first) + se
        if proc.returncode == 0:
            print(f"  (the run finished before {signame})")
        else:
            interrupted.append(signame)
            check(proc.returncode == 1 and f"interrupted by {signame}" in se and "--resume" in se
                  and "second signal" not in se,
                  f"{signame}{' twice' if twice else ''}: exit 1 with a message naming --resume (rc {proc.returncode})")
            with h5py.File(out2, "r") as f:
                st = f["status"][()]
                in_file = int(f.attrs["n_done"])
                if not nofold:
                    check(in_file == int((st == 1).sum()) > 0, f"{signame}: finished rows are in the file")
            if nofold:
                info = run(["info", out2])
                check(in_file == 0 and "not folded in: --stop-checkpoint-limit 0" in se
                      and "finished trials not yet in the file" in info.stdout,
                      f"--stop-checkpoint-limit 0: the stop leaves the finished rows in the journal, and says so "
                      f"({in_file} in the file; {se.strip().splitlines()[-2][:200]})")
        p = run(["run", sweep, "-o", out2, "--resume"] + common)
        check(p.returncode == 0, f"resume after {signame}{' (not folded)' if nofold else ''} completes")
        compare(out2, ref, f"{signame}{' (not folded)' if nofold else ''} + resumed vs uninterrupted")
    check(interrupted, f"a signal interrupted a run ({interrupted}; both runs finished first otherwise)")

    # Sessions stopped before their first checkpoint are recorded from the journal at
    # --resume (each journal names its session since session 15; before, a resumed
    # session stopped without a fold vanished and its rows went to the session before).
    def stop_after_first_batch(args):
        proc = subprocess.Popen([STSWEEP] + args + ["--progress", "jsonl"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=dict(os.environ, STSWEEP_PROGRESS_INTERVAL="0"))
        for line in proc.stderr:
            if line.startswith("{") and json.loads(line).get("done", 0) > 0:
                break
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate()
        return proc.returncode, err
    chain = os.path.join(wd, "chain.h5")
    quiet = [x for x in common if x not in ("--progress", "none")] + ["--stop-checkpoint-limit", "0"]
    rc1, _ = stop_after_first_batch(["run", sweep, "-o", chain] + quiet)
    # A resume that has made no checkpoint of its own goes by the file's last one
    # (a review: it folded at any limit until its first checkpoint, 30 s in).
    rc2, err2 = stop_after_first_batch(["run", sweep, "-o", chain, "--resume"] + quiet[:-1] + ["1e-9"])
    if rc2 == 1:
        check("more than --stop-checkpoint-limit 1e-09 s" in err2,
              f"a resumed run's stop weighs the file's last checkpoint against the limit ({err2.strip()[-300:]})")
    p = run(["run", sweep, "-o", chain, "--resume"] + common)
    with h5py.File(chain, "r") as f:
        sess = json.loads(f.attrs["sessions"])
        ckpt_s = float(f.attrs["checkpoint_seconds"])
    if rc1 == 1 and rc2 == 1:
        trials = [x["trials"] for x in sess]
        check(p.returncode == 0 and len(sess) == 3 and sum(trials) == n_trials and min(trials) > 0
              and len({x["id"] for x in sess}) == 3 and all(x["end_time"] for x in sess),
              f"two stops without a fold, then --resume: three sessions, each with its own rows {trials}")
    else:
        print(f"  (a run finished before its stop: rc {rc1}, {rc2})")
    check(ckpt_s > 0, f"the file records its last checkpoint's duration ({ckpt_s:.3g} s)")
    compare(chain, ref, "two unfolded stops + resumed vs uninterrupted")

    # --- shards and merge ------------------------------------------------------------------
    shards = []
    for i in range(3):
        s = os.path.join(wd, f"shard{i}.h5")
        p = run(["run", sweep, "-o", s, "--shard", f"{i}/3"] + common)
        check(p.returncode == 0, f"shard {i}/3 runs")
        shards.append(s)
    merged = os.path.join(wd, "merged.h5")
    p = run(["merge", merged] + list(reversed(shards)))
    check(p.returncode == 0, "merge of 3 shards (given in any order)")
    compare(merged, ref, "merge of 3 shards vs unsharded")
    with h5py.File(merged, "r") as f:
        check(f.attrs["shard"] == "0/1" and int(f.attrs["complete"]) == 1, "merged file is the whole sweep")
    # two of the three: only their trials, and not complete (until session 13 it said so)
    pm = os.path.join(wd, "partial_merge.h5")
    p = run(["merge", pm, shards[0], shards[1]])
    check(p.returncode == 0 and "do not cover the whole sweep" in p.stderr + p.stdout, "a partial merge says so")
    with h5py.File(pm, "r") as f:
        check(str(f.attrs["shard"]).startswith("merged:") and int(f.attrs["complete"]) == 0,
              f"a partial merge is not complete (shard {f.attrs['shard']}, complete {f.attrs['complete']})")
    p = run(["info", pm])
    check("[complete]" not in p.stdout and "of the sweep's" in p.stdout, "info of a partial merge: not complete, "
          "how many of the sweep's trials")

    # refusals
    p = run(["merge", os.path.join(wd, "m2.h5"), shards[0], shards[0]], ok=(2,))
    check(p.returncode == 2 and "overlap" in p.stderr, "merge refuses overlapping shards")
    p = run(["merge", os.path.join(wd, "m3.h5"), shards[1], ref], ok=(2,))
    check(p.returncode == 2 and "overlap" in p.stderr, "merge refuses a shard inside a whole run")
    other = dict(SWEEP, seed=12)
    sweep2 = os.path.join(wd, "other.json")
    with open(sweep2, "w") as f:
        json.dump(other, f)
    o0 = os.path.join(wd, "other0.h5")
    run(["run", sweep2, "-o", o0, "--shard", "0/3"] + common)
    p = run(["merge", os.path.join(wd, "m4.h5"), o0, shards[1]], ok=(2,))
    check(p.returncode == 2 and "sweep" in p.stderr and not os.path.exists(os.path.join(wd, "m4.h5")),
          "merge refuses shards of different sweeps and writes nothing")
    p = run(["merge", merged, shards[0]], ok=(2,))
    check(p.returncode == 2 and "exists" in p.stderr, "merge refuses to overwrite without --force")

    part = os.path.join(wd, "part.h5")
    run(["run", sweep, "-o", part, "--shard", "1/3"] + common)
    p = run(["run", sweep2, "-o", part, "--shard", "1/3", "--resume"] + common, ok=(2,))
    check(p.returncode == 2 and "hash" in p.stderr, "resume with a different sweep file refused")
    # Only the description edited: the same sweep (since session 14), so the resume runs.
    reworded = os.path.join(wd, "reworded.json")
    with open(reworded, "w") as f:
        json.dump(dict(SWEEP, description="the same sweep, described anew"), f)
    p = run(["run", reworded, "-o", part, "--shard", "1/3", "--resume"] + common)
    check(p.returncode == 0, "resume with only the description edited is accepted")
    p = run(["run", sweep, "-o", part, "--shard", "2/3", "--resume"] + common, ok=(2,))
    check(p.returncode == 2 and "shard" in p.stderr, "resume with a different shard refused")
    p = run(["run", sweep, "-o", part, "--shard", "1/3", "--resume", "--precision", "f64"] + common, ok=(2,))
    check(p.returncode == 2 and "precision" in p.stderr, "resume with a different precision refused")
    p = run(["run", sweep, "-o", part, "--shard", "1/3"] + common, ok=(2,))
    check(p.returncode == 2 and "--resume" in p.stderr, "an existing output needs --resume or --force")
    p = run(["run", sweep2, "-o", part, "--shard", "1/3", "--force"] + common)
    check(p.returncode == 0, "--force overwrites")
    with h5py.File(part, "r") as f:
        check(json.loads(f.attrs["sweep_json"])["seed"] == 12, "--force wrote the new sweep")

    # --- bad outputs -----------------------------------------------------------------------
    p = run(["run", sweep, "-o", wd] + common, ok=(2,))
    check(p.returncode == 2 and "directory" in p.stderr, "output that is a directory: exit 2, clear message")
    p = run(["run", sweep, "-o", "/proc/stsweep-test.h5"] + common, ok=(2,))
    check(p.returncode == 2 and "/proc/stsweep-test.h5" in p.stderr and not os.path.exists("/proc/stsweep-test.h5"),
          "unwritable path: exit 2, clear message")
    p = run(["run", sweep, "-o", os.path.join(wd, "no", "such", "dir.h5")] + common, ok=(2,))
    check(p.returncode == 2 and "does not exist" in p.stderr, "missing directory: exit 2")

    ref_size = os.path.getsize(ref)
    for limit, label in [(8 << 10, "at creation"), (ref_size // 2 + 65536, "mid-run")]:
        full = os.path.join(wd, f"full-{limit}.h5")

        def limit_fsize(limit=limit):
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            # SIGXFSZ's default action kills; stsweep ignores it itself (host/main.cpp),
            # so its writes fail with EFBIG, which it reports (before session 12: killed, rc 153).
            signal.signal(signal.SIGXFSZ, signal.SIG_DFL)

        p = subprocess.run([STSWEEP, "run", sweep, "-o", full, "--checkpoint-every", "0"] + common,
                           capture_output=True, text=True, preexec_fn=limit_fsize)
        msg = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
        print(f"  full disk {label}: rc {p.returncode}: {msg}")
        check(p.returncode == 1 and ("File too large" in p.stderr or "No space" in p.stderr),
              f"full disk {label}: exit 1 naming the cause")
        if os.path.exists(full):
            with h5py.File(full, "r") as f:
                st = f["status"][()]
                check(int(f.attrs["complete"]) == 0 and (st == 0).any(),
                      f"full disk {label}: the file left does not look complete")
        else:
            check(True, f"full disk {label}: no file left")
        check(not os.path.exists(full + ".tmp"), f"full disk {label}: no temporary left")

    print(f"{len(FAILURES)} failure(s)")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
