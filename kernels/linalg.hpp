// Small dense linear algebra in float64 on the host, for trial set-up and tests:
// products, Householder QR, one-sided Jacobi SVD, Cholesky solves and the
// pseudo-inverse, on stsweep::Matrix (row-major). Sizes are at most a few
// hundred, so clarity wins over speed; nothing here runs in a training loop.
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "problem.hpp"

namespace stsweep::linalg {

inline Matrix identity(int n) {
  Matrix I(n, n);
  for (int i = 0; i < n; ++i) I(i, i) = 1.0;
  return I;
}

inline Matrix transpose(const Matrix& A) {
  Matrix T(A.cols, A.rows);
  for (int i = 0; i < A.rows; ++i)
    for (int j = 0; j < A.cols; ++j) T(j, i) = A(i, j);
  return T;
}

// A B
inline Matrix matmul(const Matrix& A, const Matrix& B) {
  if (A.cols != B.rows) throw std::logic_error("linalg::matmul: shape mismatch");
  Matrix C(A.rows, B.cols);
  for (int i = 0; i < A.rows; ++i)
    for (int p = 0; p < A.cols; ++p) {
      const double a = A(i, p);
      if (a == 0.0) continue;
      for (int j = 0; j < B.cols; ++j) C(i, j) += a * B(p, j);
    }
  return C;
}

// A B^T
// Every C(i, j) is one chain s = 0; s += A(i, p) * B(j, p) for p = 0, 1, ...
// (a product, then a sum: no FMA, -ffp-contract=off). Eight chains (2 rows of
// A by 4 of B) run side by side, so the adds' latency is hidden; A A^T (the
// same matrix twice) computes the upper triangle and mirrors it, as A(i, p) *
// A(j, p) and A(j, p) * A(i, p) are the same product. The same bits as one
// chain at a time, 3x faster on the moment path's moments (bench_cpu_train
// Pack/moment, docs/PERFORMANCE.md "Packing").
inline Matrix matmul_nt(const Matrix& A, const Matrix& B) {
  if (A.cols != B.cols) throw std::logic_error("linalg::matmul_nt: shape mismatch");
  const int n = A.rows, m = B.rows, K = A.cols;
  const bool sym = &A == &B;
  Matrix C(n, m);
  auto one = [&](int i, int j) {
    const double* a = &A.a[static_cast<size_t>(i) * K];
    const double* b = &B.a[static_cast<size_t>(j) * K];
    double s = 0;
    for (int p = 0; p < K; ++p) s += a[p] * b[p];
    C(i, j) = s;
  };
  int i = 0;
  for (; i + 2 <= n; i += 2) {
    const double* a0 = &A.a[static_cast<size_t>(i) * K];
    const double* a1 = a0 + K;
    int j = 0;
    for (; j + 4 <= m; j += 4) {
      if (sym && j + 3 < i) continue;  // strictly below the diagonal: mirrored
      const double* b0 = &B.a[static_cast<size_t>(j) * K];
      const double *b1 = b0 + K, *b2 = b1 + K, *b3 = b2 + K;
      double s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
      for (int p = 0; p < K; ++p) {
        const double x0 = a0[p], x1 = a1[p];
        s00 += x0 * b0[p];
        s01 += x0 * b1[p];
        s02 += x0 * b2[p];
        s03 += x0 * b3[p];
        s10 += x1 * b0[p];
        s11 += x1 * b1[p];
        s12 += x1 * b2[p];
        s13 += x1 * b3[p];
      }
      C(i, j) = s00, C(i, j + 1) = s01, C(i, j + 2) = s02, C(i, j + 3) = s03;
      C(i + 1, j) = s10, C(i + 1, j + 1) = s11, C(i + 1, j + 2) = s12, C(i + 1, j + 3) = s13;
    }
    for (; j < m; ++j) one(i, j), one(i + 1, j);
  }
  for (; i < n; ++i)
    for (int j = sym ? i : 0; j < m; ++j) one(i, j);
  if (sym)
    for (int r = 1; r < n; ++r)
      for (int c = 0; c < r; ++c) C(r, c) = C(c, r);
  return C;
}

// A^T B
inline Matrix matmul_tn(const Matrix& A, const Matrix& B) { return matmul(transpose(A), B); }

// alpha A + beta B
inline Matrix axpby(double alpha, const Matrix& A, double beta, const Matrix& B) {
  if (A.rows != B.rows || A.cols != B.cols) throw std::logic_error("linalg::axpby: shape mismatch");
  Matrix C(A.rows, A.cols);
  for (size_t i = 0; i < A.a.size(); ++i) C.a[i] = alpha * A.a[i] + beta * B.a[i];
  return C;
}
inline Matrix add(const Matrix& A, const Matrix& B) { return axpby(1.0, A, 1.0, B); }
inline Matrix sub(const Matrix& A, const Matrix& B) { return axpby(1.0, A, -1.0, B); }
inline Matrix scaled(const Matrix& A, double c) {
  Matrix C = A;
  for (double& x : C.a) x *= c;
  return C;
}

inline double frob2(const Matrix& A) {
  double s = 0;
  for (double x : A.a) s += x * x;
  return s;
}
inline double frob(const Matrix& A) { return std::sqrt(frob2(A)); }
inline double max_abs(const Matrix& A) {
  double s = 0;
  for (double x : A.a) s = std::max(s, std::fabs(x));
  return s;
}

// Columns j scaled by v[j]: A diag(v).
inline Matrix scale_cols(const Matrix& A, const std::vector<double>& v) {
  Matrix C = A;
  for (int i = 0; i < A.rows; ++i)
    for (int j = 0; j < A.cols; ++j) C(i, j) *= v[j];
  return C;
}
// Rows i scaled by v[i]: diag(v) A.
inline Matrix scale_rows(const Matrix& A, const std::vector<double>& v) {
  Matrix C = A;
  for (int i = 0; i < A.rows; ++i)
    for (int j = 0; j < A.cols; ++j) C(i, j) *= v[i];
  return C;
}

// The r x c matrix with B in its top-left corner and zeros elsewhere.
inline Matrix embed(const Matrix& B, int r, int c) {
  if (B.rows > r || B.cols > c) throw std::logic_error("linalg::embed: block does not fit");
  Matrix C(r, c);
  for (int i = 0; i < B.rows; ++i)
    for (int j = 0; j < B.cols; ++j) C(i, j) = B(i, j);
  return C;
}

// M <- (I - 2 v v^T / vn) M on rows [j, n) and columns [c0, cols); v has length
// n - j. Row-wise loops: M is row-major. s = v^T M is summed over rows in
// order for every column, eight columns at a time in registers (one pass
// over M's rows per eight columns instead of a load and store of s per
// element: the same sums in the same order, so the same bits).
inline void reflect(Matrix& M, const std::vector<double>& v, double vn, int j, int c0) {
  std::vector<double> s(M.cols, 0.0);  // s = v^T M
  constexpr int kB = 8;
  int c = c0;
  for (; c + kB <= M.cols; c += kB) {
    double acc[kB] = {};
    for (int i = j; i < M.rows; ++i) {
      const double vi = v[i - j];
      const double* row = &M(i, c);
      for (int q = 0; q < kB; ++q) acc[q] += vi * row[q];
    }
    for (int q = 0; q < kB; ++q) s[c + q] = acc[q];
  }
  for (; c < M.cols; ++c) {
    double acc = 0.0;
    for (int i = j; i < M.rows; ++i) acc += v[i - j] * M(i, c);
    s[c] = acc;
  }
  for (int i = j; i < M.rows; ++i) {
    const double f = 2.0 / vn * v[i - j];
    for (int c = c0; c < M.cols; ++c) M(i, c) -= f * s[c];
  }
}

// Householder QR of A (n x p, n >= p): returns Q (n x p) with orthonormal
// columns and A = Q R, R upper triangular with a non-negative diagonal. The sign
// convention makes Q a function of A alone (for a Gaussian A it is Haar
// distributed), whatever algorithm computes it.
inline Matrix qr_orthonormal(const Matrix& A, Matrix* R_out = nullptr) {
  const int n = A.rows, p = A.cols;
  if (n < p) throw std::logic_error("linalg::qr_orthonormal: needs rows >= cols");
  Matrix Rw = A;                       // reduced in place to R
  std::vector<std::vector<double>> V;  // Householder vectors v_j (length n - j)
  std::vector<double> VN(p, 0.0);      // their squared norms, reused to form Q
  for (int j = 0; j < p; ++j) {
    double norm = 0;
    for (int i = j; i < n; ++i) norm += Rw(i, j) * Rw(i, j);
    norm = std::sqrt(norm);
    std::vector<double> v(n - j, 0.0);
    if (norm == 0.0) {  // zero column: identity reflection
      V.push_back(std::move(v));
      continue;
    }
    const double alpha = Rw(j, j) >= 0 ? -norm : norm;  // avoid cancellation
    for (int i = j; i < n; ++i) v[i - j] = Rw(i, j);
    v[0] -= alpha;
    double vn = 0;
    for (double x : v) vn += x * x;
    VN[j] = vn;
    if (vn > 0) reflect(Rw, v, vn, j, j);  // Rw <- H_j Rw
    V.push_back(std::move(v));
  }
  // Q = H_0 H_1 ... H_{p-1} applied to the first p columns of I. When H_j is
  // applied, columns c < j are still e_c, zero on rows >= j where H_j acts:
  // their update would subtract exact zeros, so it starts at column j (the
  // same bits, a third less work).
  Matrix Q(n, p);
  for (int j = 0; j < p; ++j) Q(j, j) = 1.0;
  for (int j = p - 1; j >= 0; --j) {
    if (VN[j] > 0) reflect(Q, V[j], VN[j], j, j);
  }
  // Make diag(R) >= 0 by flipping column signs of Q (and rows of R).
  for (int j = 0; j < p; ++j) {
    if (Rw(j, j) < 0) {
      for (int i = 0; i < n; ++i) Q(i, j) = -Q(i, j);
      for (int c = 0; c < p; ++c) Rw(j, c) = -Rw(j, c);
    }
  }
  if (R_out) {
    *R_out = Matrix(p, p);
    for (int i = 0; i < p; ++i)
      for (int c = i; c < p; ++c) (*R_out)(i, c) = Rw(i, c);
  }
  return Q;
}

// Thin SVD A = P diag(s) Q^T: P (m x q), Q (n x q), q = min(m, n), s descending.
struct SVD {
  Matrix P, Q;
  std::vector<double> s;
  // Number of singular values above tol * s_max (default: max(m, n) * eps).
  int rank(double rtol = -1) const {
    if (s.empty() || s[0] == 0.0) return 0;
    if (rtol < 0) rtol = std::max(P.rows, Q.rows) * std::numeric_limits<double>::epsilon();
    int r = 0;
    for (double x : s) r += x > rtol * s[0];
    return r;
  }
};

// One-sided Jacobi (Hestenes): orthogonalise the columns of A by plane
// rotations applied on the right; accurate to high relative precision.
// The columns of B and V are kept as contiguous rows of Bt and Vt (the
// rotations and dot products walk them with stride 1); the arithmetic, and
// its order, is the plain textbook loop's.
inline SVD svd(const Matrix& A) {
  if (A.rows < A.cols) {  // work on A^T = Q S P^T
    SVD t = svd(transpose(A));
    return SVD{t.Q, t.P, t.s};
  }
  const int m = A.rows, n = A.cols;
  std::vector<double> Bt(static_cast<size_t>(n) * m), Vt(static_cast<size_t>(n) * n, 0.0);
  for (int r = 0; r < m; ++r)
    for (int c = 0; c < n; ++c) Bt[static_cast<size_t>(c) * m + r] = A(r, c);  // columns -> P diag(s)
  for (int c = 0; c < n; ++c) Vt[static_cast<size_t>(c) * n + c] = 1.0;
  const double eps = std::numeric_limits<double>::epsilon();
  for (int sweep = 0; sweep < 60; ++sweep) {
    bool rotated = false;
    for (int i = 0; i < n - 1; ++i) {
      double* __restrict__ bi_ = &Bt[static_cast<size_t>(i) * m];
      double* __restrict__ vi_ = &Vt[static_cast<size_t>(i) * n];
      for (int j = i + 1; j < n; ++j) {
        double* __restrict__ bj_ = &Bt[static_cast<size_t>(j) * m];
        double* __restrict__ vj_ = &Vt[static_cast<size_t>(j) * n];
        double alpha = 0, beta = 0, gamma = 0;
        for (int r = 0; r < m; ++r) {
          alpha += bi_[r] * bi_[r];
          beta += bj_[r] * bj_[r];
          gamma += bi_[r] * bj_[r];
        }
        if (gamma == 0.0 || std::fabs(gamma) <= eps * std::sqrt(alpha * beta)) continue;
        rotated = true;
        const double zeta = (beta - alpha) / (2.0 * gamma);
        const double t = (zeta >= 0 ? 1.0 : -1.0) / (std::fabs(zeta) + std::sqrt(1.0 + zeta * zeta));
        const double c = 1.0 / std::sqrt(1.0 + t * t), sn = c * t;
        for (int r = 0; r < m; ++r) {
          const double bi = bi_[r], bj = bj_[r];
          bi_[r] = c * bi - sn * bj;
          bj_[r] = sn * bi + c * bj;
        }
        for (int r = 0; r < n; ++r) {
          const double vi = vi_[r], vj = vj_[r];
          vi_[r] = c * vi - sn * vj;
          vj_[r] = sn * vi + c * vj;
        }
      }
    }
    if (!rotated) break;
  }
  std::vector<double> norms(n);
  for (int j = 0; j < n; ++j) {
    double s = 0;
    for (int r = 0; r < m; ++r) s += Bt[static_cast<size_t>(j) * m + r] * Bt[static_cast<size_t>(j) * m + r];
    norms[j] = std::sqrt(s);
  }
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return norms[a] > norms[b]; });
  SVD out{Matrix(m, n), Matrix(n, n), std::vector<double>(n)};
  for (int c = 0; c < n; ++c) {
    const int j = order[c];
    out.s[c] = norms[j];
    for (int r = 0; r < n; ++r) out.Q(r, c) = Vt[static_cast<size_t>(j) * n + r];
    // Zero singular values get a zero left vector: callers use only the
    // first rank() columns of P.
    if (norms[j] > 0)
      for (int r = 0; r < m; ++r) out.P(r, c) = Bt[static_cast<size_t>(j) * m + r] / norms[j];
  }
  return out;
}

