#!/usr/bin/python3
"""Independent replay of exported trials in torch (issue 3), run by ctest:

    test_replay.py --stsweep PATH --workdir DIR

Writes a small sweep (2-layer and 3-layer linear students, a tanh student with a
trained teacher; feature matching on some layers; baseline twins), runs it with
`stsweep run --backend cpu` in f64 and in f32, exports every trial with
`stsweep export`, and re-trains each one here from the exported data and initial
weights with torch float64 autograd, written from MODEL.md alone:

    loss = (1/2N) ||f(Xn) - Y||^2 + (lambda/2N) sum_{l in matched} ||h^l - H_t^l||^2

full-batch GD at rate lr for `steps` steps, for the student and its lambda = 0
twin. Compares the final weights (1e-6 relative against the f64 engine, 1e-4
against f32) and the test risk of the torch weights, R = ||(We - W*) Mhalf||^2 +
sigma^2 ||We||^2 + m sigma_y^2 (Monte Carlo on the exported test set for tanh),
with the results file's test_risk and baseline_test_risk. Also checks the
exported data against MODEL.md (U^T U = I, noise scale, Y = W* X, teacher
layer product = Wt, features, moments). Exit 77 (skip) without torch or h5py.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import time

from stsweep_testlib import arguments, check, finish, note

try:
    import h5py
    import numpy as np
    import torch
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)

torch.set_num_threads(2)
torch.set_default_dtype(torch.float64)

SWEEP = {
    "name": "replay",
    "description": "torch replay of exported trials",
    "seed": 5,
    "defaults": {"d": 8, "k": 4, "m": 3, "n_train": 40, "noise": 0.4, "steps": 300, "lr": 0.05,
                 "init_scale": 0.5, "checkpoints": 6, "n_test": 64,
                 "teacher": {"kind": "perturbed", "delta": 0.3, "decomposition": "balanced"}},
    "subgrids": [
        {"name": "2-layer linear", "defaults": {"hidden": [6]},
         "grid": {"noise": [0.2, 0.4], "lambda": [0, 0.5, 2], "teacher.decomposition": ["balanced", "rotated"]}},
        {"name": "3-layer linear, one or all layers matched, label noise",
         "defaults": {"hidden": [6, 5], "label_noise": 0.1, "n_train": 16, "lambda": 0.7},
         "grid": {"matched_layers": [[1], [2], []]}},
        {"name": "3-layer linear on the moment path", "defaults": {"hidden": [5, 5], "path": "moment", "lambda": 1.5,
                                                                  "matched_layers": [2]},
         "grid": {"seed": [0, 1]}},
        {"name": "tanh student, trained teacher",
         "defaults": {"hidden": [7], "activation": "tanh", "lr": 0.1,
                      "teacher": {"kind": "trained", "decomposition": "as_trained", "n_train": 32, "steps": 200,
                                  "lr": 0.1}},
         "grid": {"lambda": [0, 1]}},
    ],
}
N_TRIALS = 2 * 3 * 2 + 3 + 2 + 2


def run(args, ok=(0,)):
    p = subprocess.run([STSWEEP] + args, capture_output=True, text=True)
    if p.returncode not in ok:
        print(f"command {args} -> {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


def rel(a, b):
    """||a - b|| / ||b|| (0 when both are zero)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float(np.linalg.norm(a))


# --- the trial, from the export ----------------------------------------------------
class Trial:
    def __init__(self, path):
        with h5py.File(path, "r") as f:
            self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            self.p = json.loads(self.attrs["params_json"])
            self.a = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
            self.metrics = {k: f["metrics"][k][()] for k in f["metrics"]}
            self.run_metrics = {k: f["run_metrics"][k][()] for k in f["run_metrics"]}
        p = self.p
        self.L = len(p["hidden"]) + 1
        self.widths = [p["d"]] + list(p["hidden"]) + [p["m"]]
        # MODEL.md: matched layers default to all hidden layers.
        self.matched = sorted(set(p["matched_layers"])) if p["matched_layers"] else list(range(1, self.L))
        self.phi = (lambda x: x) if p["activation"] == "linear" else {"tanh": torch.tanh, "relu": torch.relu}[
            p["activation"]]

    def t(self, name):
        return torch.tensor(self.a[name])

    def layers(self, prefix):
        return [self.t(f"{prefix}{l}") for l in range(1, self.L + 1)]


