// The math of one training step (../shared/MODEL.md), written once as plain
// __host__ __device__ templates over small row-major matrices (raw pointers,
// caller-provided workspace, no STL, no allocation), shared by the CPU backend
// (host/train.cpp) and the CUDA backend.
//
// Layout. Inside a step, activations are stored with samples as ROWS: the input
// is Xs = Xn^T (N x d), hidden activations are N x w_l, labels N x m. With that
// layout every product of the data path is "C (+)= A.B with B and C row-major
// and the reduction index outermost", so the contiguous index of the output
// (a layer width) is the vector index and no activation is ever transposed.
// Weights are kept in up to two layouts: W[l] (w_l x w_{l-1}) and
// WT[l] = W[l]^T (w_{l-1} x w_l). The data path reads WT[l] (all l) and W[l]
// (l >= 2) and keeps those up to date, but not W[1] (data_refresh_w1 makes it);
// the moment path reads and keeps W[l] only.
//
// A step is two calls: *_forward (losses at the current weights; the caller
// checks divergence) then *_backward_update (W <- W - lr grad).
//
// Arithmetic order. Every output element of a product is a sequential fused
// multiply-add chain over the reduction index k = 0..K-1, starting from 0 (or
// from C for kAdd), whatever the tiling. The CPU register tiles and the
// device's per-thread register tiles (detail::gemm_team_tiled) therefore give
// bit-identical products.
// Sums of squares use 16 interleaved lanes (element i to lane i % 16 of its
// team member) combined pairwise, in vectors or scalars alike.
//
// Teams. Functions take a Team (rank(), size(), sync(), sum(x)) that splits the
// work of one trial among cooperating threads. The CPU uses SerialTeam; a CUDA
// block can pass a team whose sync() is __syncthreads() and whose sum() is a
// block reduction returning the total to every member.
#pragma once

#include <math.h>
#include <stdint.h>
#if !defined(__CUDA_ARCH__)
#include <bit>  // std::bit_cast (select_)
#endif

#include "hd.hpp"

// CPU micro-kernels with explicit vectors where the host compiler targets
// AVX-512 or AVX2+FMA (-march=native); nvcc (host and device passes) and other
// CPUs use the plain loops. Both compute the same fma chain per element.
#if !defined(__CUDACC__) && defined(__FMA__) && (defined(__AVX512F__) || defined(__AVX2__))
#include <immintrin.h>
#define STS_SIMD 1
#else
#define STS_SIMD 0
#endif

#if defined(__CUDACC__)  // nvcc, host and device passes
#define STS_UNROLL _Pragma("unroll")
#elif defined(__clang__)
#define STS_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define STS_UNROLL _Pragma("GCC unroll 64")
#else
#define STS_UNROLL
#endif

namespace stsweep::tm {

constexpr int kMaxLayers = 16;  // depth L (weights W[1..L]); bitmasks of layers fit 32 bits

// Activation codes (mirror stsweep::Activation; this header stays free of host headers).
enum Act : int { kLinear = 0, kRelu = 1, kTanh = 2 };

struct SerialTeam {
  STS_HD int rank() const { return 0; }
  STS_HD int size() const { return 1; }
  STS_HD void sync() const {}
  template <class T>
  STS_HD T sum(T x) const { return x; }
};

// ---------------------------------------------------------------- scalars --

// How far a network's training loss rose above its lowest earlier value, the
// results' loss_rise (docs/MODEL_NOTES.md, "Loss rise"): fed the full training
// loss of every step, in step order, it keeps max_t L_t / max(min_{s<t} L_s,
// floor_rtol L_0), at least 1 (1: the loss never rose). The floor keeps the
// round-off of a loss at zero (below the zero-loss tolerance, floor_rtol =
// kZeroLossRtol) from reading as a rise; non-finite losses (divergence, which
// the status reports) are not counted. One definition for every trainer.
struct LossRise {
  double lowest = 0, rise = 1;
  STS_HD void add(long long t, double loss, double loss0, double floor_rtol) {
    if (!isfinite(loss)) return;
    if (t == 0) {
      lowest = loss;
      return;
    }
    const double floor = floor_rtol * loss0;
    const double ref = lowest > floor ? lowest : floor;
    if (ref > 0 && loss / ref > rise) rise = loss / ref;
    if (loss < lowest) lowest = loss;
  }
};

STS_HD inline float fmadd(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return fmaf(a, b, c);
#elif defined(__FMA__)
  return __builtin_fmaf(a, b, c);
#else
  return fmaf(a, b, c);  // no FMA instruction: libm's, correctly rounded (slow, same bits)
#endif
}
STS_HD inline double fmadd(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return fma(a, b, c);
#elif defined(__FMA__)
  return __builtin_fma(a, b, c);
#else
  return fma(a, b, c);
#endif
}
// tanh from +, *, /, explicit fmas, a truncation and an exact power of two: the same
// bits on the CPU and the GPU (libm's and CUDA's tanh differ), and a loop over
// it vectorises (libm's is a call per element: 70% of a tanh student's
// training was spent there). tanh(a) = em / (em + 2) with em = expm1(2a) =
// 2^k expm1(r) + (2^k - 1), r = 2a - k ln2 (|r| <= ln2/2, Cody-Waite split of
// ln2) and expm1(r) one Taylor polynomial: k = 0 below 2a = ln2/2, where
// em = expm1(r) itself (no cancellation). +-1 from kCap on, where tanh rounds
// to 1. NaN stays NaN, tanh(-0) = -0. Error: TrialMath.TanhIsAccurate (at
// most 3 ulp, as with session 10's two polynomials, a Taylor one below
// 2a = 1 and exp(r) above, which cost 1.3x (float) and 1.4x (double) as much).
namespace detail {
STS_HD constexpr double inv_factorial(int n) {
  double f = 1;
  for (int i = 2; i <= n; ++i) f *= i;  // exact up to 18!
  return 1.0 / f;
}
// p <- p y + 1/n! for n = Hi - 1 down to Lo (Horner, unrolled at compile time:
// a loop inside the element loop would keep that from vectorising).
template <class Real, int Hi, int Lo>
struct Taylor {
  static STS_HD Real eval(Real p, Real y) {
    return Taylor<Real, Hi - 1, Lo>::eval(fmadd(p, y, Real(inv_factorial(Hi - 1))), y);
  }
};
template <class Real, int Lo>
struct Taylor<Real, Lo, Lo> {
  static STS_HD Real eval(Real p, Real) { return p; }
};
template <class Real>
struct TanhConst;
template <>
struct TanhConst<float> {
  using Int = int;  // k, the same width as Real (so the loops vectorise)
  static constexpr int kDeg = 7;  // Taylor degree of expm1(r), |r| <= ln2/2
  static constexpr float kCap = 9.1f;
  static constexpr float kLn2Hi = 0.693145751953125f, kLn2Lo = 1.42860676533018704e-06f;
};
template <>
struct TanhConst<double> {
  using Int = long long;
  static constexpr int kDeg = 13;
  static constexpr double kCap = 19.1;
  static constexpr double kLn2Hi = 6.93147180369123816490e-01, kLn2Lo = 1.90821492927058770002e-10;
};
}  // namespace detail

STS_HD inline float copysign_(float x, float s) { return copysignf(x, s); }
STS_HD inline double copysign_(double x, double s) { return copysign(x, s); }
STS_HD inline float fabs_(float x) { return fabsf(x); }
STS_HD inline double fabs_(double x) { return fabs(x); }
// 2^k for k in [0, 127) (float, from an int) or [0, 1023) (double, from a
// long long), from its exponent bits: exact, and it vectorises (a shift by a
// vector of counts does not, for 64-bit lanes).
STS_HD inline float pow2_(int k) {
#if defined(__CUDA_ARCH__)
  return __int_as_float((k + 127) << 23);
#else
  return std::bit_cast<float>(static_cast<uint32_t>(k + 127) << 23);
#endif
}
STS_HD inline double pow2_(long long k) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double((k + 1023) << 52);
#else
  return std::bit_cast<double>(static_cast<uint64_t>(k + 1023) << 52);
#endif
}
// c ? a : b. On the host as a mask on the bits: both sides are computed, so
// g++ neither moves their arithmetic into branches nor (trapping maths) keeps
// a branch in a loop, and a loop over tanh_ vectorises. The same bits either way.
STS_HD inline float select_(bool c, float a, float b) {
#if defined(__CUDA_ARCH__)
  return c ? a : b;
#else
  const uint32_t m = 0u - static_cast<uint32_t>(c);
  return std::bit_cast<float>((m & std::bit_cast<uint32_t>(a)) | (~m & std::bit_cast<uint32_t>(b)));
#endif
}
STS_HD inline double select_(bool c, double a, double b) {
#if defined(__CUDA_ARCH__)
  return c ? a : b;
#else
  const uint64_t m = uint64_t{0} - static_cast<uint64_t>(c);
  return std::bit_cast<double>((m & std::bit_cast<uint64_t>(a)) | (~m & std::bit_cast<uint64_t>(b)));
#endif
}

