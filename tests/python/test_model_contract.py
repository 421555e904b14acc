#!/usr/bin/python3
"""Exported trials against the mathematical contract, in numpy (run by ctest):

    test_model_contract.py --stsweep PATH --workdir DIR

A reviewer's independent checker (session 13) made permanent. Every expected
value below is written from ../shared/MODEL.md and docs/MODEL_NOTES.md alone,
not from the C++ code. The test writes five small sweeps, runs each with
`stsweep run --backend cpu --precision f64 --threads 2`, exports every trial
with `stsweep export` and checks, per trial:

- data: the spectrum's closed form (flat, power, geometric; sum k), U^T U = I,
  W* = A U^T (W* U U^T = W*);
- closed forms: bayes_risk = R(W* Sigma_x (Sigma_x + sigma^2 I)^-1) (NaN for the
  nonlinear target), interp_risk = R(Y Xn^+) (N < d, N > d, sigma = 0; Monte
  Carlo for the nonlinear target), teacher_clean_risk (linear teachers of the
  linear target), the perturbed teacher's relative error delta and its perturbation G U^T, oracle W_t = W*;
- the teacher's decomposition at L = 2, 3, 4: balanced, rotated, scaled, power
  (metrics W1^T W1 and W_L W_L^T, middle singular values, zero padding), latent,
  input, output (the exact layers), trained teachers (as_trained, balanced,
  latent), and the layer product;
- teacher features on the clean inputs X, for the matched layers;
- the final label, feature and train losses from the final weights;
- test_risk and baseline_test_risk: exact R for linear problems; for nonlinear
  ones the Monte Carlo mean ||f(Xtest) - Ytest||^2 + m sigma_y^2 (the review
  found the m sigma_y^2 term missing), with label noise 0.1 on a tanh student and
  on a linear student of the nonlinear target; excess_risk = test_risk -
  bayes_risk exactly (>= 0 only in expectation for a Monte Carlo risk; NaN
  with bayes_risk NaN);
- a numpy full-batch GD replay of the student and its lambda = 0 twin (linear,
  relu, tanh; matched layers [1], [2], all; data and moment paths; steps 0, 1,
  2, 7 and N = 1): final weights and every checkpoint of the risk, label-loss
  and feature-loss curves;
- zero_loss (final train loss <= 1e-6 of step 0's; one trial reaches it) and
  best_test_risk / best_step;

and across trials: two trials that differ only in n_test have the same X, Xn, Y
and initial weights (the review found n_test in the data key), and the smaller
Monte Carlo test set is the first columns of the larger.
Exit 77 (skip) without numpy or h5py.
"""
import json
import os
import subprocess
import sys
import time

from stsweep_testlib import arguments, check, finish, note

try:
    import h5py
    import numpy as np
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)

# --- tolerances: one per quantity -------------------------------------------------------------
# Relative, except the two "times ..." floors. The engine runs in float64 here; the deviations
# measured over these trials (printed at the end as "largest deviations") are 1e-14 or less, the
# bounds leave room for another compiler, libm or BLAS and are still far below what a wrong formula
# changes (dropping m sigma_y^2 moves the label-noise risks by 8 to 10%).
TOL_SPECTRUM = 1e-14    # a closed form of a few roundings
TOL_ORTHO = 1e-12       # Householder QR of a d x k Gaussian: U^T U - I, W* U U^T - W*, G U^T
TOL_BAYES = 1e-10       # Cholesky solve vs numpy's inverse of Sigma_x + sigma^2 I (condition ~ s_1/sigma^2)
TOL_INTERP = 1e-8       # QR (or Jacobi SVD) pseudo-inverse vs numpy's SVD; Xn can be ill-conditioned
TOL_ZERO_RISK = 1e-12   # times R(0), absolute: with sigma = 0 (and sigma_y = 0), W_B = W* and, for N > d,
                        # Y Xn^+ = W*, so bayes_risk and interp_risk are 0 in exact arithmetic (~1e-30 here)