// Moore-Penrose pseudo-inverse via the SVD; singular values at or below
// rtol * s_max count as zero (default rtol: max(m, n) * eps).
inline Matrix pinv(const Matrix& A, double rtol = -1) {
  const SVD f = svd(A);
  const int r = f.rank(rtol);
  Matrix X(A.cols, A.rows);
  for (int c = 0; c < r; ++c) {
    const double inv = 1.0 / f.s[c];
    for (int i = 0; i < A.cols; ++i) {
      const double qi = f.Q(i, c) * inv;
      for (int j = 0; j < A.rows; ++j) X(i, j) += qi * f.P(j, c);
    }
  }
  return X;
}

// Y X^+ (Y c x n, X r x n): least squares when n > r, the minimum-norm
// interpolant when n <= r, as Y * pinv(X) but by a Householder QR of the tall
// side (O(n r min(n, r)) instead of a Jacobi SVD of X: 12x faster at 64 x 128,
// 0.37 ms against 4.4 ms, measured 2026-11-28 on the CPU machine).
// When R's diagonal says X is close to rank-deficient (smallest |R_kk| below
// 1e-8 of the largest), it is Y * pinv(X) itself (the SVD's rank cut-off).
inline Matrix times_pinv(const Matrix& Y, const Matrix& X) {
  const int r = X.rows, n = X.cols, c = Y.rows;
  if (Y.cols != n) throw std::logic_error("linalg::times_pinv: Y and X have different column counts");
  const bool wide = n > r;  // X^T (n x r) is the tall side
  Matrix R;
  const Matrix Q = qr_orthonormal(wide ? transpose(X) : X, &R);  // thin Q, R q x q, q = min(r, n)
  const int q = R.rows;
  double dmax = 0, dmin = std::numeric_limits<double>::infinity();
  for (int k = 0; k < q; ++k) {
    dmax = std::max(dmax, std::fabs(R(k, k)));
    dmin = std::min(dmin, std::fabs(R(k, k)));
  }
  if (!(dmin > 1e-8 * dmax)) return matmul(Y, pinv(X));
  if (wide) {
    // X^T = Q R  =>  X^+ = Q R^-T  =>  row i of Y X^+ solves R w = (Y Q)(i, :)^T.
    const Matrix Z = matmul(Y, Q);  // c x r
    Matrix W(c, r);
    for (int i = 0; i < c; ++i)
      for (int k = r - 1; k >= 0; --k) {
        double s = Z(i, k);
        for (int j = k + 1; j < r; ++j) s -= R(k, j) * W(i, j);
        W(i, k) = s / R(k, k);
      }
    return W;
  }
  // X = Q R  =>  X^+ = R^-1 Q^T  =>  Y X^+ = U Q^T with U R = Y.
  Matrix U(c, n);
  for (int i = 0; i < c; ++i)
    for (int k = 0; k < n; ++k) {
      double s = Y(i, k);
      for (int j = 0; j < k; ++j) s -= R(j, k) * U(i, j);
      U(i, k) = s / R(k, k);
    }
  return matmul_nt(U, Q);
}