template <class Real>
#if defined(__GNUC__) && !defined(__CUDA_ARCH__)
__attribute__((always_inline))  // inlined into the element loops (double's is large), which then vectorise
#endif
STS_HD inline Real tanh_(Real x) {
  using C = detail::TanhConst<Real>;
  const Real a = fabs_(x);
  const Real y = Real(2) * select_(a < C::kCap, a, C::kCap);  // NaN: kCap here, restored below
  // k = round(y / ln2): y >= 0, so truncation is floor (and vectorises, floor does not).
  const typename C::Int k = static_cast<typename C::Int>(fmadd(y, Real(1.44269504088896340736), Real(0.5)));
  const Real kf = static_cast<Real>(k);
  const Real r = fmadd(-kf, C::kLn2Lo, fmadd(-kf, C::kLn2Hi, y));  // k = 0: r = y exactly
  const Real pm = detail::Taylor<Real, C::kDeg, 1>::eval(Real(detail::inv_factorial(C::kDeg)), r) * r;
  const Real two_k = pow2_(k);  // 2a < 2 kCap: k <= 27 or 56 (2^k - 1 rounds from 2^24 or 2^53 on,
                                // where em is so large that tanh is 1 to the last bit anyway)
  const Real em = fmadd(two_k, pm, two_k - Real(1));
  Real t = em / (em + Real(2));
  t = select_(a < C::kCap, t, Real(1));
  t = select_(x != x, x, t);
  return copysign_(t, x);
}

template <class Real>
STS_HD inline Real activate(int act, Real z) {
  if (act == kRelu) return z > Real(0) ? z : Real(0);
  if (act == kTanh) return tanh_(z);
  return z;
}
// phi'(z) from the pre-activation z and the activation h = phi(z).
template <class Real>
STS_HD inline Real activate_deriv(int act, Real z, Real h) {
  if (act == kRelu) return z > Real(0) ? Real(1) : Real(0);
  if (act == kTanh) return Real(1) - h * h;
  return Real(1);
}

// ------------------------------------------------------------------ GEMM --
// C (M x Nc, row-major, ldc) <- mode(C, A.B) with A(i,k) = A[i*sai + k*sak]
// (so A row-major is sai = lda, sak = 1 and A^T of a row-major K x M matrix is
// sai = 1, sak = lda) and B row-major K x Nc (ldb).
enum GemmMode : int {
  kSet = 0,  // C = A.B
  kAdd = 1,  // C = C + A.B   (the chain starts from C)
  kSub = 2,  // C = C - alpha * (A.B)   (gradient-descent update fused into the product)
};

namespace detail {

// Register tile: MR rows x NC columns of C, all K products. NC and MR are
// compile-time so the accumulators live in vector registers.
template <class Real, int MR, int NC, int MODE>
STS_HD inline void gemm_tile(int K, const Real* __restrict__ A, int sai, int sak,
                             const Real* __restrict__ B, int ldb, Real* __restrict__ C, int ldc,
                             Real alpha) {
  Real c[MR][NC];
  STS_UNROLL for (int r = 0; r < MR; ++r) {
    STS_UNROLL for (int j = 0; j < NC; ++j) c[r][j] = MODE == kAdd ? C[r * ldc + j] : Real(0);
  }
  for (int k = 0; k < K; ++k) {
    const Real* __restrict__ b = B + static_cast<long>(k) * ldb;
    const Real* __restrict__ a = A + static_cast<long>(k) * sak;
    STS_UNROLL for (int r = 0; r < MR; ++r) {
      const Real ar = a[r * sai];
      STS_UNROLL for (int j = 0; j < NC; ++j) c[r][j] = fmadd(ar, b[j], c[r][j]);
    }
  }
  if (MODE == kSub) {
    // All loads of C before any store: the compiler cannot know that rows
    // (ldc apart) do not overlap, and interleaving would stop vectorisation.
    Real old[MR][NC];
    STS_UNROLL for (int r = 0; r < MR; ++r) {
      STS_UNROLL for (int j = 0; j < NC; ++j) old[r][j] = C[r * ldc + j];
    }
    STS_UNROLL for (int r = 0; r < MR; ++r) {
      STS_UNROLL for (int j = 0; j < NC; ++j) C[r * ldc + j] = fmadd(-alpha, c[r][j], old[r][j]);
    }
  } else {
    STS_UNROLL for (int r = 0; r < MR; ++r) {
      STS_UNROLL for (int j = 0; j < NC; ++j) C[r * ldc + j] = c[r][j];
    }
  }
}

// Narrow remainder tile: nc (< NCMAX) columns known at run time.
template <class Real, int MR, int NCMAX, int MODE>
STS_HD inline void gemm_tile_var(int nc, int K, const Real* __restrict__ A, int sai, int sak,
                                 const Real* __restrict__ B, int ldb, Real* __restrict__ C,
                                 int ldc, Real alpha) {
  Real c[MR][NCMAX];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < nc; ++j) c[r][j] = MODE == kAdd ? C[r * ldc + j] : Real(0);
  for (int k = 0; k < K; ++k) {
    const Real* b = B + static_cast<long>(k) * ldb;
    const Real* a = A + static_cast<long>(k) * sak;
    for (int r = 0; r < MR; ++r) {
      const Real ar = a[r * sai];
      for (int j = 0; j < nc; ++j) c[r][j] = fmadd(ar, b[j], c[r][j]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < nc; ++j) {
      if (MODE == kSub)
        C[r * ldc + j] = fmadd(-alpha, c[r][j], C[r * ldc + j]);
      else
        C[r * ldc + j] = c[r][j];
    }
}

// All rows [i, M) of one column block, in tiles of MR, MR/2, ..., 1 rows.
// `t` numbers the tiles so a team can deal them out.
template <class Real, int MR, int NC, int MODE, class Team>
STS_HD inline void gemm_rows(const Team& team, int& t, int i, int M, int nc, int K, const Real* A,
                             int sai, int sak, const Real* B, int ldb, Real* C, int ldc,
                             Real alpha) {
  for (; i + MR <= M; i += MR, ++t) {
    if (t % team.size() != team.rank()) continue;
    if (nc == NC)
      gemm_tile<Real, MR, NC, MODE>(K, A + static_cast<long>(i) * sai, sai, sak, B, ldb,
                                    C + static_cast<long>(i) * ldc, ldc, alpha);
    else
      gemm_tile_var<Real, MR, NC, MODE>(nc, K, A + static_cast<long>(i) * sai, sai, sak, B, ldb,
                                        C + static_cast<long>(i) * ldc, ldc, alpha);
  }
  if constexpr (MR > 1)
    if (i < M) gemm_rows<Real, MR / 2, NC, MODE>(team, t, i, M, nc, K, A, sai, sak, B, ldb, C, ldc,
                                                 alpha);
}

// ------------------------------------------------- team GEMM (the device) --
// The GEMM of a team of many threads (a CUDA block: tm::gemm's device branch
// calls it). Plain C++, no intrinsics and no sync inside, so a host test can
// run it for every rank of an emulated team in turn.
//
// Each member computes tiles of MR x NR elements of C; a tile (gx, gy) holds
// rows gy + p*GY (p < MR) and columns gx + q*GX (q < NR), GY = ceil(M/MR),
// GX = ceil(Nc/NR), and tile t is (t % GX, t / GX), dealt out round-robin.
// Why strided, not contiguous, columns: consecutive ranks take consecutive
// gx, so each of a thread's NR loads of B(k, .) is a run of consecutive words
// across the warp (conflict-free shared memory, coalesced global), and all
// ranks with the same gy (a whole warp when GX >= 32) load the same A(i, k), a
// broadcast. Strided rows likewise make the A loads of a warp that spans
// several gy consecutive words when A is transposed (sai = 1). Per k a thread
// issues MR + NR loads for MR * NR fmas, all from registers. (A row-major A
// whose rows are a multiple of 32 words apart, such as X and H with width 64,
// puts a warp's rows in one bank: docs/PERFORMANCE.md, GPU, counts the cost.)
//
// Every element is still the one documented chain: c = 0 (kSet, kSub) or C
// (kAdd), c = fma(A(i,k), B(k,j), c) for k = 0..K-1, then C = c or
// C = fma(-alpha, c, C) (kSub). Slots past the edge (row >= M or column >= Nc)
// compute a clamped copy of the last row/column and are never stored, so the
// k loop carries no predicate.
// Four consecutive elements p[0..3] (p 16-byte aligned): one 128-bit load for
// float on the device (two for double), plain loads on the host. Only the loads change; the fma chain each
// element of C follows does not.
template <class Real>
STS_HD inline void load4(const Real* p, Real (&v)[4]) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(Real) == 4) {
    const float4 x = *reinterpret_cast<const float4*>(p);
    v[0] = x.x, v[1] = x.y, v[2] = x.z, v[3] = x.w;
  } else {
    const double2 x = *reinterpret_cast<const double2*>(p);
    const double2 y = *reinterpret_cast<const double2*>(p + 2);
    v[0] = x.x, v[1] = x.y, v[2] = y.x, v[3] = y.y;
  }
#else
  v[0] = p[0], v[1] = p[1], v[2] = p[2], v[3] = p[3];
#endif
}