TOL_RISK = 1e-12        # the same closed form R (or Monte Carlo mean) of the same weights, another sum order
TOL_DELTA_ABS = 1e-10   # the perturbed teacher's relative clean error against the sweep's delta
TOL_METRIC = 1e-9       # decomposition metrics: powers S^(2/L) of small singular values amplify round-off
TOL_EXACT_LAYER = 1e-13  # latent/input/output layers are copies of U^T, I, W_t, W_t U
TOL_PRODUCT = 1e-10     # W_L ... W_1 against W_t (SVD factors multiplied back)
TOL_FEATURE = 1e-12     # teacher features: one forward pass (phi from libm on both sides)
TOL_LOSS = 1e-10        # final losses from the final weights: one forward pass, summed in another order
TOL_REPLAY = 1e-9       # numpy GD vs the engine: up to 3000 steps of the same arithmetic in another order
TOL_ZERO_LOSS = 1e-14   # times the value at step 0, absolute: a loss trained to zero is round-off
                        # (a twin's label loss ends at ~3e-30, known to no relative precision)

SWEEPS = {
    # Decompositions at L = 2, 3, 4, trained teachers, N > d with sigma = 0, a bottleneck m > h,
    # and a trial trained to zero loss (the output decomposition of an oracle, N < d).
    "decompositions": {
        "name": "decompositions", "seed": 3,
        "defaults": {"d": 8, "k": 4, "m": 3, "hidden": [6], "noise": 0.3, "lambda": 0.7, "n_train": 10,
                     "steps": 200, "lr": 0.05, "init_scale": 0.3, "checkpoints": 5,
                     "teacher": {"kind": "perturbed", "delta": 0.4, "decomposition": "balanced"}},
        "subgrids": [
            {"name": "L=2, power spectrum, label noise",
             "grid": {"teacher.decomposition": ["balanced", "rotated", "scaled", "power", "latent", "input",
                                                "output"]},
             "defaults": {"hidden": [8], "teacher": {"scale": 2.5, "power": 0.8}, "spectrum": "power",
                          "spectrum_p": 1.5, "label_noise": 0.2}},
            {"name": "L=3, geometric spectrum",
             "grid": {"teacher.decomposition": ["balanced", "rotated", "scaled", "power", "latent", "input",
                                                "output"]},
             "defaults": {"hidden": [8, 9], "teacher": {"scale": 2.5, "power": 0.8}, "spectrum": "geometric",
                          "spectrum_kappa": 5}},
            {"name": "L=4", "grid": {"teacher.decomposition": ["balanced", "power", "rotated"]},
             "defaults": {"hidden": [5, 6, 7], "teacher": {"power": 0.1}}},
            {"name": "trained teacher, L=3", "grid": {"teacher.decomposition": ["as_trained", "balanced", "latent"]},
             "defaults": {"hidden": [6, 5], "teacher": {"kind": "trained", "n_train": 30, "steps": 300, "lr": 0.1}}},
            {"name": "N > d, sigma 0", "grid": {"n_train": [20], "noise": [0, 0.5]}},
            {"name": "bottleneck m > h", "defaults": {"m": 6, "k": 2, "hidden": [3]},
             "grid": {"teacher.kind": ["oracle", "perturbed"]}},
            {"name": "zero training loss",
             "defaults": {"hidden": [8], "noise": 0.5, "lambda": 0.5, "n_train": 4, "steps": 3000, "lr": 0.1,
                          "init_scale": 0.1, "checkpoints": 6, "seed": 4,
                          "teacher": {"kind": "oracle", "decomposition": "output"}},
             "grid": {"lambda": [0.5]}},
        ]},
    # Edges: steps 0, 1, 2, 7 with more checkpoints than steps, N = 1, k = d, m > d, one matched
    # layer, on the data and the moment path.
    "edges": {
        "name": "edges", "seed": 8,
        "defaults": {"d": 6, "k": 6, "m": 9, "hidden": [9, 7], "noise": 0.2, "lambda": 0.5, "n_train": 1,
                     "steps": 0, "lr": 0.05, "init_scale": 0.3, "checkpoints": 40, "matched_layers": [2],
                     "teacher": {"kind": "perturbed", "delta": 0.2, "decomposition": "balanced"}},
        "grid": {"steps": [0, 1, 2, 7], "path": ["data", "moment"]}},
    # Nonlinear students at L = 3: relu, tanh (Monte Carlo risks) and linear; matched [1], [2], all.
    "nonlinear": {
        "name": "nonlinear", "seed": 9,
        "defaults": {"d": 8, "k": 4, "m": 3, "hidden": [7, 6], "noise": 0.3, "lambda": 0.8, "n_train": 10,
                     "steps": 150, "lr": 0.05, "init_scale": 0.5, "checkpoints": 5, "n_test": 300,
                     "teacher": {"kind": "perturbed", "delta": 0.3, "decomposition": "balanced"}},
        "grid": {"activation": ["relu", "tanh", "linear"], "matched_layers": [[1], [2], []], "path": ["data"]}},
    # Label noise on Monte Carlo risks: a tanh student (bayes_risk finite) and a linear student
    # of the nonlinear target (trained teacher; bayes_risk NaN).
    "label_noise": {
        "name": "label_noise", "seed": 6,
        "defaults": {"d": 8, "k": 4, "m": 3, "hidden": [8], "noise": 0.3, "lambda": 0.5, "n_train": 12,
                     "steps": 300, "lr": 0.05, "init_scale": 0.3, "checkpoints": 5, "n_test": 500,
                     "label_noise": 0.1, "teacher": {"kind": "oracle", "decomposition": "balanced"}},
        "subgrids": [
            {"name": "tanh student, linear target", "defaults": {"activation": "tanh"}, "grid": {"lambda": [0.5]}},
            {"name": "linear student, nonlinear target",
             "defaults": {"target": "nonlinear",
                          "teacher": {"kind": "trained", "decomposition": "as_trained", "n_train": 40,
                                      "steps": 200, "lr": 0.1}},
             "grid": {"lambda": [0.5]}},
        ]},
    # Trials that differ only in n_test (linear: no test set; tanh: Monte Carlo).
    "n_test": {
        "name": "n_test", "seed": 10,
        "defaults": {"d": 8, "k": 4, "m": 3, "hidden": [8], "noise": 0.3, "lambda": 0.5, "n_train": 12,
                     "steps": 100, "checkpoints": 3, "teacher": {"kind": "oracle"}},
        "grid": {"activation": ["linear", "tanh"], "n_test": [500, 1000]}},
}
RISES = []  # every replayed loss_rise (not vacuous: one rises)
N_TRIALS = {"decompositions": 25, "edges": 8, "nonlinear": 9, "label_noise": 2, "n_test": 4}


