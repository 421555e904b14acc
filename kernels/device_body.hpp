// The bodies of the CUDA backend's kernels, written once over a Team (see
// kernels/trial_math.hpp): the kernels in cuda_fused.cu call them with a
// thread block or a warp as the team, and kernels/device_emu.cpp calls them on
// the host with an emulated team of threads, so the CPU test suite runs the
// very code the GPU runs (tests/test_device_emu.cpp).
//
//   train_network: one network (a trial's student or its lambda = 0 twin), all
//     its steps, the loop of host/train.cpp (Trainer::run) step for step; at
//     checkpoints it writes the weights (as double) to its snapshot slots.
//   eval_item: one (network, snapshot) pair measured in float64 with the
//     functions the CPU evaluator calls (data_forward<double>, linear_risk).
#pragma once

#include <math.h>

#include "device_records.hpp"
#include "trial_math.hpp"

namespace stsweep::cuda {

template <class Real, class Team>
STS_HD inline void snapshot(const Team& team, const tm::Net& net, const Layout& lay,
                            const tm::Weights<Real>& wt, double* dst) {
  for (int l = 1; l <= net.L; ++l) {
    const int n = net.w[l] * net.w[l - 1];
    const Real* W = tm::detail::shared_hint<Team>(wt.W[l]);
    double* o = dst + lay.wofs[l];
    for (int i = team.rank(); i < n; i += team.size()) o[i] = static_cast<double>(W[i]);
  }
  team.sync();  // the weights are updated next
}

// Trains network `net_id` of the launch. `smem`: the team's own buffer of
// (lay.data + lay.work) Reals when a.shared, else unused (the data stay in the
// arena and the work in a.work).
template <class Real, class Team>
STS_HD inline void train_network(const Team& team, const TrainArgs<Real>& a, int net_id,
                                 Real* smem) {
  const NetRef nr = a.nets[net_id];
  const TrialScalars& ts = a.trials[nr.trial];
  const Layout& lay = a.lay;
  const tm::Net& net = a.net;
  const int L = net.L;
  const Real* arena = a.arena + static_cast<size_t>(nr.trial) * lay.arena;

  const Real* data;
  Real* mut;
  if (a.shared) {
    for (int i = team.rank(); i < lay.data; i += team.size()) smem[i] = arena[i];
    data = smem;
    mut = smem + lay.data;
  } else {
    data = arena;
    mut = a.work + static_cast<size_t>(net_id) * lay.work;
  }
  tm::Weights<Real> wt;
  for (int l = 1; l <= L; ++l) {
    const int n = net.w[l] * net.w[l - 1];
    wt.W[l] = mut + lay.W[l];
    for (int i = team.rank(); i < n; i += team.size()) wt.W[l][i] = arena[lay.W0[l] + i];
    if (!lay.moment) {
      wt.WT[l] = mut + lay.WT[l];
      for (int i = team.rank(); i < n; i += team.size()) wt.WT[l][i] = arena[lay.WT0[l] + i];
    }
  }
  team.sync();

  const uint32_t tmask = nr.twin ? 0u : a.mask;
  const Real lam = static_cast<Real>(nr.twin ? 0.0 : ts.lambda);
  const Real lr = static_cast<Real>(ts.lr);
  tm::DataSet<Real> ds;
  tm::DataWork<Real> dw;
  tm::MomentSet<Real> ms;
  tm::MomentWork<Real> mw;
  if (lay.moment) {
    ms.Cxx = data + lay.Cxx;
    ms.Cyx = data + lay.Cyx;
    ms.tr_yy = static_cast<Real>(ts.tr_yy);
    for (int l = 1; l <= L; ++l) {
      ms.Chx[l] = at(data, lay.Chx[l]);
      ms.tr_hh[l] = static_cast<Real>(ts.tr_hh[l]);
      mw.A[l] = at(mut, lay.A[l]);
      mw.E[l] = at(mut, lay.E[l]);
    }
    mw.Q[0] = mut + lay.Q[0];
    mw.Q[1] = mut + lay.Q[1];
    mw.AT = mut + lay.AT;
  } else {
    ds.N = a.N;
    ds.X = data + lay.X;
    ds.Y = data + lay.Y;
    for (int l = 1; l <= L; ++l) {
      ds.Ht[l] = at(data, lay.Ht[l]);
      dw.Z[l] = mut + lay.Z[l];
      dw.H[l] = lay.H[l] == kNone ? dw.Z[l] : mut + lay.H[l];
    }
    dw.D[0] = mut + lay.D[0];
    dw.D[1] = mut + lay.D[1];
  }

  // The loop of host/train.cpp (Trainer::run), step for step.
  double* snap = a.snap + static_cast<size_t>(net_id) * a.slots * lay.wsize;
  const long long* ck = a.ck + ts.ck_offset;
  const long long T = ts.T;
  int c = 0;
  double loss0 = 0, total = 0;
  tm::LossRise rise;
  bool diverged = false;
  long long t = 0;
  for (;; ++t) {
    const tm::Losses<Real> loss = lay.moment ? tm::moment_forward(team, net, wt, ms, tmask, mw)
                                             : tm::data_forward(team, net, wt, ds, tmask, dw);
    const bool at_ck = c < ts.nck && ck[c] == t;
    if (at_ck || t == 0) {
      if (!lay.moment) tm::data_refresh_w1(team, net, wt);
      if (at_ck) snapshot(team, net, lay, wt, snap + static_cast<size_t>(c++) * lay.wsize);
      if (t == 0) snapshot(team, net, lay, wt, snap + static_cast<size_t>(a.slots - 2) * lay.wsize);
    }
    total = static_cast<double>(loss.total(lam));
    if (t == 0) loss0 = total;
    rise.add(t, total, loss0, kZeroLossRtol);
    if (!isfinite(total) || (loss0 > 0 && total > kDivergeFactor * loss0)) {
      diverged = true;
      break;
    }
    if (t >= T) break;
    if (lay.moment)
      tm::moment_backward_update(team, net, wt, ms, lam, tmask, lr, mw);
    else
      tm::data_backward_update(team, net, wt, ds, lam, tmask, lr, dw);
  }
  if (!lay.moment) tm::data_refresh_w1(team, net, wt);
  snapshot(team, net, lay, wt, snap + static_cast<size_t>(a.slots - 1) * lay.wsize);
  if (team.rank() == 0) {
    NetState st;
    st.steps_run = t;
    st.step = t;
    st.loss0 = loss0;
    st.rise = rise;
    st.diverged_loss = diverged ? total : 0.0;
    st.diverged = diverged ? 1 : 0;
    st.written = c;
    a.state[net_id] = st;
  }
  team.sync();  // the team's buffers are reused by its next network
}

// Measures work item `it` (= network * slots + slot) into a.metrics[it * 3 ..]:
// losses of the trial's mask on the training set, then the exact risk (linear
// student and target) or 2 x the label loss on the Monte Carlo test set, as
// host/train.cpp's Evaluator. `ws`: the team's lay.vwork doubles.
template <class Team>
STS_HD inline void eval_item(const Team& team, const EvalArgs& a, long long it, double* ws) {
  const Layout& lay = a.lay;
  const tm::Net& net = a.net;
  const int L = net.L;
  const double nan = NAN;
  const int net_id = static_cast<int>(it / a.slots), s = static_cast<int>(it % a.slots);
  double* out = a.metrics + it * 3;
  const NetState st = a.state[net_id];
  if (!eval_needed(st, s, a.maxck)) {  // checkpoint after a stop (never read)
    if (team.rank() == 0) out[0] = out[1] = out[2] = nan;
    return;
  }
  tm::Weights<double> wt;
  tm::DataWork<double> dw;
  for (int l = 1; l <= L; ++l) {
    wt.W[l] = ws + lay.vW[l];
    wt.WT[l] = ws + lay.vWT[l];
    dw.Z[l] = ws + lay.vZ[l];
    dw.H[l] = lay.vH[l] == kNone ? dw.Z[l] : ws + lay.vH[l];
  }
  dw.D[0] = ws + lay.vD[0];
  dw.D[1] = ws + lay.vD[1];
  const NetRef nr = a.nets[net_id];
  const TrialScalars& ts = a.trials[nr.trial];
  const double* ar = a.arena + static_cast<size_t>(nr.trial) * lay.eval;
  const double* snap = a.snap + static_cast<size_t>(it) * lay.wsize;
  for (int l = 1; l <= L; ++l) {
    const int r = net.w[l], cc = net.w[l - 1];
    for (int i = team.rank(); i < r * cc; i += team.size()) {
      const double v = snap[lay.wofs[l] + i];
      wt.W[l][i] = v;
      wt.WT[l][(i % cc) * r + i / cc] = v;
    }
  }
  team.sync();
  tm::DataSet<double> ds;
  ds.N = a.N;
  ds.X = ar + lay.eX;
  ds.Y = ar + lay.eY;
  for (int l = 1; l < L; ++l) ds.Ht[l] = at(ar, lay.eHt[l]);
  const tm::Losses<double> loss = tm::data_forward(team, net, wt, ds, a.mask, dw);
  double risk = nan;
  if (a.exact) {
    // End-to-end map A_L = W_L ... W_1 (m x d), ping-pong in vA.
    const int d = net.w[0];
    const double* Ap = wt.W[1];
    for (int l = 2; l <= L; ++l) {
      double* An = ws + lay.vA[l % 2];
      tm::gemm<tm::kSet>(team, net.w[l], d, net.w[l - 1], wt.W[l], net.w[l - 1], 1, Ap, d, An, d);
      team.sync();
      Ap = An;
    }
    if (team.rank() == 0)
      risk = tm::linear_risk(net.w[L], d, a.k, Ap, ar + lay.eWstar, ar + lay.eMhalf, ts.sigma,
                             ts.sigma_y);
  } else if (a.n_test > 0) {
    tm::DataSet<double> te;
    te.N = a.n_test;
    te.X = ar + lay.eXt;
    te.Y = ar + lay.eYt;
    // + m sigma_y^2: the targets are clean (host/train.cpp's Evaluator).
    risk = 2.0 * tm::data_forward(team, net, wt, te, 0u, dw).label + net.w[L] * ts.sigma_y * ts.sigma_y;
  }
  if (team.rank() == 0) {
    out[0] = risk;
    out[1] = loss.label;
    out[2] = loss.feature;
  }
  team.sync();  // the workspace is reused by the next item
}

// ------------------------------------------------------- launch geometry --
// How cuda_fused.cu's kernels split a launch among blocks and warps, written
// once: the kernels call these with blockIdx and threadIdx, and the fake
// device (tests/fake_cuda) runs every block and warp of a launch through them
// one after the other and checks what they hand out: every network or item
// once, shared-memory slices and eval workspaces apart and inside their buffer.

// warp_train: blocks of `warps` warps; warp w of block `block` trains network
// warp_network(...) (none past the launch's networks) in its own slice of the
// block's dynamic shared memory, warp_slice(...) Reals from its start.
STS_HD inline int warp_blocks(int nnets, int warps) { return (nnets + warps - 1) / warps; }
STS_HD inline int warp_network(int block, int warps, int w) { return block * warps + w; }
STS_HD inline size_t warp_slice(int w, int net_shared_reals) {
  return static_cast<size_t>(w) * net_shared_reals;
}
// Warp w of block `block`; smem: the block's warps x net_shared_reals.
template <class Real, class Team>
STS_HD inline void warp_train_body(const Team& team, const TrainArgs<Real>& a, int block, int warps, int w,
                                   int net_shared_reals, Real* smem) {
  const int net = warp_network(block, warps, w);
  if (w >= warps || net >= a.nnets) return;  // whole warps only: no block-wide sync in the body
  train_network(team, a, net, smem + warp_slice(w, net_shared_reals));
}

// eval_snapshots: block `block` of `blocks` measures items block, block +
// blocks, ... of the list (grid-strided) in its own workspace of lay.vwork
// doubles. f(item) for each of its items.
STS_HD inline double* eval_workspace(const EvalArgs& a, int block) {
  return a.work + static_cast<size_t>(block) * a.lay.vwork;
}
// The items a launch measures: its list's (compacted) or every network x slot.
STS_HD inline long long eval_item_count(const EvalArgs& a) {
  return a.items ? *a.nitems : static_cast<long long>(a.nnets) * a.slots;
}
template <class F>
STS_HD inline void eval_block_items(const EvalArgs& a, int block, int blocks, F&& f) {
  const long long n = eval_item_count(a);
  for (long long i = block; i < n; i += blocks) f(a.items ? a.items[i] : i);
}
template <class Team>
STS_HD inline void eval_block(const Team& team, const EvalArgs& a, int block, int blocks) {
  double* ws = eval_workspace(a, block);
  eval_block_items(a, block, blocks, [&](long long it) { eval_item(team, a, it, ws); });
}

}  // namespace stsweep::cuda