// Shared-memory tracing for the host emulation's bank model (SmemTrace in
// kernels/device_emu.hpp): a team with `static constexpr bool kTraceShared =
// true` hears of every load and store of the device GEMM tiles, in the order
// a thread issues them, and of their FMAs. Compiled out for every other team.
template <class Team>
STS_HD constexpr bool team_traces() {
  if constexpr (requires { Team::kTraceShared; })
    return Team::kTraceShared;
  else
    return false;
}

// Whether every operand a team's GEMM tiles touch lies in shared memory
// (`static constexpr bool kSharedOperands = true`: the fused kernel with its
// data in shared memory, the warp path). On the device the tiles then tell
// the compiler so (__isShared), and it emits shared-space loads with 32-bit
// addresses (LDS) instead of generic ones that must resolve the space at run
// time (LD, 64-bit addresses): the operands reach the tiles through the
// per-layer pointer tables, which hide where they point. A promise, not a
// check: a team that says so must keep it (docs/PERFORMANCE.md, GPU).
template <class Team>
STS_HD constexpr bool team_shared_operands() {
  if constexpr (requires { Team::kSharedOperands; })
    return Team::kSharedOperands;
  else
    return false;
}
// p, with the promise above attached where the team makes it (the compiler's
// address-space inference does not always carry it across a loop's pointer).
template <class Team, class T>
STS_HD inline T* shared_hint(T* p) {
#if defined(__CUDA_ARCH__)
  if constexpr (team_shared_operands<Team>()) __builtin_assume(__isShared(p));
#endif
  return p;
}

// One element load / store for the bank model (team_traces); nothing elsewhere.
template <class Team, class T>
STS_HD inline void trace_load(const Team& team, const T* p) {
  if constexpr (team_traces<Team>()) team.trace_access(p, sizeof(T), false);
}
template <class Team, class T>
STS_HD inline void trace_store(const Team& team, const T* p) {
  if constexpr (team_traces<Team>()) team.trace_access(p, sizeof(T), true);
}

// VA (vector A): when A is row-major along k (sak == 1) with rows and base
// aligned to 4 elements, a thread loads A(i, k..k+3) at once (load4): per four
// k, MR wide loads of A instead of 4 MR scalar ones. A warp's A loads are
// broadcasts or few distinct rows, so this cuts the shared-memory wavefronts
// of the forward products (docs/PERFORMANCE.md, GPU). K % 4 is done scalar.
// With VA, a transposed A (sai == 1, sak aligned, M a multiple of MR and MR of
// 4) instead gives each thread MR consecutive rows (i = gy MR + p, not
// gy + p GY) and loads A(i..i+3, k) at once: the weight-gradient products
// (X^T D, H^T D). Either way each element is the same fma chain over k.
template <class Real, int MR, int NR, int MODE, bool VA, class Team>
STS_HD inline void gemm_team_tile(const Team& team, int M, int Nc, int K, const Real* A, int sai,
                                  int sak, const Real* B, int ldb, Real* C, int ldc, Real alpha) {
  A = shared_hint<Team>(A);
  B = shared_hint<Team>(B);
  C = shared_hint<Team>(C);
  const int GY = (M + MR - 1) / MR, GX = (Nc + NR - 1) / NR;
  const int tiles = GX * GY;
  const bool va = VA && sak == 1 && sai % 4 == 0 && reinterpret_cast<uintptr_t>(A) % 16 == 0;
  const bool vi = VA && !va && MR % 4 == 0 && sai == 1 && sak % 4 == 0 && M % MR == 0 &&
                  reinterpret_cast<uintptr_t>(A) % 16 == 0;
  for (int t = team.rank(); t < tiles; t += team.size()) {
    const int gx = t % GX, gy = t / GX;
    int ao[MR], co[MR], bo[NR];  // offsets of A(i, 0), C(i, 0), B(0, j)
    bool rv[MR], cv[NR];         // row / column inside C
    STS_UNROLL for (int p = 0; p < MR; ++p) {
      const int i = vi ? gy * MR + p : gy + p * GY;
      rv[p] = i < M;
      const int ic = rv[p] ? i : M - 1;
      ao[p] = ic * sai;
      co[p] = ic * ldc;
    }
    STS_UNROLL for (int q = 0; q < NR; ++q) {
      const int j = gx + q * GX;
      cv[q] = j < Nc;
      bo[q] = cv[q] ? j : Nc - 1;
    }
    Real c[MR][NR];
    STS_UNROLL for (int p = 0; p < MR; ++p) {
      STS_UNROLL for (int q = 0; q < NR; ++q) {
        c[p][q] = MODE == kAdd && rv[p] && cv[q] ? C[co[p] + bo[q]] : Real(0);
        if constexpr (team_traces<Team>())
          if (MODE == kAdd && rv[p] && cv[q]) team.trace_access(C + co[p] + bo[q], sizeof(Real), false);
      }
    }
    // The row pointers a, a4, b step along k. With shared operands they are
    // formed from A and B afresh each k instead: a pointer carried from one
    // loop into the next loses the hint (shared_hint) and its loads turn
    // generic; in global memory, carried pointers need fewer registers.
    constexpr bool fresh = team_shared_operands<Team>();
    int k = 0;
    const Real* b = B;
    if (VA && va) {
      for (; k + 4 <= K; k += 4) {
        Real av[MR][4];
        STS_UNROLL for (int p = 0; p < MR; ++p) {
          load4(A + ao[p] + k, av[p]);
          if constexpr (team_traces<Team>()) team.trace_access(A + ao[p] + k, 4 * sizeof(Real), false);
        }
        STS_UNROLL for (int kk = 0; kk < 4; ++kk, b += ldb) {
          if constexpr (fresh) b = B + static_cast<long>(k + kk) * ldb;
          Real bv[NR];
          STS_UNROLL for (int q = 0; q < NR; ++q) bv[q] = b[bo[q]];
          if constexpr (team_traces<Team>()) {
            for (int q = 0; q < NR; ++q) team.trace_access(b + bo[q], sizeof(Real), false);
            team.trace_fma(MR * NR);
          }
          STS_UNROLL for (int p = 0; p < MR; ++p) {
            STS_UNROLL for (int q = 0; q < NR; ++q) c[p][q] = fmadd(av[p][kk], bv[q], c[p][q]);
          }
        }
      }
    }
    if constexpr (VA && MR % 4 == 0) {
      if (vi) {
        const Real* a4 = A + ao[0];  // A(gy MR, 0): rows ao[0] .. ao[0] + MR - 1 are consecutive
        for (; k < K; ++k, a4 += sak, b += ldb) {
          if constexpr (fresh) a4 = A + ao[0] + static_cast<long>(k) * sak, b = B + static_cast<long>(k) * ldb;
          Real av[MR], bv[NR];
          STS_UNROLL for (int p = 0; p < MR; p += 4) {
            Real v4[4];
            load4(a4 + p, v4);
            STS_UNROLL for (int u = 0; u < 4; ++u) av[p + u] = v4[u];
            if constexpr (team_traces<Team>()) team.trace_access(a4 + p, 4 * sizeof(Real), false);
          }
          STS_UNROLL for (int q = 0; q < NR; ++q) bv[q] = b[bo[q]];
          if constexpr (team_traces<Team>()) {
            for (int q = 0; q < NR; ++q) team.trace_access(b + bo[q], sizeof(Real), false);
            team.trace_fma(MR * NR);
          }
          STS_UNROLL for (int p = 0; p < MR; ++p) {
            STS_UNROLL for (int q = 0; q < NR; ++q) c[p][q] = fmadd(av[p], bv[q], c[p][q]);
          }
        }
      }
    }
    const Real* a = A + static_cast<long>(k) * sak;
    for (; k < K; ++k, a += sak, b += ldb) {
      if constexpr (fresh) a = A + static_cast<long>(k) * sak, b = B + static_cast<long>(k) * ldb;
      Real av[MR], bv[NR];
      STS_UNROLL for (int p = 0; p < MR; ++p) av[p] = a[ao[p]];
      STS_UNROLL for (int q = 0; q < NR; ++q) bv[q] = b[bo[q]];
      if constexpr (team_traces<Team>()) {
        for (int p = 0; p < MR; ++p) team.trace_access(a + ao[p], sizeof(Real), false);
        for (int q = 0; q < NR; ++q) team.trace_access(b + bo[q], sizeof(Real), false);
        team.trace_fma(MR * NR);
      }
      STS_UNROLL for (int p = 0; p < MR; ++p) {
        STS_UNROLL for (int q = 0; q < NR; ++q) c[p][q] = fmadd(av[p], bv[q], c[p][q]);
      }
    }
    STS_UNROLL for (int p = 0; p < MR; ++p) {
      STS_UNROLL for (int q = 0; q < NR; ++q) {
        if (!rv[p] || !cv[q]) continue;
        Real* o = C + co[p] + bo[q];
        *o = MODE == kSub ? fmadd(-alpha, c[p][q], *o) : c[p][q];
        if constexpr (team_traces<Team>()) {
          if (MODE == kSub) team.trace_access(o, sizeof(Real), false);
          team.trace_access(o, sizeof(Real), true);
        }
      }
    }
  }
}