def note_risk(name, err, value, scale):
    """Relative error of a risk, or (for a risk that is 0 in exact arithmetic) error / R(0)."""
    if value > 1e-6 * scale:
        note(name, err / value)
    else:
        note(f"{name} at 0, / R(0)", err / scale)


def near(name, got, want, start, tol):
    """|got - want| <= tol |want| + TOL_ZERO_LOSS |start| everywhere (start: the value at step 0).
    Records the largest relative error where want is above round-off, else the error / start."""
    got, want = np.atleast_1d(np.asarray(got, dtype=np.float64)), np.atleast_1d(np.asarray(want, dtype=np.float64))
    err, start = np.abs(got - want), abs(float(start))
    big = np.abs(want) > 1e-6 * start
    if big.any():
        note(name, (err[big] / np.abs(want[big])).max())
    if not big.all():
        note(f"{name} at 0, / step 0", err[~big].max() / start)
    return bool(np.all(err <= tol * np.abs(want) + TOL_ZERO_LOSS * start))


def rel(a, b):
    """||a - b|| / ||b|| (||a|| when b is zero)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float(np.linalg.norm(a))


def run(args):
    p = subprocess.run([STSWEEP] + args, capture_output=True, text=True)
    if p.returncode != 0:
        print(f"command {args} -> {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}")
    return p


PHI = {"linear": lambda x: x, "tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0)}


def product(Ws):
    """W_L ... W_1."""
    P = Ws[0]
    for W in Ws[1:]:
        P = W @ P
    return P


def forward(Ws, X, phi):
    """[h^0 = X, h^1, ..., h^(L-1), output]: hidden layers through phi, the output layer linear."""
    hs = [X]
    for l, W in enumerate(Ws, 1):
        z = W @ hs[-1]
        hs.append(z if l == len(Ws) else phi(z))
    return hs


class Trial:
    def __init__(self, path, tag):
        self.tag = tag
        with h5py.File(path, "r") as f:
            self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            self.a = {k: f[k][()] for k in f if isinstance(f[k], h5py.Dataset)}
            self.metrics = {k: f["metrics"][k][()] for k in f["metrics"]}
        p = self.p = json.loads(self.attrs["params_json"])
        self.L = len(p["hidden"]) + 1
        self.widths = [p["d"]] + list(p["hidden"]) + [p["m"]]
        # MODEL.md: the matched layers default to all hidden layers.
        self.matched = sorted(set(p["matched_layers"])) or list(range(1, self.L))
        self.phi = PHI[p["activation"]]
        self.linear_target = p["target"] == "linear"
        # Exact risks only for a linear network of a linear target; Monte Carlo otherwise.
        self.exact = p["activation"] == "linear" and self.linear_target
        self.ck = [int(s) for s in self.a["checkpoint_steps"]]
        # Teacher features H_t^l on the clean inputs, from the teacher's layers (checked against
        # the exported feature_l).
        self.H = forward(self.layers("teacher_W"), self.a["X"], self.phi)

    def layers(self, prefix):
        return [self.a[f"{prefix}{l}"] for l in range(1, self.L + 1)]

    def R(self, We):
        """MODEL.md: ||(We - W*) U diag(s)^1/2||^2 + sigma^2 ||We||^2 + m sigma_y^2 (linear target)."""
        p, a = self.p, self.a
        Mh = a["U"] * np.sqrt(a["spectrum"])[None, :]
        return float((((We - a["Wstar"]) @ Mh) ** 2).sum() + p["noise"] ** 2 * (We ** 2).sum()
                     + p["m"] * p["label_noise"] ** 2)

    def mc_risk(self, Ws, phi):
        """MODEL_NOTES.md: mean over the test set of ||f(Xtest) - Ytest||^2 + m sigma_y^2."""
        out = forward(Ws, self.a["Xtest"], phi)[-1]
        mean = ((out - self.a["Ytest"]) ** 2).sum() / out.shape[1]
        return float(mean + self.p["m"] * self.p["label_noise"] ** 2)

    def risk(self, Ws):
        return self.R(product(Ws)) if self.exact else self.mc_risk(Ws, self.phi)

    def linear_map_risk(self, We):
        return self.R(We) if self.linear_target else self.mc_risk([We], PHI["linear"])

    def losses(self, Ws):
        """(1/2N) ||f(Xn) - Y||^2 and (1/2N) sum_{l in M} ||h^l - H_t^l||^2."""
        N = self.p["n_train"]
        hs = forward(Ws, self.a["Xn"], self.phi)
        label = float(((hs[-1] - self.a["Y"]) ** 2).sum() / (2 * N))
        feature = float(sum(((hs[l] - self.H[l]) ** 2).sum() for l in self.matched) / (2 * N))
        return label, feature

    def gd(self, lam):
        """Full-batch GD from init_W by hand-written backprop; the final weights and
        (risk, label loss, feature loss) at each checkpoint."""
        p, N, L = self.p, self.p["n_train"], self.L
        W = [w.copy() for w in self.layers("init_W")]
        curve = {}
        self.step_losses = []  # the full training loss at every step (loss_rise)
        for step in range(p["steps"] + 1):
            if step in self.ck:
                curve[step] = (self.risk(W),) + self.losses(W)
            hs = forward(W, self.a["Xn"], self.phi)
            self.step_losses.append(float(((hs[-1] - self.a["Y"]) ** 2).sum() / (2 * N) + lam * sum(
                ((hs[l] - self.H[l]) ** 2).sum() for l in self.matched) / (2 * N)))
            if step == p["steps"]:
                break
            D = (hs[-1] - self.a["Y"]) / N  # d loss / d (W_l h^(l-1)), from l = L down
            G = [None] * L
            for l in range(L, 0, -1):
                G[l - 1] = D @ hs[l - 1].T
                if l > 1:
                    D = W[l - 1].T @ D  # d loss / d h^(l-1): the label part, then the feature part
                    if l - 1 in self.matched:
                        D = D + lam / N * (hs[l - 1] - self.H[l - 1])
                    if p["activation"] == "tanh":
                        D = D * (1 - hs[l - 1] ** 2)
                    elif p["activation"] == "relu":
                        D = D * (hs[l - 1] > 0)
            W = [w - p["lr"] * g for w, g in zip(W, G)]
        return W, curve


# --- per-trial checks ------------------------------------------------------------------------
def check_data(t):
    p, a, tag = t.p, t.a, t.tag
    k = p["k"]
    j = np.arange(1, k + 1, dtype=np.float64)
    s = {"flat": np.ones(k), "power": j ** -p["spectrum_p"],
         "geometric": p["spectrum_kappa"] ** (-(j - 1) / max(k - 1, 1))}[p["spectrum"]]
    s = s * k / s.sum()
    e = rel(a["spectrum"], s)
    note("spectrum", e)
    check(e < TOL_SPECTRUM, f"{tag}: {p['spectrum']} spectrum, sum k ({e:.1e})")
    U = a["U"]
    e = float(np.abs(U.T @ U - np.eye(k)).max())
    note("U^T U - I", e)
    check(e < TOL_ORTHO, f"{tag}: U^T U = I ({e:.1e})")
    if t.linear_target:
        e = rel(a["Wstar"] @ U @ U.T, a["Wstar"])
        note("W* U U^T - W*", e)
        check(e < TOL_ORTHO, f"{tag}: W* = A U^T ({e:.1e})")


def check_closed_forms(t):
    p, a, met, tag = t.p, t.a, t.metrics, t.tag
    U, s, sigma, d = a["U"], a["spectrum"], p["noise"], p["d"]
    scale = t.linear_map_risk(np.zeros_like(a["Wt"]))  # R(0), the risk of predicting 0
    if t.linear_target:
        Sx = (U * s) @ U.T
        WB = a["Wstar"] @ Sx @ np.linalg.inv(Sx + sigma ** 2 * np.eye(d)) if sigma > 0 else a["Wstar"]
        rb = t.R(WB)
        e = abs(met["bayes_risk"] - rb)
        note_risk("bayes_risk", e, rb, scale)
        check(e <= TOL_BAYES * rb + TOL_ZERO_RISK * scale,
              f"{tag}: bayes_risk {met['bayes_risk']:.10g} = R(W_B) {rb:.10g} (sigma = {sigma})")
    else:
        check(np.isnan(met["bayes_risk"]), f"{tag}: bayes_risk NaN for the nonlinear target")
    ri = t.linear_map_risk(a["Y"] @ np.linalg.pinv(a["Xn"]))
    e = abs(met["interp_risk"] - ri)
    note_risk("interp_risk", e, ri, scale)
    check(e <= TOL_INTERP * ri + TOL_ZERO_RISK * scale,
          f"{tag}: interp_risk {met['interp_risk']:.10g} = R(Y Xn^+) {ri:.10g} (N = {p['n_train']}, d = {d}, "
          f"sigma = {sigma})")
    teacher = p["teacher"]
    Wt, Ws = a["Wt"], a["Wstar"]
    if p["activation"] == "linear" and t.linear_target:
        tc = float((((Wt - Ws) @ U * np.sqrt(s)) ** 2).sum())
        e = abs(met["teacher_clean_risk"] - tc) / tc if tc > 0 else abs(met["teacher_clean_risk"])
        note("teacher_clean_risk", e)
        check(e < TOL_RISK, f"{tag}: teacher_clean_risk {met['teacher_clean_risk']:.10g} = {tc:.10g} ({e:.1e})")
    if teacher["kind"] == "perturbed":
        delta = np.linalg.norm((Wt - Ws) @ U) / np.linalg.norm(Ws @ U)
        check(abs(delta - teacher["delta"]) < TOL_DELTA_ABS, f"{tag}: perturbed teacher's relative error "
                                                             f"{delta:.12f} = delta {teacher['delta']}")
        e = rel((Wt - Ws) @ U @ U.T, Wt - Ws)
        check(e < TOL_ORTHO, f"{tag}: perturbation = G U^T ({e:.1e})")
    if teacher["kind"] == "oracle":
        check(np.array_equal(Wt, Ws), f"{tag}: oracle W_t = W*")


def check_decomposition(t):
    p, a, tag, L, w = t.p, t.a, t.tag, t.L, t.widths
    teacher = p["teacher"]
    dec, Wt, U = teacher["decomposition"], a["Wt"], a["U"]
    TW = t.layers("teacher_W")
    # MODEL_NOTES.md: a trained teacher re-factorised as latent computes W_t U U^T.
    target = Wt @ U @ U.T if dec == "latent" and teacher["kind"] == "trained" else Wt
    e = rel(product(TW), target)
    note("teacher product", e)
    check(e < TOL_PRODUCT, f"{tag}: teacher W_L..W_1 = W_t ({dec}, {e:.1e})")
    P, S, QT = np.linalg.svd(Wt)
    r = int((S > max(p["m"], p["d"]) * np.finfo(np.float64).eps * S[0]).sum())
    P, S, Q = P[:, :r], S[:r], QT[:r].T

    def padded_diag(Wl, v):  # Wl against [[diag(v), 0], [0, 0]]
        E = np.zeros_like(Wl)
        E[:len(v), :len(v)] = np.diag(v)
        return rel(Wl, E)

    if dec in ("balanced", "rotated", "scaled", "power"):
        e1 = eL = 1 / L
        if dec == "power":
            e1, eL = teacher["power"], (1 - teacher["power"]) / (L - 1)
        c = teacher["scale"] if dec == "scaled" else 1.0
        errs = {"W1^T W1": rel(TW[0].T @ TW[0], c ** 2 * (Q * S ** (2 * e1)) @ Q.T),
                "W_L W_L^T": rel(TW[-1] @ TW[-1].T, (P * S ** (2 * eL)) @ P.T / c ** 2)}
        for l in range(1, L - 1):
            errs[f"singular values of W{l + 1}"] = rel(np.linalg.svd(TW[l], compute_uv=False)[:r], S ** eL)
        e = max(errs.values())
        note("decomposition metrics", e)
        check(e < TOL_METRIC, f"{tag}: {dec} at L = {L}: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
        if dec == "rotated":
            if r < w[1]:  # the rotation mixes the padding rows in: dense features
                check(np.abs(TW[0][r:]).max() > 1e-3, f"{tag}: rotated W1 is dense")
        else:
            e = max([padded_diag(TW[l], S ** eL) for l in range(1, L - 1)] + [0.0])
            check(e < TOL_EXACT_LAYER and not TW[0][r:].any() and not TW[-1][:, r:].any(),
                  f"{tag}: {dec} layers embedded top-left, middle diag(S^e) ({e:.1e})")
    elif dec in ("latent", "input", "output"):
        C = {"latent": U.T, "input": np.eye(p["d"]), "output": Wt}[dec]
        B = {"latent": Wt @ U, "input": Wt, "output": np.eye(p["m"])}[dec]
        q = C.shape[0]
        E1 = np.zeros((w[1], p["d"]))
        E1[:q] = C
        EL = np.zeros((p["m"], w[L - 1]))
        EL[:, :q] = B
        e = max([rel(TW[0], E1), rel(TW[-1], EL)] + [padded_diag(TW[l], np.ones(q)) for l in range(1, L - 1)])
        note("fixed-feature layers", e)
        check(e < TOL_EXACT_LAYER, f"{tag}: {dec} at L = {L}: W1 = [C; 0], W_L = [B, 0], middle I_q ({e:.1e})")
    else:
        check(dec == "as_trained" and teacher["kind"] == "trained", f"{tag}: decomposition {dec} known")


def check_features(t):
    e = max(rel(t.a[f"feature_{l}"], t.H[l]) for l in t.matched)
    note("features", e)
    check(e < TOL_FEATURE and sorted(int(k[8:]) for k in t.a if k.startswith("feature_")) == t.matched,
          f"{t.tag}: feature_l = layer l of the teacher on clean X, matched layers {t.matched} ({e:.1e})")


def check_final_metrics(t):
    p, met, tag = t.p, t.metrics, t.tag
    lam = p["lambda"]
    label, feature = t.losses(t.layers("student_W"))
    start_label, start_feature = met["curve_label_loss"][0], met["curve_feature_loss"][0]
    ok = [near("final losses", met["label_loss"], label, start_label, TOL_LOSS),
          near("final losses", met["feature_loss"], feature, start_feature, TOL_LOSS),
          near("final losses", met["train_loss"], label + lam * feature, start_label + lam * start_feature,
               TOL_LOSS)]
    check(all(ok), f"{tag}: label {met['label_loss']:.6g}, feature {met['feature_loss']:.6g} and train loss "
                   f"of the final weights")
    for who, prefix, key in (("student", "student_W", "test_risk"), ("twin", "twin_W", "baseline_test_risk")):
        r = t.risk(t.layers(prefix))
        e = abs(met[key] - r) / r
        note("exact test risk" if t.exact else "Monte Carlo test risk", e)
        how = "exact R" if t.exact else "mean ||f(Xtest) - Ytest||^2 + m sigma_y^2"
        check(e < TOL_RISK, f"{tag}: {key} {met[key]:.10g} = {how} {r:.10g} of the {who} ({e:.1e})")
    # The exact formula, not the inequality: excess >= 0 holds only in expectation for a
    # Monte Carlo test risk.
    if np.isfinite(met["bayes_risk"]):
        e = abs(met["excess_risk"] - (met["test_risk"] - met["bayes_risk"])) / met["test_risk"]
        check(e < TOL_RISK, f"{tag}: excess_risk = test_risk - bayes_risk ({e:.1e})")
    else:
        check(np.isnan(met["excess_risk"]), f"{tag}: excess_risk NaN with bayes_risk NaN")


def check_replay(t):
    p, met, tag = t.p, t.metrics, t.tag
    check(t.ck[0] == 0 and t.ck[-1] == p["steps"] and all(x < y for x, y in zip(t.ck, t.ck[1:])),
          f"{tag}: checkpoints 0 .. {p['steps']} increasing ({len(t.ck)} of {p['checkpoints']} asked)")
    n = len(t.ck)
    rises = []
    for who, lam, prefix, cols in (
            ("student", p["lambda"], "student_W", ("curve_test_risk", "curve_label_loss", "curve_feature_loss")),
            ("twin", 0.0, "twin_W", ("curve_baseline_test_risk", "curve_baseline_label_loss",
                                     "curve_baseline_feature_loss"))):
        W, curve = t.gd(lam)
        # loss_rise (MODEL_NOTES.md, "Loss rise"): max_t L_t / max(min_{s<t} L_s, 1e-6 L_0), at least 1.
        Ls = np.array(t.step_losses)
        floor = np.maximum(np.minimum.accumulate(Ls)[:-1], 1e-6 * Ls[0])
        want_rise = max(1.0, float((Ls[1:] / floor).max()) if len(Ls) > 1 else 1.0)
        got_rise = met["loss_rise" if who == "student" else "baseline_loss_rise"]
        check(abs(got_rise - want_rise) <= TOL_REPLAY * want_rise,
              f"{tag}: {who} loss_rise {got_rise:.10g}, numpy GD's {want_rise:.10g}")
        rises.append(want_rise)
        e = max(rel(x, y) for x, y in zip(t.layers(prefix), W))
        note("replay weights", e)
        check(e < TOL_REPLAY, f"{tag}: {who} final weights vs numpy GD, {p['activation']}, {p['path']} path, "
                              f"{p['steps']} steps ({e:.1e})")
        ok = []
        for i, col in enumerate(cols):
            want = [curve[s][i] for s in t.ck]
            ok.append(near("replay curves", met[col][:n], want, want[0], TOL_REPLAY))
            ok.append(bool(np.all(np.isnan(met[col][n:]))))  # padding to the file's curve width
        check(all(ok), f"{tag}: {who} risk, label and feature curves at steps {t.ck}, NaN after")
    # zero_loss: final train loss <= 1e-6 of step 0's (MODEL_NOTES.md).
    start = met["curve_label_loss"][0] + p["lambda"] * met["curve_feature_loss"][0]
    zero = int(met["train_loss"] <= 1e-6 * start)
    check(met["zero_loss"] == zero, f"{tag}: zero_loss {met['zero_loss']} (train loss {met['train_loss']:.3g}, "
                                    f"at step 0 {start:.3g})")
    # The twin's the same (lambda = 0: its training loss is its label loss), and
    # its final loss is the last checkpoint's (the last checkpoint is step T).
    if p["baseline"]:
        bl = met["curve_baseline_label_loss"]
        check(met["baseline_train_loss"] == bl[n - 1] and
              met["baseline_zero_loss"] == int(bl[n - 1] <= 1e-6 * bl[0]),
              f"{tag}: baseline_train_loss {met['baseline_train_loss']:.3g} (the twin's last label loss "
              f"{bl[n - 1]:.3g}) and baseline_zero_loss {met['baseline_zero_loss']}")
    # best_*: the lowest finite checkpoint risk, the earliest on ties.
    risks = met["curve_test_risk"][:n]
    i = int(np.nanargmin(risks))
    check(met["best_test_risk"] == risks[i] and met["best_step"] == t.ck[i],
          f"{tag}: best_test_risk {met['best_test_risk']:.6g} at step {met['best_step']} (expected step {t.ck[i]})")
    risks = met["curve_baseline_test_risk"][:n]
    i = int(np.nanargmin(risks))
    check(met["baseline_best_test_risk"] == risks[i] and met["baseline_best_step"] == t.ck[i],
          f"{tag}: baseline_best_test_risk {met['baseline_best_test_risk']:.6g} at step "
          f"{met['baseline_best_step']} (expected step {t.ck[i]})")
    RISES.extend(rises)
    return zero


def check_trial(t):
    check(t.metrics["status"] == 1 and t.attrs["metrics_reproduced"] == 1,
          f"{t.tag}: done; the export reproduces the run's metrics bit for bit")
    check_data(t)
    check_closed_forms(t)
    check_decomposition(t)
    check_features(t)
    check_final_metrics(t)
    return check_replay(t)


def check_n_test_pairs(trials):
    """Trials that differ only in n_test share the data (MODEL_NOTES.md, since session 13)."""
    groups = {}
    for t in trials:
        key = json.dumps({k: v for k, v in t.p.items() if k != "n_test"}, sort_keys=True)
        groups.setdefault(key, []).append(t)
    pairs = [g for g in groups.values() if len(g) == 2]
    check(len(pairs) == 2, f"n_test: two pairs of trials that differ only in n_test (found {len(pairs)})")
    for small, large in (sorted(g, key=lambda t: t.p["n_test"]) for g in pairs):
        what = f"n_test {small.p['n_test']} and {large.p['n_test']} ({small.p['activation']})"
        same = [k for k in ("X", "Xn", "Y", "init_W1", "init_W2") if np.array_equal(small.a[k], large.a[k])]
        check(len(same) == 5, f"{what}: the same X, Xn, Y and initial weights (equal: {same})")
        if "Xtest" in small.a:
            n = small.p["n_test"]
            check(large.a["Xtest"].shape[1] == large.p["n_test"]
                  and np.array_equal(small.a["Xtest"], large.a["Xtest"][:, :n])
                  and np.array_equal(small.a["Ytest"], large.a["Ytest"][:, :n]),
                  f"{what}: the smaller test set is the first {n} columns of the larger")


def main():
    global STSWEEP
    args = arguments()
    STSWEEP = args.stsweep
    wd = args.workdir
    t0 = time.time()
    trials = {}
    for name, sweep in SWEEPS.items():
        path = os.path.join(wd, f"{name}.json")
        with open(path, "w") as f:
            json.dump(sweep, f, indent=1)
        out = os.path.join(wd, f"{name}.h5")
        p = run(["run", path, "-o", out, "--backend", "cpu", "--precision", "f64", "--threads", "2",
                 "--progress", "none"])
        check(p.returncode == 0, f"{name}: run exits 0")
        if p.returncode != 0:
            continue
        with h5py.File(out, "r") as f:
            ids = [int(i) for i in f["trial"][:]]
        check(len(ids) == N_TRIALS[name], f"{name}: {N_TRIALS[name]} trials (found {len(ids)})")
        trials[name] = []
        for tid in ids:
            tpath = os.path.join(wd, f"{name}_{tid}.h5")
            p = run(["export", out, "--trial", str(tid), "-o", tpath])
            if check(p.returncode == 0 and "warning" not in p.stderr, f"{name}/{tid}: export exits 0, no warning"):
                trials[name].append(Trial(tpath, f"{name}/{tid}"))
    print(f"ran and exported in {time.time() - t0:.1f} s")

    zero_flags = [check_trial(t) for ts in trials.values() for t in ts]
    # Not vacuous: both outcomes of zero_loss occur, and every activation, path and teacher kind.
    check(0 in zero_flags and 1 in zero_flags, "zero_loss is 1 for some trials and 0 for others")
    every = [t for ts in trials.values() for t in ts]
    check({t.p["activation"] for t in every} == {"linear", "tanh", "relu"}
          and {t.p["path"] for t in every} >= {"data", "moment"}
          and {t.p["teacher"]["kind"] for t in every} == {"oracle", "perturbed", "trained"}
          and {len(t.p["hidden"]) + 1 for t in every} == {2, 3, 4},
          "covered: linear, tanh and relu students; data and moment paths; oracle, perturbed and trained "
          "teachers; L = 2, 3, 4")

    # Label noise on Monte Carlo risks: the m sigma_y^2 term is far above the tolerance, so a
    # risk without it fails the check above.
    for t in trials.get("label_noise", []):
        term = t.p["m"] * t.p["label_noise"] ** 2
        check(not t.exact and term > 1e3 * TOL_RISK * t.metrics["test_risk"],
              f"{t.tag}: Monte Carlo risk ({t.p['activation']} student, {t.p['target']} target) with "
              f"m sigma_y^2 = {term:g} of test_risk {t.metrics['test_risk']:.4g}")
    check_n_test_pairs(trials.get("n_test", []))

    return finish(f"elapsed {time.time() - t0:.1f} s, {len(every)} trials")


if __name__ == "__main__":
    sys.exit(main())