def forward(W, x, phi):
    """Hidden outputs h^1..h^(L-1) and the output W_L h^(L-1) (samples are columns)."""
    hs, h = [], x
    for Wl in W[:-1]:
        h = phi(Wl @ h)
        hs.append(h)
    return hs, W[-1] @ h


def losses(tr, W, Xn, Y, H):
    N = Xn.shape[1]
    hs, out = forward(W, Xn, tr.phi)
    label = ((out - Y) ** 2).sum() / (2 * N)
    feature = sum(((hs[l - 1] - H[l]) ** 2).sum() for l in tr.matched) / (2 * N)
    return label, feature


def risk(tr, W):
    """Exact risk of a linear student (MODEL.md), Monte Carlo on the test set otherwise."""
    p = tr.p
    sigma, sigma_y, m = p["noise"], p["label_noise"], p["m"]
    if p["activation"] == "linear" and p["target"] == "linear":
        We = W[0]
        for Wl in W[1:]:
            We = Wl @ We
        # Mhalf built here from U and the spectrum, not read from the export.
        Mhalf = tr.t("U") * torch.sqrt(tr.t("spectrum"))[None, :]
        return float(((We - tr.t("Wstar")) @ Mhalf).pow(2).sum() + sigma ** 2 * We.pow(2).sum() + m * sigma_y ** 2)
    _, out = forward(W, tr.t("Xtest"), tr.phi)
    return float((out - tr.t("Ytest")).pow(2).sum() / tr.a["Xtest"].shape[1] + m * sigma_y ** 2)


def train(tr, lam):
    """Full-batch GD from init_W; returns the final weights and the risk at each checkpoint."""
    p = tr.p
    Xn, Y, X = tr.t("Xn"), tr.t("Y"), tr.t("X")
    # Teacher features on the clean inputs, from the teacher's layers (checked against the export).
    Ht, _ = forward(tr.layers("teacher_W"), X, tr.phi)
    H = {l: Ht[l - 1] for l in range(1, tr.L)}
    W = [w.clone().requires_grad_(True) for w in tr.layers("init_W")]
    ck = set(int(s) for s in tr.a["checkpoint_steps"])
    curve = {}
    for step in range(p["steps"] + 1):
        label, feature = losses(tr, W, Xn, Y, H)
        if step in ck:
            curve[step] = (risk(tr, [w.detach() for w in W]), float(label), float(feature))
        if step == p["steps"]:
            break
        loss = label + lam * feature
        grads = torch.autograd.grad(loss, W)
        with torch.no_grad():
            for w, g in zip(W, grads):
                w -= p["lr"] * g
    return [w.detach() for w in W], curve