// The tile shapes gemm_team_tiled chooses from, largest first: shape s is
// gemm_team_tile_mr(s) x gemm_team_tile_nr(s), s = 0..5 (8x4, 4x4, 4x2, 2x2,
// 2x1, 1x1).
constexpr int kTeamTiles = 6;
STS_HD constexpr int gemm_team_tile_mr(int s) {
  switch (s) {
    case 0: return 8;
    case 1: case 2: return 4;
    case 3: case 4: return 2;
    default: return 1;
  }
}
STS_HD constexpr int gemm_team_tile_nr(int s) {
  switch (s) {
    case 0: case 1: return 4;
    case 2: case 3: return 2;
    default: return 1;
  }
}

// The shape gemm_team_tiled uses for an M x Nc product on `members` threads:
// the one whose busiest member computes the fewest elements (rounds of tiles
// x MR x NR), ties to the larger tile (fewer loads per fma). For a 256-thread
// block: 8x4 for 128 x 64, 4x4 for 64 x 64, 4x2 for 128 x 16 and 2x2 for
// 16 x 64, one tile per thread each; products with fewer elements than
// threads get 1x1 (one element per thread, as before).
STS_HD inline int gemm_team_tile_shape(int M, int Nc, int members) {
  int best = 0;
  long best_cost = -1;
  for (int s = 0; s < kTeamTiles; ++s) {
    const int mr = gemm_team_tile_mr(s), nr = gemm_team_tile_nr(s);
    const long tiles = static_cast<long>((M + mr - 1) / mr) * ((Nc + nr - 1) / nr);
    const long cost = (tiles + members - 1) / members * (mr * nr);
    if (best_cost < 0 || cost < best_cost) {
      best = s;
      best_cost = cost;
    }
  }
  return best;
}

// Whether the team takes v5's one-column tiles (a team's `one_column` member,
// set from TrainArgs::one_column / STSWEEP_CUDA_ONE_COLUMN; true without one).
template <class Team>
STS_HD inline bool team_one_column(const Team& t) {
  if constexpr (requires { t.one_column; })
    return t.one_column;
  else
    return true;
}

// C (M x Nc) <- mode(C, A.B) by a team, each member its share of the tiles;
// the same arguments as tm::gemm. All members must pass the same arguments.
template <int MODE, bool VA = false, class Real, class Team>
STS_HD inline void gemm_team_tiled(const Team& team, int M, int Nc, int K, const Real* A, int sai,
                                   int sak, const Real* B, int ldb, Real* C, int ldc,
                                   Real alpha = Real(1)) {
  if (M <= 0 || Nc <= 0) return;
  static_assert(gemm_team_tile_mr(0) == 8 && gemm_team_tile_nr(0) == 4 &&
                gemm_team_tile_mr(2) == 4 && gemm_team_tile_nr(2) == 2 &&
                gemm_team_tile_mr(4) == 2 && gemm_team_tile_nr(4) == 1,
                "the cases below follow gemm_team_tile_mr/nr");
  const int shape = gemm_team_tile_shape(M, Nc, team.size());
  if constexpr (VA) {
    if (team_one_column(team)) {
    // Where 128-bit A loads apply, a one-column tile of the same size is
    // cheaper in shared-memory wavefronts than the square-ish one (a warp's
    // B loads fill whole wavefronts, its A loads are one broadcast chunk per
    // half warp): bench_smem_model. Same rounds of tiles, same chains.
    const bool a16 = reinterpret_cast<uintptr_t>(A) % 16 == 0;
    if (shape == 3 && a16 && sai == 1 && sak % 4 == 0 && M % 4 == 0) {
      gemm_team_tile<Real, 4, 1, MODE, VA>(team, M, Nc, K, A, sai, sak, B, ldb, C, ldc, alpha);
      return;
    }
    if (shape == 2 && a16 && sak == 1 && sai % 4 == 0 && M % 8 == 0) {
      gemm_team_tile<Real, 8, 1, MODE, VA>(team, M, Nc, K, A, sai, sak, B, ldb, C, ldc, alpha);
      return;
    }
    }
  }
  switch (shape) {
    case 0:
      gemm_team_tile<Real, 8, 4, MODE, VA>(team, M, Nc, K, A, sai, sak, B, ldb, C, ldc, alpha);
      break;
    case 1:
      gemm_team_tile<Real, 4, 4, MODE, VA>(team, M, Nc, K, A, sai, sak, B, ldb, C, ldc, alpha);
      break;
    case 2:
      gemm_team_tile<Real, 4, 2, MODE, VA>(team, M, Nc, K, A, sai, sak, B, ldb, C, ldc, alpha);
      break;
    case 3:
      gemm_team_tile<Real, 2, 2, MODE, VA>(team, M, Nc, K, A, sai, sak, B, ldb, C, ldc, alpha);
      break;
    case 4:
      gemm_team_tile<Real, 2, 1, MODE, VA>(team, M, Nc, K, A, sai, sak, B, ldb, C, ldc, alpha);
      break;
    default:
      gemm_team_tile<Real, 1, 1, MODE, VA>(team, M, Nc, K, A, sai, sak, B, ldb, C, ldc, alpha);
      break;
  }
}

}  // namespace detail

