#!/usr/bin/python3
"""A batched PyTorch peer of the standard CPU grid (issue 3), and the sgemm yardstick.

The same training as `bench_cpu_train` Grid/data_f32: 2-layer linear students,
d = h = 32, m = 8, N = 64, feature matching on the hidden layer (lambda = 1),
each with a lambda = 0 twin; full-batch GD, float32, data path, written the
way a careful PyTorch user would: all networks stacked, torch.bmm, hand-written
gradients, preallocated outputs, no Python work per network. By default the
peer computes no per-step loss (a user would evaluate losses at the checkpoints
only; the engine computes them every step, for its divergence check), which
favours the peer; --step-loss adds them (as bmm dot products, the fastest form
in this torch build) with a divergence flag.

Prints trial-steps/s (a student and its twin count as two) and GFLOP/s with the
engine's flop count, then the rate of a large sgemm (torch.mm and numpy,
2048^3, float32) on the same threads.

    /usr/bin/python3 bench/peer_torch.py [--trials 512] [--steps 2000] [--threads 2] [--activation tanh]
"""
import argparse
import os
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=512, help="students (each with a twin)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gemm", type=int, default=2048, help="size of the square sgemm (0: skip)")
    ap.add_argument("--step-loss", action="store_true", help="losses and divergence flag every step")
    ap.add_argument("--activation", choices=("linear", "tanh"), default="linear",
                    help="the hidden layer's activation (bench_cpu_train Grid/data_f32_tanh: tanh)")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)  # before numpy / torch load their BLAS
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d, h, m, N = 32, 32, 8, 64
    B = 2 * args.trials  # students then twins
    lr = 0.01
    f32 = torch.float32
    X = torch.randn(args.trials, d, N, dtype=f32)
    Xn = torch.cat([X, X])                        # (B, d, N) noisy inputs, shared by the twin
    XnT = Xn.transpose(1, 2).contiguous()         # (B, N, d)
    Y = torch.randn(args.trials, m, N, dtype=f32)
    Y = torch.cat([Y, Y])
    Ht = torch.randn(args.trials, h, N, dtype=f32)
    Ht = torch.cat([Ht, Ht])
    lam = torch.cat([torch.ones(args.trials), torch.zeros(args.trials)]).to(f32).view(B, 1, 1)
    W1 = torch.randn(B, h, d, dtype=f32) * (1e-2 / d ** 0.5)
    W2 = torch.randn(B, m, h, dtype=f32) * (1e-2 / h ** 0.5)
    H = torch.empty(B, h, N, dtype=f32)
    O = torch.empty(B, m, N, dtype=f32)
    R = torch.empty(B, m, N, dtype=f32)
    F = torch.empty(B, h, N, dtype=f32)
    dH = torch.empty(B, h, N, dtype=f32)
    G1 = torch.empty(B, h, d, dtype=f32)
    G2 = torch.empty(B, m, h, dtype=f32)
    diverged = torch.zeros(B, dtype=torch.bool)
    loss0 = None

    tanh = args.activation == "tanh"
    Dz = torch.empty(B, h, N, dtype=f32) if tanh else None

    def step():
        nonlocal loss0, diverged
        torch.bmm(W1, Xn, out=H)
        if tanh:
            torch.tanh(H, out=H)
        torch.bmm(W2, H, out=O)
        torch.sub(O, Y, out=R)
        torch.sub(H, Ht, out=F)
        if args.step_loss:
            label = torch.bmm(R.view(B, 1, -1), R.view(B, -1, 1)).view(B) / (2 * N)
            feature = torch.bmm(F.view(B, 1, -1), F.view(B, -1, 1)).view(B) / (2 * N)
            total = label + lam.view(B) * feature
            if loss0 is None:
                loss0 = total.clone()
            diverged |= ~torch.isfinite(total) | (total > 1e6 * loss0)
        R.mul_(1.0 / N)
        torch.bmm(R, H.transpose(1, 2), out=G2)
        torch.bmm(W2.transpose(1, 2), R, out=dH)
        dH.addcmul_(lam.expand(B, 1, 1), F, value=1.0 / N)
        if tanh:  # through tanh: dZ = dH * (1 - H^2)
            torch.mul(H, H, out=Dz)
            Dz.neg_().add_(1.0)
            dH.mul_(Dz)
        torch.bmm(dH, XnT, out=G1)
        W1.add_(G1, alpha=-lr)
        W2.add_(G2, alpha=-lr)

    with torch.no_grad():
        for _ in range(3):
            step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        dt = time.perf_counter() - t0
    flops = 2 * N * (2 * h * d + 3 * m * h)  # the engine's tm::data_step_flops
    rate = B * args.steps / dt
    print(f"peer_torch: torch {torch.__version__}, {args.threads} threads, {args.trials} trials + twins, "
          f"{args.steps} steps, {args.activation}, step loss {'on' if args.step_loss else 'off'}: {dt:.2f} s")
    print(f"peer_torch: trial_steps/s {rate:.4g}  GFLOP/s {rate * flops * 1e-9:.3g}  "
          f"(diverged {int(diverged.sum())})")

    n = args.gemm
    if n > 0:
        a = torch.randn(n, n, dtype=f32)
        b = torch.randn(n, n, dtype=f32)
        c = torch.empty(n, n, dtype=f32)
        torch.mm(a, b, out=c)
        reps = 5
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=c)
        dt = (time.perf_counter() - t0) / reps
        print(f"sgemm torch.mm {n}^3: {2 * n ** 3 / dt * 1e-9:.1f} GFLOP/s")
        an, bn = a.numpy(), b.numpy()
        cn = an @ bn
        t0 = time.perf_counter()
        for _ in range(reps):
            np.matmul(an, bn, out=cn)
        dt = (time.perf_counter() - t0) / reps
        print(f"sgemm numpy {n}^3: {2 * n ** 3 / dt * 1e-9:.1f} GFLOP/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