# --- checks ---------------------------------------------------------------------------
def check_data(tr, tid):
    p, a = tr.p, tr.a
    d, k, m, N = p["d"], p["k"], p["m"], p["n_train"]
    U, X, Xn, Y = a["U"], a["X"], a["Xn"], a["Y"]
    w = tr.widths
    shapes = {"X": (d, N), "Xn": (d, N), "Y": (m, N), "U": (d, k), "spectrum": (k,), "Wstar": (m, d),
              "Mhalf": (d, k), "Wt": (m, d), "Cxx": (d, d), "Cyx": (m, d), "checkpoint_steps": (p["checkpoints"],)}
    shapes.update({f"teacher_W{l}": (w[l], w[l - 1]) for l in range(1, tr.L + 1)})
    shapes.update({f"init_W{l}": (w[l], w[l - 1]) for l in range(1, tr.L + 1)})
    shapes.update({f"student_W{l}": (w[l], w[l - 1]) for l in range(1, tr.L + 1)})
    shapes.update({f"twin_W{l}": (w[l], w[l - 1]) for l in range(1, tr.L + 1)})
    shapes.update({f"feature_{l}": (w[l], N) for l in tr.matched})
    bad = [f"{n} {a[n].shape if n in a else None} != {s}" for n, s in shapes.items()
           if n not in a or a[n].shape != s or a[n].dtype != np.float64 and n != "checkpoint_steps"]
    check(not bad, f"trial {tid}: datasets present, float64, MODEL.md orientation" + (f" ({bad})" if bad else ""))
    check(set(f"feature_{l}" for l in range(1, tr.L)) & set(a) == set(f"feature_{l}" for l in tr.matched),
          f"trial {tid}: features exactly for the matched layers {tr.matched}")
    e = np.abs(U.T @ U - np.eye(k)).max()
    note("U^T U - I", e)
    check(e < 1e-12, f"trial {tid}: U^T U = I ({e:.1e})")
    check(abs(a["spectrum"].sum() - k) < 1e-12 and np.allclose(a["spectrum"], 1.0),
          f"trial {tid}: flat spectrum, sum s = k")
    check(rel(a["Mhalf"], U * np.sqrt(a["spectrum"])[None, :]) < 1e-14, f"trial {tid}: Mhalf = U diag(s)^1/2")
    e = float(np.linalg.norm(X - U @ (U.T @ X)) / np.linalg.norm(X))
    check(e < 1e-12, f"trial {tid}: clean inputs lie in span(U) ({e:.1e})")
    E = (Xn - X) / p["noise"]
    tol = 4 * math.sqrt(2.0 / E.size)  # ~4 standard errors of a sample variance
    check(abs(E.var() - 1) < tol and abs(E.mean()) < 4 / math.sqrt(E.size),
          f"trial {tid}: Xn - X has std sigma = {p['noise']} (measured {math.sqrt((Xn - X).var()):.3f}, "
          f"E var {E.var():.3f} +- {tol:.2f})")
    if p["label_noise"] == 0:
        e = rel(Y, a["Wstar"] @ X)
        note("Y - W* X", e)
        check(e < 1e-12, f"trial {tid}: Y = W* X without label noise ({e:.1e})")
    else:
        r = Y - a["Wstar"] @ X
        sy = p["label_noise"]
        check(abs(r.std() / sy - 1) < 4 * math.sqrt(0.5 / r.size) + 0.05,
              f"trial {tid}: Y - W* X has std sigma_y = {sy} (measured {r.std():.4f})")
    prod = a["teacher_W1"]
    for l in range(2, tr.L + 1):
        prod = a[f"teacher_W{l}"] @ prod
    e = rel(prod, a["Wt"])
    note("teacher product - Wt", e)
    check(e < 1e-10, f"trial {tid}: teacher layer product W_L..W_1 = Wt ({e:.1e})")
    if p["teacher"]["kind"] == "perturbed":
        # relative clean error delta (MODEL.md)
        dl = np.linalg.norm((a["Wt"] - a["Wstar"]) @ U) / np.linalg.norm(a["Wstar"] @ U)
        check(abs(dl - p["teacher"]["delta"]) < 1e-10, f"trial {tid}: perturbed teacher error = delta ({dl:.6f})")
    Ht, _ = forward(tr.layers("teacher_W"), tr.t("X"), tr.phi)
    e = max(rel(a[f"feature_{l}"], Ht[l - 1].numpy()) for l in tr.matched)
    note("feature_l - phi(teacher on X)", e)
    check(e < 1e-12, f"trial {tid}: feature_l = teacher's layer-l output on clean X ({e:.1e})")
    e = max(rel(a["Cxx"], Xn @ Xn.T / N), rel(a["Cyx"], Y @ Xn.T / N),
            *(rel(a[f"Chx_{l}"], a[f"feature_{l}"] @ Xn.T / N) for l in tr.matched))
    check(e < 1e-12, f"trial {tid}: moments Cxx, Cyx, Chx_l ({e:.1e})")
    st = [int(s) for s in a["checkpoint_steps"]]
    check(st[0] == 0 and st[-1] == p["steps"] and all(x < y for x, y in zip(st, st[1:])),
          f"trial {tid}: checkpoint steps 0 .. T increasing")
    # Initial weights N(0, alpha^2 / fan_in): pooled over layers.
    z = np.concatenate([(a[f"init_W{l}"] * math.sqrt(w[l - 1]) / p["init_scale"]).ravel() for l in range(1, tr.L + 1)])
    check(abs(z.var() - 1) < 4 * math.sqrt(2.0 / z.size), f"trial {tid}: init_W ~ N(0, alpha^2/fan_in) "
                                                           f"(normalised var {z.var():.3f}, n = {z.size})")