#if STS_SIMD
namespace simd {
// One vector register of Real: load/store (unaligned), broadcast, fma.
template <class Real, int Bits>
struct Vec;
template <>
struct Vec<float, 256> {
  using T = __m256;
  static constexpr int W = 8;
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static T set1(float a) { return _mm256_set1_ps(a); }
  static T zero() { return _mm256_setzero_ps(); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm256_mul_ps(a, b); }
};
template <>
struct Vec<double, 256> {
  using T = __m256d;
  static constexpr int W = 4;
  static T load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, T v) { _mm256_storeu_pd(p, v); }
  static T set1(double a) { return _mm256_set1_pd(a); }
  static T zero() { return _mm256_setzero_pd(); }
  static T fma(T a, T b, T c) { return _mm256_fmadd_pd(a, b, c); }
  static T sub(T a, T b) { return _mm256_sub_pd(a, b); }
  static T mul(T a, T b) { return _mm256_mul_pd(a, b); }
};
#if defined(__AVX512F__)
template <>
struct Vec<float, 512> {
  using T = __m512;
  static constexpr int W = 16;
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T set1(float a) { return _mm512_set1_ps(a); }
  static T zero() { return _mm512_setzero_ps(); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T mul(T a, T b) { return _mm512_mul_ps(a, b); }
};
template <>
struct Vec<double, 512> {
  using T = __m512d;
  static constexpr int W = 8;
  static T load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, T v) { _mm512_storeu_pd(p, v); }
  static T set1(double a) { return _mm512_set1_pd(a); }
  static T zero() { return _mm512_setzero_pd(); }
  static T fma(T a, T b, T c) { return _mm512_fmadd_pd(a, b, c); }
  static T sub(T a, T b) { return _mm512_sub_pd(a, b); }
  static T mul(T a, T b) { return _mm512_mul_pd(a, b); }
};
constexpr int kWideBits = 512;
#else
constexpr int kWideBits = 256;
#endif

// MR rows x NV vectors of C in registers; the same chain as detail::gemm_tile.
template <class Real, int Bits, int MR, int NV, int MODE>
inline void tile(int K, const Real* __restrict__ A, int sai, int sak, const Real* __restrict__ B,
                 int ldb, Real* __restrict__ C, int ldc, Real alpha) {
  using S = Vec<Real, Bits>;
  constexpr int W = S::W;
  typename S::T c[MR][NV];
  STS_UNROLL for (int r = 0; r < MR; ++r) {
    STS_UNROLL for (int v = 0; v < NV; ++v) c[r][v] = MODE == 1 ? S::load(C + r * ldc + v * W) : S::zero();
  }
  for (int k = 0; k < K; ++k) {
    const Real* __restrict__ b = B + static_cast<long>(k) * ldb;
    const Real* __restrict__ a = A + static_cast<long>(k) * sak;
    typename S::T bv[NV];
    STS_UNROLL for (int v = 0; v < NV; ++v) bv[v] = S::load(b + v * W);
    STS_UNROLL for (int r = 0; r < MR; ++r) {
      const typename S::T ar = S::set1(a[r * sai]);
      STS_UNROLL for (int v = 0; v < NV; ++v) c[r][v] = S::fma(ar, bv[v], c[r][v]);
    }
  }
  const typename S::T na = S::set1(-alpha);
  STS_UNROLL for (int r = 0; r < MR; ++r) {
    STS_UNROLL for (int v = 0; v < NV; ++v) {
      Real* p = C + r * ldc + v * W;
      S::store(p, MODE == 2 ? S::fma(na, c[r][v], S::load(p)) : c[r][v]);
    }
  }
}

// All rows [i, M) of one column block, tiles of MR, MR/2, ..., 1 rows.
template <class Real, int Bits, int MR, int NV, int MODE, class Team>
inline void rows(const Team& team, int& t, int i, int M, int K, const Real* A, int sai, int sak,
                 const Real* B, int ldb, Real* C, int ldc, Real alpha) {
  for (; i + MR <= M; i += MR, ++t)
    if (t % team.size() == team.rank())
      tile<Real, Bits, MR, NV, MODE>(K, A + static_cast<long>(i) * sai, sai, sak, B, ldb,
                                     C + static_cast<long>(i) * ldc, ldc, alpha);
  if constexpr (MR > 1)
    if (i < M) rows<Real, Bits, MR / 2, NV, MODE>(team, t, i, M, K, A, sai, sak, B, ldb, C, ldc, alpha);
}
}  // namespace simd
#endif

// Whether a team's tiles load A four k at a time (detail::gemm_team_tile's
// VA): `static constexpr bool kVectorA` in the team, false when absent.
template <class Team>
STS_HD constexpr bool team_vector_a() {
  if constexpr (requires { Team::kVectorA; })
    return Team::kVectorA;
  else
    return false;
}

template <int MODE, class Real, class Team>
STS_HD inline void gemm(const Team& team, int M, int Nc, int K, const Real* A, int sai, int sak,
                        const Real* B, int ldb, Real* C, int ldc, Real alpha = Real(1)) {
#if defined(__CUDA_ARCH__)
  // Register tiles per thread (detail::gemm_team_tiled), the same fma chain
  // per element as the CPU tiles.
  detail::gemm_team_tiled<MODE, team_vector_a<Team>()>(team, M, Nc, K, A, sai, sak, B, ldb, C, ldc,
                                                       alpha);
#else
  // A host team that emulates device threads (kernels/device_emu.cpp) says so
  // with `static constexpr bool kDeviceTiles = true` and runs the device's tiles.
  if constexpr (requires { Team::kDeviceTiles; }) {
    if constexpr (Team::kDeviceTiles) {
      detail::gemm_team_tiled<MODE, team_vector_a<Team>()>(team, M, Nc, K, A, sai, sak, B, ldb, C,
                                                           ldc, alpha);
      return;
    }
  }
#endif
#if defined(__CUDA_ARCH__)
#elif STS_SIMD
  // Column blocks of 2 wide vectors (8 rows: 16 accumulators), 1 wide vector
  // (16 rows), one 256-bit vector (16 rows), then a narrow scalar rest.
  constexpr int Wb = simd::kWideBits;
  constexpr int V = simd::Vec<Real, Wb>::W, V2 = simd::Vec<Real, 256>::W;
  constexpr int MR = Wb == 512 ? 8 : 4;  // 32 registers with AVX-512, 16 with AVX2
  int t = 0, j = 0;
  for (; j + 2 * V <= Nc; j += 2 * V)
    simd::rows<Real, Wb, MR, 2, MODE>(team, t, 0, M, K, A, sai, sak, B + j, ldb, C + j, ldc, alpha);
  if (V > V2 && j + V <= Nc) {
    simd::rows<Real, Wb, 2 * MR, 1, MODE>(team, t, 0, M, K, A, sai, sak, B + j, ldb, C + j, ldc,
                                          alpha);
    j += V;
  }
  if (j + V2 <= Nc) {
    simd::rows<Real, 256, 2 * MR, 1, MODE>(team, t, 0, M, K, A, sai, sak, B + j, ldb, C + j, ldc,
                                           alpha);
    j += V2;
  }
  if (j < Nc)
    detail::gemm_rows<Real, 8, 8, MODE>(team, t, 0, M, Nc - j, K, A, sai, sak, B + j, ldb, C + j,
                                        ldc, alpha);
#else
  // Column blocks of 2V, V, V/2 (V = lanes of a 64-byte vector) and a narrow
  // rest; accumulators = MR x NC / V vector registers (16 for the wide tiles).
  constexpr int V = 64 / static_cast<int>(sizeof(Real));
  int t = 0, j = 0;
  for (; j + 2 * V <= Nc; j += 2 * V)
    detail::gemm_rows<Real, 8, 2 * V, MODE>(team, t, 0, M, 2 * V, K, A, sai, sak, B + j, ldb,
                                            C + j, ldc, alpha);
  if (j + V <= Nc) {
    detail::gemm_rows<Real, 16, V, MODE>(team, t, 0, M, V, K, A, sai, sak, B + j, ldb, C + j, ldc,
                                         alpha);
    j += V;
  }
  if (j + V / 2 <= Nc) {
    detail::gemm_rows<Real, 16, V / 2, MODE>(team, t, 0, M, V / 2, K, A, sai, sak, B + j, ldb,
                                             C + j, ldc, alpha);
    j += V / 2;
  }
  if (j < Nc)
    detail::gemm_rows<Real, 8, V / 2, MODE>(team, t, 0, M, Nc - j, K, A, sai, sak, B + j, ldb,
                                            C + j, ldc, alpha);
#endif
}

