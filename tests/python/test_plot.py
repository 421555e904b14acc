#!/usr/bin/python3
"""tools/plot-risks on a real results file: it draws, and bad input gets a clear
message and exit 2. Run by ctest: test_plot.py --stsweep PATH --workdir DIR."""
import json
import os
import subprocess
import sys

from stsweep_testlib import FAILURES, arguments, check

try:
    import matplotlib  # noqa: F401
    import xarray  # noqa: F401
except ImportError as e:
    print(f"skip: {e} (install python3-matplotlib python3-xarray)")
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLOT = os.path.join(ROOT, "tools", "plot-risks")

SWEEP = {
    "name": "plotcheck", "seed": 4,
    "defaults": {"d": 8, "k": 4, "m": 2, "hidden": [8], "n_train": 6, "steps": 300, "lr": 0.05,
                 "checkpoints": 4, "teacher": {"kind": "perturbed", "delta": 0.5}},
    "grid": {"noise": [0.2, 1.0], "lambda": [0, 1, 10], "teacher.decomposition": ["balanced", "latent"],
             "seed": {"range": [0, 2]}},
}


def main():
    a = arguments()
    sweep = os.path.join(a.workdir, "plot.json")
    with open(sweep, "w") as f:
        json.dump(SWEEP, f)
    res = os.path.join(a.workdir, "plot.h5")
    p = subprocess.run([a.stsweep, "run", sweep, "-o", res, "--progress", "none"], capture_output=True, text=True)
    check(p.returncode == 0, f"the sweep runs ({p.stderr.strip()[-200:]})")

    def plot(*args):
        return subprocess.run([PLOT, *args], capture_output=True, text=True, timeout=120)

    import h5py
    with h5py.File(res, "r") as f:
        status = f["status"][()]
        noise = f["noise"][()]
        dec = f["teacher_decomposition"].asstr()[()]
    n_done = int((status == 1).sum())
    check(0 < n_done <= 24, f"{n_done} of 24 trials done (lambda = 10 may diverge: a result, not a crash)")
    png = os.path.join(a.workdir, "risks.png")
    p = plot(res, "-o", png, "--x", "lambda", "--hue", "noise", "--facet", "teacher_decomposition", "--baseline")
    check(p.returncode == 0 and f"({n_done} trials, 2 panel(s); dashed: baseline_test_risk)" in p.stdout,
          f"plot-risks draws the done trials only ({p.stdout}{p.stderr})")
    # --baseline draws the twin's version of the metric: its best for best_test_risk (until
    # session 14 always its last, baseline_test_risk); refused where the twin has none.
    p = plot(res, "-o", png, "--x", "lambda", "--hue", "noise", "--metric", "best_test_risk", "--baseline")
    check(p.returncode == 0 and "dashed: baseline_best_test_risk)" in p.stdout,
          f"--metric best_test_risk --baseline dashes the twin's best ({p.stdout}{p.stderr})")
    p = plot(res, "-o", png, "--metric", "excess_risk", "--baseline")
    check(p.returncode == 2 and "no lambda = 0 twin's version of excess_risk" in p.stderr
          and "best_test_risk" in p.stderr and "loss_rise" in p.stderr,
          f"--baseline with a metric the twin has none of: exit 2, the ones it has named ({p.stderr.strip()})")
    with open(png, "rb") as f:
        head = f.read(8)
    check(head == b"\x89PNG\r\n\x1a\n" and os.path.getsize(png) > 10_000, "a real PNG image")

    # --paired/--relative: the points drawn (--data) are summary's paired means and CIs,
    # per (lambda, noise); --logy draws. Before session 15 there was no paired mode.
    pts = os.path.join(a.workdir, "gain.csv")
    p = plot(res, "-o", png, "--x", "lambda", "--hue", "noise", "--metric", "best_test_risk",
             "--paired", "baseline_best_test_risk", "--relative", "--data", pts, "--logx")
    s = subprocess.run([a.stsweep, "summary", res, "--by", "lambda,noise", "--metric", "best_test_risk",
                        "--paired", "baseline_best_test_risk", "--relative", "--format", "csv"],
                       capture_output=True, text=True)
    import csv
    want = {(float(r["lambda"]), float(r["noise"])): r for r in csv.DictReader(s.stdout.splitlines())}
    got = list(csv.DictReader(open(pts))) if os.path.exists(pts) else []
    okk = p.returncode == 0 and s.returncode == 0 and len(got) == len(want) > 0
    for r in got:
        w = want.get((float(r["lambda"]), float(r["noise"])))
        okk = okk and w is not None and int(r["n"]) == int(w["count"]) and r["series"] == \
            "best_test_risk / baseline_best_test_risk - 1"
        for k, wk in (("mean", "mean"), ("ci95_low", "ci95_low"), ("ci95_high", "ci95_high")):
            if okk and w[wk] != "nan":
                okk = abs(float(r[k]) - float(w[wk])) <= 1e-5 * max(1e-6, abs(float(w[wk])))
    check(okk, f"--paired --relative --data: the {len(got)} points drawn are summary --paired's means and CIs "
               f"({p.stderr.strip()[-300:]})")
    lam0 = [r for r in got if float(r["lambda"]) == 0]
    check(lam0 and all(abs(float(r["mean"])) < 1e-12 for r in lam0),
          "at lambda = 0 the student is its own twin: the paired gain is 0")
    p = plot(res, "-o", png, "--metric", "test_risk", "--logy")
    check(p.returncode == 0, f"--logy draws ({p.stderr.strip()})")
    for bad, says in ((["--relative"], "--relative needs --paired"),
                      (["--paired", "baseline_test_risk", "--logy"], "a difference has both signs"),
                      (["--paired", "baseline_test_risk", "--baseline"], "not with --baseline"),
                      (["--paired", "teacher_decomposition"], "is text, not a number"),
                      (["--paired", "baseline_test_risk", "--data", os.path.join(a.workdir, "x.txt")], "give a .csv")):
        p = plot(res, "-o", png, *bad)
        check(p.returncode == 2 and says in p.stderr, f"{' '.join(bad)}: exit 2 ({p.stderr.strip()[:160]})")

    # --where COL=-1 on an integer metric: xarray reads its -1 ("no value", the CF
    # missing_value) as NaN, and the filter matches those rows (since session 15).
    mixed = os.path.join(a.workdir, "mixed.json")
    with open(mixed, "w") as f:
        json.dump(dict(SWEEP, name="mixed", grid={"lambda": [0.3, 1], "baseline": [True, False],
                                                   "seed": {"range": [0, 2]}}), f)
    mres = os.path.join(a.workdir, "mixed.h5")
    p = subprocess.run([a.stsweep, "run", mixed, "-o", mres, "--progress", "none"], capture_output=True, text=True)
    with h5py.File(mres, "r") as f:
        no_twin = int(((f["status"][()] == 1) & (f["baseline"][()] == 0)).sum())
    p = plot(mres, "-o", png, "--x", "lambda", "--hue", "seed", "--where", "baseline_best_step=-1")
    check(p.returncode == 0 and no_twin > 0 and f"({no_twin} trials, 1 panel(s))" in p.stdout,
          f"--where baseline_best_step=-1 keeps the {no_twin} rows without a twin ({p.stdout}{p.stderr})")

    # Learning curves of the trials --where keeps: 2 seeds x 3 lambdas at noise 0.2, balanced.
    curves = os.path.join(a.workdir, "curves.png")
    p = plot(res, "-o", curves, "--x", "step", "--hue", "lambda", "--where", "noise=0.2",
             "--where", "teacher_decomposition=balanced", "--baseline")
    n_kept = int(((status == 1) & (noise == 0.2) & (dec == "balanced")).sum())
    check(p.returncode == 0 and f"({n_kept} trials, 1 panel(s); dashed: curve_baseline_test_risk)" in p.stdout,
          f"--x step draws the curves of the {n_kept} trials --where keeps ({p.stdout}{p.stderr})")
    check(os.path.exists(curves) and os.path.getsize(curves) > 10_000, "a real curves image")
    # Dotted parameter names name their columns, as in `stsweep summary` (teacher.decomposition).
    dotted = os.path.join(a.workdir, "dotted.png")
    p = plot(res, "-o", dotted, "--x", "lambda", "--hue", "noise", "--facet", "teacher.decomposition",
             "--where", "teacher.decomposition=balanced", "--where", "teacher.delta=0.5")
    n_bal = int(((status == 1) & (dec == "balanced")).sum())
    check(p.returncode == 0 and f"({n_bal} trials, 1 panel(s))" in p.stdout,
          f"--facet/--where take dotted names (teacher.decomposition) ({p.stdout}{p.stderr})")
    p = plot(res, "-o", curves, "--x", "step", "--metric", "bayes_risk")
    check(p.returncode == 2 and "no curve of bayes_risk" in p.stderr and "test_risk" in p.stderr,
          f"--x step with a metric without a curve: exit 2, the curves named ({p.stderr.strip()})")
    p = plot(res, "-o", curves, "--where", "noise=0.7")
    check(p.returncode == 1 and "no finished trial has noise = 0.7" in p.stderr and "0.2" in p.stderr,
          f"--where matching nothing: exit 1, the values named ({p.stderr.strip()})")
    for bad, says in ((["--where", "noise"], "expected COLUMN=VALUE"), (["--where", "noise=abc"], "number column"),
                      (["--where", "nosie=1"], "no column nosie")):
        p = plot(res, "-o", curves, *bad)
        check(p.returncode == 2 and says in p.stderr, f"{' '.join(bad)}: exit 2 ({p.stderr.strip()[:120]})")

    # Mistakes that gave tracebacks until session 12: exit 2 and a message.
    for bad, says in (([res, "-o", os.path.join(a.workdir, "x.xyz")], ".png, .pdf or .svg"),
                      ([res, "-o", png, "--metric", "curve_test_risk"], "per checkpoint"),
                      ([res, "-o", png, "--hue", "step"], "per checkpoint"),
                      ([res, "-o", png, "--metric", "teacher_kind"], "is text")):
        p = plot(*bad)
        check(p.returncode == 2 and says in p.stderr and "Traceback" not in p.stderr,
              f"{' '.join(bad[2:])}: exit 2 ({p.stderr.strip()[:120]})")
    # The interval is Student's t's, as `stsweep summary`'s (1.96 drew it 6.5x too narrow at n = 2).
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("plot_risks", PLOT)
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader("plot_risks", loader))
    loader.exec_module(mod)
    check(mod.t975(1) == 12.706 and mod.t975(7) == 2.365 and abs(mod.t975(1000) - 1.9623) < 1e-3
          and mod.t975(0) != mod.t975(0), "plot-risks' 95% quantiles are Student's t (none for one trial)")

    p = plot(res, "-o", png, "--x", "lamda")
    check(p.returncode == 2 and "no column lamda" in p.stderr, f"unknown column: exit 2, named ({p.stderr.strip()})")
    p = plot(os.path.join(a.workdir, "missing.h5"), "-o", png)
    check(p.returncode == 2 and "cannot open" in p.stderr, f"missing file: exit 2 ({p.stderr.strip()})")
    p = plot(res, "-o", os.path.join(a.workdir, "no", "such", "dir", "x.png"))
    check(p.returncode == 2 and "cannot write" in p.stderr, f"unwritable output: exit 2 ({p.stderr.strip()})")

    print(f"{len(FAILURES)} failed" if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
