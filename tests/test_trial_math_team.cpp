// The team GEMM that tm::gemm's device branch runs (tm::detail::gemm_team_tiled:
// register tiles per thread of a CUDA block), checked on the host. It has no
// sync inside and each member writes only its own elements, so a team of T
// threads is emulated by calling it once per rank in sequence. Every product
// must be BIT-IDENTICAL to the CPU's tm::gemm (SerialTeam, the AVX tiles) and
// to a naive fma chain over k = 0..K-1: the per-element order is the contract
// that makes the GPU's float32 results equal the CPU reference's.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "trial_math.hpp"

namespace stsweep {
namespace {

// One member of an emulated team.
struct EmuTeam {
  int r = 0, n = 1;
  int rank() const { return r; }
  int size() const { return n; }
  void sync() const {}
  template <class T>
  T sum(T x) const { return x; }
};

// splitmix64: uniform values in [-1, 1) (products and sums that round).
struct Gen {
  uint64_t s;
  explicit Gen(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 777) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return 2.0 * ((next() >> 11) * 0x1.0p-53) - 1.0; }
  int below(int n) { return static_cast<int>(next() % static_cast<uint64_t>(n)); }
};

template <class Real>
std::vector<Real> random_vec(Gen& g, size_t n) {
  std::vector<Real> v(n);
  for (Real& x : v) x = static_cast<Real>(g.uniform());
  return v;
}

template <class Real>
bool same_bits(const std::vector<Real>& a, const std::vector<Real>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(Real)) == 0;
}

template <int MODE, class Real, class Team>
void gemm_cpu(const Team& team, int M, int Nc, int K, const Real* A, int sai, int sak,
              const Real* B, int ldb, Real* C, int ldc, Real alpha) {
  tm::gemm<MODE>(team, M, Nc, K, A, sai, sak, B, ldb, C, ldc, alpha);
}

// One product, every mode and both A layouts, on teams of 1, 32, 96 and 256.
// Leading dimensions are padded (pad >= 0) and the padding is poisoned: it
// must come back untouched.
template <class Real>
void check_shape(Gen& g, int M, int Nc, int K, int pad) {
  const Real nan = std::numeric_limits<Real>::quiet_NaN();
  const int ldb = Nc + pad, ldc = Nc + pad;
  const std::vector<Real> An = random_vec<Real>(g, static_cast<size_t>(M) * (K + pad));  // M x K
  const std::vector<Real> At = random_vec<Real>(g, static_cast<size_t>(K) * (M + pad));  // K x M
  const std::vector<Real> B = random_vec<Real>(g, static_cast<size_t>(K) * ldb);
  std::vector<Real> C0 = random_vec<Real>(g, static_cast<size_t>(M) * ldc);
  for (int i = 0; i < M; ++i)
    for (int j = Nc; j < ldc; ++j) C0[static_cast<size_t>(i) * ldc + j] = nan;
  const Real alpha = static_cast<Real>(0.37);
  for (int mode : {tm::kSet, tm::kAdd, tm::kSub})
    for (bool trans : {false, true}) {
      const Real* A = trans ? At.data() : An.data();
      const int sai = trans ? 1 : K + pad, sak = trans ? M + pad : 1;
      // kSet's output starts as NaN everywhere; kAdd and kSub read C.
      std::vector<Real> start = C0;
      if (mode == tm::kSet) std::fill(start.begin(), start.end(), nan);

      // The documented order, written out.
      std::vector<Real> naive = start;
      for (int i = 0; i < M; ++i)
        for (int j = 0; j < Nc; ++j) {
          Real& o = naive[static_cast<size_t>(i) * ldc + j];
          Real c = mode == tm::kAdd ? o : Real(0);
          for (int k = 0; k < K; ++k)
            c = tm::fmadd(A[static_cast<size_t>(i) * sai + static_cast<size_t>(k) * sak],
                          B[static_cast<size_t>(k) * ldb + j], c);
          o = mode == tm::kSub ? tm::fmadd(-alpha, c, o) : c;
        }

      std::vector<Real> cpu = start;
      const tm::SerialTeam serial;
      if (mode == tm::kSet) gemm_cpu<tm::kSet>(serial, M, Nc, K, A, sai, sak, B.data(), ldb, cpu.data(), ldc, alpha);
      if (mode == tm::kAdd) gemm_cpu<tm::kAdd>(serial, M, Nc, K, A, sai, sak, B.data(), ldb, cpu.data(), ldc, alpha);
      if (mode == tm::kSub) gemm_cpu<tm::kSub>(serial, M, Nc, K, A, sai, sak, B.data(), ldb, cpu.data(), ldc, alpha);
      ASSERT_TRUE(same_bits(cpu, naive))
          << "CPU gemm vs naive: M " << M << " Nc " << Nc << " K " << K << " mode " << mode
          << " trans " << trans;

      // va: the tiles load A four k at a time where its layout allows
      // (row-major, rows and base 4-aligned: pad 0 or 4 here), else scalar.
      for (bool va : {false, true})
        for (int T : {1, 32, 96, 256}) {
          std::vector<Real> team = start;
          for (int r = 0; r < T; ++r) {
            const EmuTeam t{r, T};
            if (mode == tm::kSet && !va)
              tm::detail::gemm_team_tiled<tm::kSet, false>(t, M, Nc, K, A, sai, sak, B.data(), ldb, team.data(), ldc, alpha);
            if (mode == tm::kAdd && !va)
              tm::detail::gemm_team_tiled<tm::kAdd, false>(t, M, Nc, K, A, sai, sak, B.data(), ldb, team.data(), ldc, alpha);
            if (mode == tm::kSub && !va)
              tm::detail::gemm_team_tiled<tm::kSub, false>(t, M, Nc, K, A, sai, sak, B.data(), ldb, team.data(), ldc, alpha);
            if (mode == tm::kSet && va)
              tm::detail::gemm_team_tiled<tm::kSet, true>(t, M, Nc, K, A, sai, sak, B.data(), ldb, team.data(), ldc, alpha);
            if (mode == tm::kAdd && va)
              tm::detail::gemm_team_tiled<tm::kAdd, true>(t, M, Nc, K, A, sai, sak, B.data(), ldb, team.data(), ldc, alpha);
            if (mode == tm::kSub && va)
              tm::detail::gemm_team_tiled<tm::kSub, true>(t, M, Nc, K, A, sai, sak, B.data(), ldb, team.data(), ldc, alpha);
          }
          ASSERT_TRUE(same_bits(team, naive))
              << "team of " << T << (va ? " (vector A)" : "") << " vs naive: M " << M << " Nc " << Nc
              << " K " << K << " mode " << mode << " trans " << trans << " pad " << pad
              << " tile shape " << tm::detail::gemm_team_tile_shape(M, Nc, T);
        }
    }
}

