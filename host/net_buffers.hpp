// The buffers of one network's training on the host, in Real, in the layouts
// kernels/trial_math.hpp's step functions read (weights in both layouts,
// data with samples as rows): the CPU trainer (host/train.cpp), the trained
// teacher's plain GD, and the tests and benchmarks that drive the step
// functions directly (tests/test_device_emu.cpp, bench/bench_cpu_train.cpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "problem.hpp"
#include "train.hpp"
#include "trial_math.hpp"

namespace stsweep {

template <class Real>
std::vector<Real> to_real(const Matrix& M) {
  std::vector<Real> v(M.a.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<Real>(M.a[i]);
  return v;
}
// M^T (samples as rows), converted.
template <class Real>
std::vector<Real> to_real_rows(const Matrix& M) {
  std::vector<Real> v(M.a.size());
  for (int i = 0; i < M.rows; ++i)
    for (int j = 0; j < M.cols; ++j) v[static_cast<size_t>(j) * M.rows + i] = static_cast<Real>(M(i, j));
  return v;
}

inline void check_shape(const Matrix& M, int r, int c, const char* what) {
  if (M.rows != r || M.cols != c)
    throw std::logic_error(std::string("train: ") + what + " is " + std::to_string(M.rows) + "x" +
                           std::to_string(M.cols) + ", expected " + std::to_string(r) + "x" +
                           std::to_string(c));
}

// Weights of one network in both layouts, Real.
template <class Real>
struct NetWeights {
  std::vector<std::vector<Real>> W, WT;
  tm::Weights<Real> view;
  NetWeights(const tm::Net& net, const std::vector<Matrix>& W0) : W(net.L + 1), WT(net.L + 1) {
    for (int l = 1; l <= net.L; ++l) {
      check_shape(W0[l], net.w[l], net.w[l - 1], "W0");
      W[l] = to_real<Real>(W0[l]);
      WT[l] = to_real_rows<Real>(W0[l]);
      view.W[l] = W[l].data();
      view.WT[l] = WT[l].data();
    }
  }
  std::vector<Matrix> to_matrices(const tm::Net& net) const {
    std::vector<Matrix> out(net.L + 1);
    for (int l = 1; l <= net.L; ++l) {
      out[l] = Matrix(net.w[l], net.w[l - 1]);
      for (size_t i = 0; i < W[l].size(); ++i) out[l].a[i] = static_cast<double>(W[l][i]);
    }
    return out;
  }
};

// Data, samples as rows, and the workspace of the data path for N rows.
template <class Real>
struct DataPath {
  std::vector<Real> X, Y;
  std::vector<std::vector<Real>> Ht, Z, H, D;
  tm::DataSet<Real> ds;
  tm::DataWork<Real> wk;
  DataPath(const tm::Net& net, const Matrix& Xn, const Matrix& Yc, const std::vector<Matrix>* feat,
           uint32_t mask)
      : Ht(net.L + 1), Z(net.L + 1), H(net.L + 1), D(2) {
    const int N = Xn.cols;
    check_shape(Xn, net.w[0], N, "inputs");
    check_shape(Yc, net.w[net.L], N, "labels");
    X = to_real_rows<Real>(Xn);
    Y = to_real_rows<Real>(Yc);
    ds.N = N;
    ds.X = X.data();
    ds.Y = Y.data();
    int maxw = 0;
    for (int l = 1; l <= net.L; ++l) {
      maxw = std::max(maxw, net.w[l]);
      Z[l].assign(static_cast<size_t>(N) * net.w[l], Real(0));
      wk.Z[l] = Z[l].data();
      if (l < net.L) {
        if (net.act != tm::kLinear) {
          H[l].assign(Z[l].size(), Real(0));
          wk.H[l] = H[l].data();
        } else {
          wk.H[l] = wk.Z[l];
        }
        if (mask >> l & 1u) {
          check_shape((*feat)[l], net.w[l], N, "teacher features");
          Ht[l] = to_real_rows<Real>((*feat)[l]);
          ds.Ht[l] = Ht[l].data();
        }
      }
    }
    for (int b = 0; b < 2; ++b) {
      D[b].assign(static_cast<size_t>(N) * maxw, Real(0));
      wk.D[b] = D[b].data();
    }
  }
};


// Moments and the workspace of the moment path (linear networks).
template <class Real>
struct MomentPath {
  std::vector<Real> Cxx, Cyx;
  std::vector<std::vector<Real>> Chx, A, E, Q;
  std::vector<Real> AT;
  tm::MomentSet<Real> ms;
  tm::MomentWork<Real> wk;
  MomentPath(const tm::Net& net, const TrialMoments& mo, uint32_t mask)
      : Chx(net.L + 1), A(net.L + 1), E(net.L + 1), Q(2) {
    const int d = net.w[0], L = net.L;
    Cxx = to_real<Real>(mo.Cxx);
    Cyx = to_real<Real>(mo.Cyx);
    ms.Cxx = Cxx.data();
    ms.Cyx = Cyx.data();
    ms.tr_yy = static_cast<Real>(mo.tr_yy);
    int maxw = 0;
    for (int l = 1; l <= L; ++l) {
      maxw = std::max(maxw, net.w[l]);
      const size_t n = static_cast<size_t>(net.w[l]) * d;
      if (l >= 2) {
        A[l].assign(n, Real(0));
        wk.A[l] = A[l].data();
      }
      if (l == L || (mask >> l & 1u)) {
        E[l].assign(n, Real(0));
        wk.E[l] = E[l].data();
      }
      if (l < L && (mask >> l & 1u)) {
        Chx[l] = to_real<Real>(mo.Chx[l]);
        ms.Chx[l] = Chx[l].data();
        ms.tr_hh[l] = static_cast<Real>(mo.tr_hh[l]);
      }
    }
    for (int b = 0; b < 2; ++b) {
      Q[b].assign(static_cast<size_t>(maxw) * d, Real(0));
      wk.Q[b] = Q[b].data();
    }
    AT.assign(static_cast<size_t>(maxw) * d, Real(0));
    wk.AT = AT.data();
  }
};

}  // namespace stsweep