// Named forms (row-major, leading dimensions lda, ldb, ldc).
// C (M x Nc) mode= A.B, A M x K, B K x Nc.
template <int MODE, class Real, class Team>
STS_HD inline void gemm_nn(const Team& team, int M, int Nc, int K, const Real* A, int lda,
                           const Real* B, int ldb, Real* C, int ldc, Real alpha = Real(1)) {
  gemm<MODE>(team, M, Nc, K, A, lda, 1, B, ldb, C, ldc, alpha);
}
// C (M x Nc) mode= A^T.B, A K x M, B K x Nc.
template <int MODE, class Real, class Team>
STS_HD inline void gemm_tn(const Team& team, int M, int Nc, int K, const Real* A, int lda,
                           const Real* B, int ldb, Real* C, int ldc, Real alpha = Real(1)) {
  gemm<MODE>(team, M, Nc, K, A, 1, lda, B, ldb, C, ldc, alpha);
}
// C (M x Nc) mode= A.B^T, A M x K, B Nc x K: dot products over contiguous k, the
// same fma chain per element; plain loops (the steps never need this form).
template <int MODE, class Real, class Team>
STS_HD inline void gemm_nt(const Team& team, int M, int Nc, int K, const Real* A, int lda,
                           const Real* B, int ldb, Real* C, int ldc, Real alpha = Real(1)) {
  for (int e = team.rank(); e < M * Nc; e += team.size()) {
    const int i = e / Nc, j = e % Nc;
    Real c = MODE == kAdd ? C[i * ldc + j] : Real(0);
    for (int k = 0; k < K; ++k) c = fmadd(A[i * lda + k], B[j * ldb + k], c);
    C[i * ldc + j] = MODE == kSub ? fmadd(-alpha, c, C[i * ldc + j]) : c;
  }
}

// Gradient-descent update W <- W - lr G over n elements.
template <class Real, class Team>
STS_HD inline void gd_update(const Team& team, int n, Real* __restrict__ W,
                             const Real* __restrict__ G, Real lr) {
  W = detail::shared_hint<Team>(W);
  G = detail::shared_hint<Team>(G);
  for (int i = team.rank(); i < n; i += team.size()) {
    detail::trace_load(team, G + i);
    detail::trace_load(team, W + i);
    detail::trace_store(team, W + i);
    W[i] = fmadd(-lr, G[i], W[i]);
  }
}

// dst (cols x rows) = src^T, src rows x cols, both row-major and dense.
// Teams of whole warps, with cols a multiple of 32 and rows a multiple of 32
// or a power of two below it (every transpose of the standard grids), move
// R x 32 tiles (R = min(rows, 32)) by diagonals: lane t of a warp moves
// element (i0 + (t / (32 / R) + d) % R, j0 + t), so the warp's 32 loads and
// its 32 stores each touch 32 different shared-memory banks (a plain loop
// conflicts 16- or 32-way on one side). Other shapes and the CPU's team of
// one take the elements of dst in turn (a team of one by two nested loops).
// A copy: the bits are the same either way.
template <class Real, class Team>
STS_HD inline void transpose(const Team& team, int rows, int cols, const Real* __restrict__ src,
                             Real* __restrict__ dst) {
  src = detail::shared_hint<Team>(src);
  dst = detail::shared_hint<Team>(dst);
  const int R = rows < 32 ? rows : 32;
  if (team.size() % 32 == 0 && cols % 32 == 0 && R > 0 && 32 % R == 0 && rows % R == 0) {
    const int lane = team.rank() % 32, warps = team.size() / 32;
    const int per = 32 / R;  // lanes that share a row of a diagonal
    const int tiles_c = cols / 32;
    const int items = rows / R * tiles_c * R;  // (tile, diagonal) pairs
    for (int w = team.rank() / 32; w < items; w += warps) {
      const int d = w % R, tile = w / R;
      const int i = tile / tiles_c * R + (lane / per + d) % R;
      const int j = tile % tiles_c * 32 + lane;
      detail::trace_load(team, src + i * cols + j);
      detail::trace_store(team, dst + j * rows + i);
      dst[j * rows + i] = src[i * cols + j];
    }
    return;
  }
  if (team.size() == 1) {  // the CPU: the same order, no division per element
    // (session 4 routed a team of one through the loop below, with e / rows
    // per element: the CPU's moment step took twice as long, 47% of it here)
    for (int j = 0; j < cols; ++j)
      for (int i = 0; i < rows; ++i) {
        detail::trace_load(team, src + i * cols + j);
        detail::trace_store(team, dst + j * rows + i);
        dst[j * rows + i] = src[i * cols + j];
      }
    return;
  }
  const int n = rows * cols;
  for (int e = team.rank(); e < n; e += team.size()) {
    const int j = e / rows, i = e - j * rows;
    detail::trace_load(team, src + i * cols + j);
    detail::trace_store(team, dst + e);
    dst[e] = src[i * cols + j];
  }
}

// ------------------------------------------------------------ reductions --
// Sums use 16 interleaved partial sums (fixed order), combined pairwise, then
// team.sum(). Member r takes elements r, r + size, r + 2 size, ... and adds
// its c-th into lane c % 16: a warp reads consecutive words (no shared-memory
// bank conflicts), and a team of one adds element i into lane i % 16, which is
// what the CPU's SIMD path (team of one) computes, bit for bit.
constexpr int kLanes = 16;
template <class Real>
STS_HD inline Real combine_lanes(Real (&p)[kLanes]) {
  STS_UNROLL for (int s = kLanes / 2; s > 0; s /= 2) {
    STS_UNROLL for (int j = 0; j < s; ++j) p[j] += p[j + s];
  }
  return p[0];
}
// f(e, j) for this member's elements e of [b, n) in the order above, j its lane.
template <class Team, class F>
STS_HD inline void for_member_lanes(const Team& team, int b, int n, F&& f) {
  const int sz = team.size();
  for (int i = b + team.rank(); i < n; i += kLanes * sz) {
    STS_UNROLL for (int j = 0; j < kLanes; ++j) {
      const int e = i + j * sz;
      if (e >= n) break;
      f(e, j);
    }
  }
}

// D = (O - Y) * invN; returns sum (O - Y)^2 over this member's elements.
template <class Real, class Team>
STS_HD inline Real residual_sq(const Team& team, int n, const Real* __restrict__ O,
                               const Real* __restrict__ Y, Real* __restrict__ D, Real invN) {
  Real p[kLanes] = {};
  int b = 0;
#if STS_SIMD
  if (team.size() == 1) {
    using S = simd::Vec<Real, simd::kWideBits>;
    constexpr int NV = kLanes / S::W;
    typename S::T acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = S::zero();
    const typename S::T vi = S::set1(invN);
    for (; b + kLanes <= n; b += kLanes)
      for (int v = 0; v < NV; ++v) {
        const int o = b + v * S::W;
        const typename S::T r = S::sub(S::load(O + o), S::load(Y + o));
        S::store(D + o, S::mul(r, vi));
        acc[v] = S::fma(r, r, acc[v]);
      }
    for (int v = 0; v < NV; ++v) S::store(p + v * S::W, acc[v]);
  }
#endif
  O = detail::shared_hint<Team>(O);
  Y = detail::shared_hint<Team>(Y);
  D = detail::shared_hint<Team>(D);
  for_member_lanes(team, b, n, [&](int e, int j) {
    detail::trace_load(team, O + e);
    detail::trace_load(team, Y + e);
    detail::trace_store(team, D + e);
    const Real r = O[e] - Y[e];
    D[e] = r * invN;
    p[j] = fmadd(r, r, p[j]);
  });
  return combine_lanes(p);
}

// sum (H - T)^2 over this member's elements.
template <class Real, class Team>
STS_HD inline Real diff_sq(const Team& team, int n, const Real* __restrict__ H,
                           const Real* __restrict__ T) {
  Real p[kLanes] = {};
  int b = 0;
#if STS_SIMD
  if (team.size() == 1) {
    using S = simd::Vec<Real, simd::kWideBits>;
    constexpr int NV = kLanes / S::W;
    typename S::T acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = S::zero();
    for (; b + kLanes <= n; b += kLanes)
      for (int v = 0; v < NV; ++v) {
        const int o = b + v * S::W;
        const typename S::T r = S::sub(S::load(H + o), S::load(T + o));
        acc[v] = S::fma(r, r, acc[v]);
      }
    for (int v = 0; v < NV; ++v) S::store(p + v * S::W, acc[v]);
  }
#endif
  H = detail::shared_hint<Team>(H);
  T = detail::shared_hint<Team>(T);
  for_member_lanes(team, b, n, [&](int e, int j) {
    detail::trace_load(team, H + e);
    detail::trace_load(team, T + e);
    const Real r = H[e] - T[e];
    p[j] = fmadd(r, r, p[j]);
  });
  return combine_lanes(p);
}