def replay(tr, tid, tol, tag, risks):
    """Trains the student and the twin in torch; compares with the export and the results file."""
    p = tr.p
    check(tr.attrs["trial"] == tid, f"{tag} trial {tid}: export names its trial")
    # Not vacuous: training moves the weights well beyond the tolerance, and the
    # feature term moves the student away from its twin.
    moved = min(rel(tr.a[f"student_W{l}"], tr.a[f"init_W{l}"]) for l in range(1, tr.L + 1))
    check(moved > 0.05, f"{tag} trial {tid}: every layer moved from init_W ({moved:.2f})")
    if p["lambda"] > 0:
        apart = max(rel(tr.a[f"student_W{l}"], tr.a[f"twin_W{l}"]) for l in range(1, tr.L + 1))
        check(apart > 1e-2, f"{tag} trial {tid}: lambda = {p['lambda']} moves the student off its twin ({apart:.2f})")
    for who, lam, prefix, key in (("student", p["lambda"], "student_W", "test_risk"),
                                  ("twin", 0.0, "twin_W", "baseline_test_risk")):
        W, curve = train(tr, lam)
        e = max(rel(tr.a[f"{prefix}{l}"], W[l - 1].numpy()) for l in range(1, tr.L + 1))
        note(f"{tag} weights", e)
        check(e < tol, f"{tag} trial {tid}: {who} final weights vs torch float64 ({e:.2e} < {tol:g})")
        # The export's risks are the run's, bit for bit (not to a tolerance): the same
        # trainer and the one linear_risk (metrics_reproduced says so for every column).
        same = np.float64(risks[key]).tobytes() == np.float64(tr.run_metrics[key]).tobytes() \
            == np.float64(tr.metrics[key]).tobytes()
        check(same, f"{tag} trial {tid}: {who} {key} equal bit for bit in the results file, run_metrics "
                    f"and the export's metrics ({risks[key]!r}, {tr.run_metrics[key]!r}, {tr.metrics[key]!r})")
        R = risk(tr, W)
        for src, val in (("results file", risks[key]), ("export run_metrics", tr.run_metrics[key]),
                         ("export metrics", tr.metrics[key])):
            e = abs(val - R) / abs(R)
            note(f"{tag} risk", e)
            check(e < tol, f"{tag} trial {tid}: {who} {key} ({src}) {val:.10g} vs torch {R:.10g} ({e:.1e})")
        # Learning curves at the checkpoints (the student's and the twin's).
        cname = "curve_test_risk" if who == "student" else "curve_baseline_test_risk"
        lname = "curve_label_loss" if who == "student" else "curve_baseline_label_loss"
        steps = [int(s) for s in tr.a["checkpoint_steps"]]
        got_r = tr.metrics[cname][: len(steps)]
        got_l = tr.metrics[lname][: len(steps)]
        e = max(max(abs(g - curve[s][0]) / abs(curve[s][0]), abs(gl - curve[s][1]) / abs(curve[s][1]))
                for s, g, gl in zip(steps, got_r, got_l))
        note(f"{tag} curves", e)
        check(e < tol, f"{tag} trial {tid}: {who} risk and label-loss curves at the checkpoints ({e:.1e})")
        if who == "student":
            lab, feat = curve[steps[-1]][1], curve[steps[-1]][2]
            e = max(abs(tr.metrics["label_loss"] - lab) / lab, abs(tr.metrics["feature_loss"] - feat) / feat)
            check(e < tol, f"{tag} trial {tid}: final label and feature losses ({e:.1e})")


def results_row(path, tid):
    with h5py.File(path, "r") as f:
        ids = list(f["trial"][:])
        r = ids.index(tid)
        return {k: f[k][r] for k in ("test_risk", "baseline_test_risk", "status")}