// Cholesky factor L (lower) of a symmetric positive definite A = L L^T.
inline Matrix cholesky(const Matrix& A) {
  const int n = A.rows;
  if (A.cols != n) throw std::logic_error("linalg::cholesky: not square");
  Matrix L(n, n);
  for (int j = 0; j < n; ++j) {
    double d = A(j, j);
    for (int p = 0; p < j; ++p) d -= L(j, p) * L(j, p);
    if (!(d > 0)) throw std::runtime_error("linalg::cholesky: matrix is not positive definite");
    L(j, j) = std::sqrt(d);
    for (int i = j + 1; i < n; ++i) {
      double s = A(i, j);
      for (int p = 0; p < j; ++p) s -= L(i, p) * L(j, p);
      L(i, j) = s / L(j, j);
    }
  }
  return L;
}

// X with A X = B, A symmetric positive definite (n x n), B n x c.
inline Matrix solve_spd(const Matrix& A, const Matrix& B) {
  const Matrix L = cholesky(A);
  const int n = A.rows;
  Matrix X = B;
  for (int c = 0; c < B.cols; ++c) {
    for (int i = 0; i < n; ++i) {  // L y = b
      double s = X(i, c);
      for (int p = 0; p < i; ++p) s -= L(i, p) * X(p, c);
      X(i, c) = s / L(i, i);
    }
    for (int i = n - 1; i >= 0; --i) {  // L^T x = y
      double s = X(i, c);
      for (int p = i + 1; p < n; ++p) s -= L(p, i) * X(p, c);
      X(i, c) = s / L(i, i);
    }
  }
  return X;
}

}  // namespace stsweep::linalg