// S <- S - C; returns sum (S - 2C) o A (S before the update) over this member's elements.
template <class Real, class Team>
STS_HD inline Real residual_dot(const Team& team, int n, Real* __restrict__ S_,
                                const Real* __restrict__ A, const Real* __restrict__ C) {
  Real p[kLanes] = {};
  int b = 0;
#if STS_SIMD
  if (team.size() == 1) {
    using S = simd::Vec<Real, simd::kWideBits>;
    constexpr int NV = kLanes / S::W;
    typename S::T acc[NV];
    for (int v = 0; v < NV; ++v) acc[v] = S::zero();
    for (; b + kLanes <= n; b += kLanes)
      for (int v = 0; v < NV; ++v) {
        const int o = b + v * S::W;
        const typename S::T c = S::load(C + o), e = S::sub(S::load(S_ + o), c);
        acc[v] = S::fma(S::sub(e, c), S::load(A + o), acc[v]);
        S::store(S_ + o, e);
      }
    for (int v = 0; v < NV; ++v) S::store(p + v * S::W, acc[v]);
  }
#endif
  S_ = detail::shared_hint<Team>(S_);
  A = detail::shared_hint<Team>(A);
  C = detail::shared_hint<Team>(C);
  for_member_lanes(team, b, n, [&](int k, int j) {
    detail::trace_load(team, C + k);
    detail::trace_load(team, S_ + k);
    detail::trace_load(team, A + k);
    detail::trace_store(team, S_ + k);
    const Real c = C[k], e = S_[k] - c;
    p[j] = fmadd(e - c, A[k], p[j]);
    S_[k] = e;
  });
  return combine_lanes(p);
}

// ------------------------------------------------------------- the model --

struct Net {
  int L = 2;                     // layers
  int w[kMaxLayers + 1] = {};    // widths w[0] = d .. w[L] = m
  int act = kLinear;             // hidden activation; the output layer is linear
};

template <class Real>
struct Weights {
  Real* W[kMaxLayers + 1] = {};   // w[l] x w[l-1]
  Real* WT[kMaxLayers + 1] = {};  // w[l-1] x w[l]
};

// Losses of one network at one iterate: label = (1/2N)||f - Y||^2,
// feature = (1/2N) sum_{l matched} ||h^l - H_t^l||^2 (unweighted).
template <class Real>
struct Losses {
  Real label = 0, feature = 0;
  STS_HD Real total(Real lambda) const { return label + lambda * feature; }
};

// Flops of one step (multiply-adds counted as 2), for `auto` and benchmarks.
// Data path: forward N w_l w_{l-1} per layer, deltas for l >= 2, gradients.
STS_HD inline double data_step_flops(const Net& net, int N) {
  double f = 0;
  for (int l = 1; l <= net.L; ++l) f += (l >= 2 ? 3.0 : 2.0) * net.w[l] * net.w[l - 1];
  return 2.0 * N * f;
}
// Moment path: products A_l (l >= 2), A_l Cxx for the output and each matched
// layer, the backward chain Q_{l-1} = W_l^T Q_l and the gradients Q_l A_{l-1}^T.
STS_HD inline double moment_step_flops(const Net& net, uint32_t matched) {
  const double d = net.w[0];
  double f = net.w[net.L] * d * d;
  for (int l = 1; l < net.L; ++l)
    if (matched >> l & 1u) f += net.w[l] * d * d;
  for (int l = 2; l <= net.L; ++l) f += 3.0 * net.w[l] * net.w[l - 1] * d;
  return 2.0 * f;
}

// ------------------------------------------------------------- data path --
// Reads WT[l] (all l) and W[l] (l >= 2); keeps both up to date. W[1] is NOT
// kept: after data steps, W[1] = WT[1]^T must be refreshed by the caller
// (data_refresh_w1) before reading it.

template <class Real>
struct DataSet {              // constant per trial, samples as rows
  int N = 0;
  const Real* X = nullptr;    // N x d  (noisy inputs)
  const Real* Y = nullptr;    // N x m
  const Real* Ht[kMaxLayers + 1] = {};  // N x w[l], teacher features (matched l only)
};

template <class Real>
struct DataWork {             // sizes for N rows
  Real* Z[kMaxLayers + 1] = {};  // N x w[l], pre-activations, l = 1..L (Z[L] = output)
  Real* H[kMaxLayers + 1] = {};  // N x w[l], hidden activations (may alias Z when linear)
  Real* D[2] = {};               // N x max_l w[l] each: output residual and deltas
};

// Forward pass at the current weights and the losses. `matched` bit l: layer l
// enters the feature loss. On return (for data_backward_update): Z, H set and
// D[L % 2] = (f - Y) / N.
template <class Real, class Team>
STS_HD inline Losses<Real> data_forward(const Team& team, const Net& net, const Weights<Real>& wt,
                                        const DataSet<Real>& ds, uint32_t matched,
                                        DataWork<Real>& wk) {
  const int N = ds.N, L = net.L;
  const Real* Hprev = ds.X;
  for (int l = 1; l <= L; ++l) {
    gemm<kSet>(team, N, net.w[l], net.w[l - 1], Hprev, net.w[l - 1], 1, wt.WT[l], net.w[l], wk.Z[l],
               net.w[l]);
    team.sync();
    if (l < L && net.act != kLinear && wk.H[l] != wk.Z[l]) {
      const int n = N * net.w[l];
      const Real* Z = detail::shared_hint<Team>(wk.Z[l]);
      Real* H = detail::shared_hint<Team>(wk.H[l]);
      auto apply = [&](auto phi) {
        for (int i = team.rank(); i < n; i += team.size()) {
          detail::trace_load(team, Z + i);
          detail::trace_store(team, H + i);
          H[i] = phi(Z[i]);
        }
      };
      // tanh gets a loop of its own, which vectorises on the CPU (tanh_).
      if (net.act == kTanh)
        apply([](Real z) { return tanh_(z); });
      else
        apply([&](Real z) { return activate(net.act, z); });
      team.sync();
    }
    Hprev = l < L ? wk.H[l] : nullptr;
  }
  const Real invN = Real(1) / Real(N);
  Losses<Real> out;
  out.label = Real(0.5) * invN *
              team.sum(residual_sq(team, N * net.w[L], wk.Z[L], ds.Y, wk.D[L % 2], invN));
  Real fsum = 0;
  for (int l = 1; l < L; ++l)
    if (matched >> l & 1u) fsum += diff_sq(team, N * net.w[l], wk.H[l], ds.Ht[l]);
  out.feature = Real(0.5) * invN * team.sum(fsum);
  team.sync();
  return out;
}

// Backward pass and gradient-descent update W <- W - lr grad, for the loss
// (1/2N)||f - Y||^2 + (lambda/2N) sum_{l in matched} ||h^l - H_t^l||^2,
// after data_forward at the same weights.
template <class Real, class Team>
STS_HD inline void data_backward_update(const Team& team, const Net& net, Weights<Real>& wt,
                                        const DataSet<Real>& ds, Real lambda, uint32_t matched,
                                        Real lr, DataWork<Real>& wk) {
  const int N = ds.N, L = net.L;
  const Real cf = lambda / Real(N);
  for (int l = L; l >= 1; --l) {
    const Real* Dl = wk.D[l % 2];  // N x w[l]: d loss / d Z[l]
    const int wl = net.w[l], wp = net.w[l - 1];
    if (l == 1) {
      // WT[1] (d x w1) -= lr X^T D1
      gemm<kSub>(team, wp, wl, N, ds.X, 1, wp, Dl, wl, wt.WT[1], wl, lr);
      team.sync();
      break;
    }
    // P = D_l W_l (N x w[l-1]) with the old W_l, then the feature term and phi'.
    Real* P = wk.D[(l - 1) % 2];
    gemm<kSet>(team, N, wp, wl, Dl, wl, 1, wt.W[l], wp, P, wp);
    team.sync();
    const bool m = matched >> (l - 1) & 1u;
    if (m || net.act != kLinear) {
      const int n = N * wp;
      // Ht[l-1] exists only where the layer is matched (m): no hint without.
      P = detail::shared_hint<Team>(P);
      const Real* H = detail::shared_hint<Team>(wk.H[l - 1]);
      const Real* Z = detail::shared_hint<Team>(wk.Z[l - 1]);
      const Real* T = m ? detail::shared_hint<Team>(ds.Ht[l - 1]) : ds.Ht[l - 1];
      if (net.act == kLinear) {  // separate loops: each vectorises
        for (int i = team.rank(); i < n; i += team.size()) {
          detail::trace_load(team, H + i);
          detail::trace_load(team, T + i);
          detail::trace_load(team, P + i);
          detail::trace_store(team, P + i);
          P[i] = fmadd(cf, H[i] - T[i], P[i]);
        }
      } else {
        for (int i = team.rank(); i < n; i += team.size()) {
          if constexpr (detail::team_traces<Team>()) {
            detail::trace_load(team, P + i);
            if (m) detail::trace_load(team, H + i), detail::trace_load(team, T + i);
            detail::trace_load(team, Z + i);
            detail::trace_load(team, H + i);
            detail::trace_store(team, P + i);
          }
          Real v = P[i];
          if (m) v = fmadd(cf, H[i] - T[i], v);
          P[i] = v * activate_deriv(net.act, Z[i], H[i]);
        }
      }
      team.sync();
    }
    // W_l (w[l] x w[l-1]) -= lr D_l^T H_{l-1}; then WT_l = W_l^T.
    gemm<kSub>(team, wl, wp, N, Dl, 1, wl, wk.H[l - 1], wp, wt.W[l], wp, lr);
    team.sync();
    transpose(team, wl, wp, wt.W[l], wt.WT[l]);
    team.sync();
  }
}