template <class Real>
void check_many_shapes(uint64_t seed) {
  Gen g(seed);
  // The products of the standard grids' steps (d = h = 64, m = 16, N = 128;
  // and the CPU grid's d = h = 32, m = 8, N = 64), with and without padding.
  const int standard[][3] = {{128, 64, 64}, {128, 16, 64}, {128, 64, 16}, {16, 64, 128},
                             {64, 64, 128}, {16, 64, 64},  {64, 64, 16},  {64, 32, 32},
                             {64, 8, 32},   {8, 32, 64},   {32, 32, 64},  {160, 128, 160}};
  for (const auto& s : standard)
    for (int pad : {0, 3, 4}) check_shape<Real>(g, s[0], s[1], s[2], pad);
  // K not a multiple of 4 on 4-aligned rows (the vector loop and its scalar rest).
  for (int K : {5, 7, 13, 66}) check_shape<Real>(g, 37, 21, K, (4 - K % 4) % 4);
  // Edges: every M, Nc in 1..12 with small K.
  for (int M = 1; M <= 12; ++M)
    for (int Nc = 1; Nc <= 12; ++Nc) check_shape<Real>(g, M, Nc, 1 + (M + Nc) % 3, (M * Nc) % 2);
  // Random shapes, M, Nc, K in 1..160.
  for (int rep = 0; rep < 100; ++rep)
    check_shape<Real>(g, 1 + g.below(160), 1 + g.below(160), 1 + g.below(160), g.below(3));
}

TEST(TrialMathTeam, TiledGemmIsBitIdenticalToTheCpuFloat) { check_many_shapes<float>(1); }
TEST(TrialMathTeam, TiledGemmIsBitIdenticalToTheCpuDouble) { check_many_shapes<double>(2); }

// The tile each standard product gets on a 256-thread block: one tile per
// thread, and the largest such tile.
TEST(TrialMathTeam, TileShapesForTheStandardGrid) {
  struct Case {
    int M, Nc, mr, nr;
  };
  for (const Case c : {Case{128, 64, 8, 4}, Case{64, 64, 4, 4}, Case{128, 16, 4, 2},
                       Case{16, 64, 2, 2}, Case{16, 16, 1, 1}}) {
    const int s = tm::detail::gemm_team_tile_shape(c.M, c.Nc, 256);
    EXPECT_EQ(tm::detail::gemm_team_tile_mr(s), c.mr) << c.M << " x " << c.Nc;
    EXPECT_EQ(tm::detail::gemm_team_tile_nr(s), c.nr) << c.M << " x " << c.Nc;
  }
  // A serial team takes the largest tile whenever it fits without waste.
  EXPECT_EQ(tm::detail::gemm_team_tile_shape(128, 64, 1), 0);
  EXPECT_EQ(tm::detail::gemm_team_tile_shape(1, 1, 256), 5);
}

// The comparison above can see an order change: summing k backwards gives
// other bits for this data (so "bit-identical" is not vacuous).
TEST(TrialMathTeam, ReorderedChainsAreDetected) {
  Gen g(9);
  const int M = 16, Nc = 16, K = 64;
  const std::vector<float> A = random_vec<float>(g, M * K), B = random_vec<float>(g, K * Nc);
  std::vector<float> fwd(M * Nc), bwd(M * Nc);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < Nc; ++j) {
      float f = 0, b = 0;
      for (int k = 0; k < K; ++k) f = tm::fmadd(A[i * K + k], B[k * Nc + j], f);
      for (int k = K - 1; k >= 0; --k) b = tm::fmadd(A[i * K + k], B[k * Nc + j], b);
      fwd[i * Nc + j] = f;
      bwd[i * Nc + j] = b;
    }
  std::vector<float> team(M * Nc, std::numeric_limits<float>::quiet_NaN());
  for (int r = 0; r < 32; ++r)
    tm::detail::gemm_team_tiled<tm::kSet>(EmuTeam{r, 32}, M, Nc, K, A.data(), K, 1, B.data(), Nc,
                                          team.data(), Nc, 1.0f);
  EXPECT_TRUE(same_bits(team, fwd));
  EXPECT_FALSE(same_bits(team, bwd));
}

}  // namespace
}  // namespace stsweep