def main():
    global STSWEEP
    a = arguments()
    STSWEEP = a.stsweep
    wd = a.workdir
    sweep = os.path.join(wd, "sweep.json")
    with open(sweep, "w") as f:
        json.dump(SWEEP, f, indent=1)
    common = ["--backend", "cpu", "--progress", "none", "--threads", "2"]
    t0 = time.time()
    out = {}
    for prec in ("f64", "f32"):
        out[prec] = os.path.join(wd, f"run_{prec}.h5")
        p = run(["run", sweep, "-o", out[prec], "--precision", prec] + common)
        check(p.returncode == 0, f"run --precision {prec} exits 0")
        if p.returncode != 0:
            return 1
    with h5py.File(out["f64"], "r") as f:
        check(len(f["trial"]) == N_TRIALS and bool((f["status"][:] == 1).all()), f"{N_TRIALS} trials, all done")

    # --- f64: every trial, data invariants and the replay at 1e-6 --------------------------
    noise_pair = {}
    def exported(prec, tid):
        """`stsweep export` of one trial of the `prec` run, or None when it failed."""
        path = os.path.join(wd, f"t{tid}_{prec}.h5")
        p = run(["export", out[prec], "--trial", str(tid), "-o", path])
        check(p.returncode == 0 and "warning" not in p.stderr, f"export trial {tid} ({prec}) exits 0, no warning")
        return Trial(path) if p.returncode == 0 else None

    for tid in range(N_TRIALS):
        tr = exported("f64", tid)
        if tr is None:
            continue
        check(tr.attrs["precision"] == "f64", f"trial {tid}: export ran in the file's precision (f64)")
        check(tr.attrs["metrics_reproduced"] == 1, f"trial {tid}: export reproduces the run's metrics bit for bit")
        check_data(tr, tid)
        replay(tr, tid, 1e-6, "f64", results_row(out["f64"], tid))
        if tr.p["hidden"] == [6] and tr.p["lambda"] == 0 and tr.p["teacher"]["decomposition"] == "balanced":
            noise_pair[tr.p["noise"]] = tr
    # Trials that differ only in noise share X and the noise draws E (MODEL_NOTES.md).
    if len(noise_pair) == 2:
        (s1, t1), (s2, t2) = sorted(noise_pair.items())
        check(np.array_equal(t1.a["X"], t2.a["X"]) and np.array_equal(t1.a["init_W1"], t2.a["init_W1"]),
              "noise 0.2 and 0.4: same X and initial weights")
        e = rel((t1.a["Xn"] - t1.a["X"]) / s1, (t2.a["Xn"] - t2.a["X"]) / s2)
        check(e < 1e-13, f"noise 0.2 and 0.4: the same draws E scaled by sigma ({e:.1e})")
    else:
        check(False, "found the pair of trials that differ only in noise")

    # --- f32: the engine in float32 against torch float64 at 1e-4 ---------------------------
    for tid in range(N_TRIALS):
        tr = exported("f32", tid)
        if tr is None:
            continue
        check(tr.attrs["precision"] == "f32" and tr.attrs["metrics_reproduced"] == 1,
              f"trial {tid}: f32 export reproduces the f32 run bit for bit")
        replay(tr, tid, 1e-4, "f32", results_row(out["f32"], tid))

    # --- --precision overrides the file's; a different precision is reported -------------------
    path = os.path.join(wd, "t0_f32_as_f64.h5")
    p = run(["export", out["f32"], "--trial", "0", "-o", path, "--precision", "f64"])
    check(p.returncode == 0 and "warning" in p.stderr and "not reproducible" in p.stderr,
          "export of an f32 run with --precision f64 warns that the metrics differ")
    if p.returncode == 0:
        a64, b64 = Trial(path), Trial(os.path.join(wd, "t0_f64.h5"))
        check(a64.attrs["metrics_reproduced"] == 0, "... and records metrics_reproduced = 0")
        same = all(np.array_equal(a64.a[k], b64.a[k]) for k in b64.a)
        check(same, "... and its arrays equal the f64 run's export bit for bit")

    # --- an existing output needs --force; the temporary file is the export's own --------------
    # (until session 12 export overwrote any file, and wrote through OUT.tmp, which could be the input)
    before = open(path, "rb").read()
    p = run(["export", out["f64"], "--trial", "1", "-o", path])
    check(p.returncode == 2 and "--force" in p.stderr and open(path, "rb").read() == before,
          "export onto an existing file: exit 2, the file untouched")
    p = run(["export", out["f64"], "--trial", "1", "-o", path, "--force"])
    check(p.returncode == 0 and Trial(path).attrs["trial"] == 1, "... and with --force it is replaced")
    shutil.copy(out["f64"], os.path.join(wd, "x.h5.tmp"))
    p = run(["export", os.path.join(wd, "x.h5.tmp"), "--trial", "0", "-o", os.path.join(wd, "x.h5")])
    check(p.returncode == 0 and os.path.exists(os.path.join(wd, "x.h5.tmp")),
          "an input named OUT.tmp is left alone (the export writes OUT.tmp.<pid>)")

    return finish(f"elapsed {time.time() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