// W[1] = WT[1]^T (W[1] is not maintained by data steps).
template <class Real, class Team>
STS_HD inline void data_refresh_w1(const Team& team, const Net& net, Weights<Real>& wt) {
  transpose(team, net.w[0], net.w[1], wt.WT[1], wt.W[1]);
  team.sync();
}

// ----------------------------------------------------------- moment path --
// Linear networks only. Reads and keeps W[l] (all l); WT is not used.
// A_l = W_l ... W_1 (w[l] x d), E_j = A_j Cxx - C_j (C_L = Cyx, C_j = Chx^j),
// Q_L = E_L, Q_{l-1} = W_l^T Q_l + lambda [l-1 matched] E_{l-1},
// grad W_l = Q_l A_{l-1}^T (A_0 = I: grad W_1 = Q_1).

template <class Real>
struct MomentSet {             // constant per trial
  const Real* Cxx = nullptr;   // d x d  Xn Xn^T / N
  const Real* Cyx = nullptr;   // m x d  Y Xn^T / N
  const Real* Chx[kMaxLayers + 1] = {};  // w[l] x d, matched l
  Real tr_yy = 0;                        // tr(Y Y^T) / N
  Real tr_hh[kMaxLayers + 1] = {};       // tr(H_l H_l^T) / N
};

template <class Real>
struct MomentWork {
  Real* A[kMaxLayers + 1] = {};  // w[l] x d for l >= 2 (A[1] is W[1])
  Real* E[kMaxLayers + 1] = {};  // w[l] x d for l = L and matched l
  Real* Q[2] = {};               // max w x d each
  Real* AT = nullptr;            // d x max w (A_{l-1}^T)
};

template <class Real, class Team>
STS_HD inline Losses<Real> moment_forward(const Team& team, const Net& net, const Weights<Real>& wt,
                                          const MomentSet<Real>& ms, uint32_t matched,
                                          MomentWork<Real>& wk) {
  const int L = net.L, d = net.w[0];
  Losses<Real> out;
  Real fsum = 0;
  for (int l = 1; l <= L; ++l) {
    const Real* Al = l == 1 ? wt.W[1] : wk.A[l];
    if (l >= 2) {
      const Real* Ap = l == 2 ? wt.W[1] : wk.A[l - 1];
      gemm<kSet>(team, net.w[l], d, net.w[l - 1], wt.W[l], net.w[l - 1], 1, Ap, d, wk.A[l], d);
      team.sync();
    }
    const bool m = l < L && (matched >> l & 1u);
    if (l == L || m) {
      gemm<kSet>(team, net.w[l], d, d, Al, d, 1, ms.Cxx, d, wk.E[l], d);
      team.sync();
      // E = A Cxx - C and sum(A Cxx o A) - 2 sum(C o A): the moment form of
      // ||A Xn - T||^2 / N less tr(T T^T) / N.
      const Real s = team.sum(residual_dot(team, net.w[l] * d, wk.E[l], Al,
                                           l == L ? ms.Cyx : ms.Chx[l]));
      team.sync();
      if (l == L)
        out.label = Real(0.5) * (s + ms.tr_yy);
      else
        fsum += Real(0.5) * (s + ms.tr_hh[l]);
    }
  }
  out.feature = fsum;
  return out;
}

template <class Real, class Team>
STS_HD inline void moment_backward_update(const Team& team, const Net& net, Weights<Real>& wt,
                                          const MomentSet<Real>&, Real lambda, uint32_t matched,
                                          Real lr, MomentWork<Real>& wk) {
  const int L = net.L, d = net.w[0];
  const Real* Q = wk.E[L];
  for (int l = L; l >= 2; --l) {
    const int wl = net.w[l], wp = net.w[l - 1];
    // Q_{l-1} = lambda E_{l-1} (matched) + W_l^T Q_l, with the old W_l.
    Real* Qn = wk.Q[l % 2];
    const bool m = matched >> (l - 1) & 1u;
    if (m) {
      const int n = wp * d;
      const Real* E = detail::shared_hint<Team>(wk.E[l - 1]);
      Qn = detail::shared_hint<Team>(Qn);
      for (int i = team.rank(); i < n; i += team.size()) {
        detail::trace_load(team, E + i);
        detail::trace_store(team, Qn + i);
        Qn[i] = lambda * E[i];
      }
      team.sync();
      gemm<kAdd>(team, wp, d, wl, wt.W[l], 1, wp, Q, d, Qn, d);
    } else {
      gemm<kSet>(team, wp, d, wl, wt.W[l], 1, wp, Q, d, Qn, d);
    }
    // A_{l-1}^T (d x w[l-1]); W_l -= lr Q_l A_{l-1}^T.
    transpose(team, wp, d, l == 2 ? wt.W[1] : wk.A[l - 1], wk.AT);
    team.sync();
    gemm<kSub>(team, wl, wp, d, Q, d, 1, wk.AT, wp, wt.W[l], wp, lr);
    team.sync();
    Q = Qn;
  }
  gd_update(team, net.w[1] * d, wt.W[1], Q, lr);  // grad W_1 = Q_1
  team.sync();
}

// ----------------------------------------------------------------- risk --
// Exact risk of a linear end-to-end map We (m x d):
//   ||(We - W*) Mhalf||_F^2 + sigma^2 ||We||_F^2 + m sigma_y^2,  Mhalf d x k.
// Each entry s_ij of (We - W*) Mhalf is one fma chain over p = 0..d-1 from 0,
// and r sums s_ij^2 over (i, j) in row-major order: the order of the plain
// triple loop (TrialMath.LinearRiskIsThePlainLoopBitForBit). The chains of 16
// neighbouring j run side by side (a scalar chain is latency-bound: this was a
// quarter of the CPU's time in short runs, where metrics dominate).
template <class Real>
STS_HD inline Real linear_risk(int m, int d, int k, const Real* We, const Real* Wstar,
                               const Real* Mhalf, Real sigma, Real sigma_y) {
  constexpr int kJ = 16;
  Real r = 0, n2 = 0;
  for (int i = 0; i < m; ++i) {
    const Real* we = We + i * d;
    const Real* ws = Wstar + i * d;
    int j0 = 0;
    for (; j0 + kJ <= k; j0 += kJ) {
      Real s[kJ];
      STS_UNROLL for (int j = 0; j < kJ; ++j) s[j] = 0;
      for (int p = 0; p < d; ++p) {
        const Real e = we[p] - ws[p];
        const Real* mh = Mhalf + p * k + j0;
        STS_UNROLL for (int j = 0; j < kJ; ++j) s[j] = fmadd(e, mh[j], s[j]);
      }
      STS_UNROLL for (int j = 0; j < kJ; ++j) r = fmadd(s[j], s[j], r);
    }
    for (; j0 < k; ++j0) {
      Real s = 0;
      for (int p = 0; p < d; ++p) s = fmadd(we[p] - ws[p], Mhalf[p * k + j0], s);
      r = fmadd(s, s, r);
    }
    for (int p = 0; p < d; ++p) n2 = fmadd(we[p], we[p], n2);
  }
  return r + sigma * sigma * n2 + Real(m) * sigma_y * sigma_y;
}

}  // namespace stsweep::tm
