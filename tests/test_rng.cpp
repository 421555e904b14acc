// Philox4x32-10 and the draws built on it (kernels/rng.hpp).
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <vector>

#include "rng.hpp"

using namespace stsweep::rng;

namespace {
Block philox(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  Block c{{c0, c1, c2, c3}};
  return philox4x32_10(c, k0, k1);
}
void expect_block(const Block& b, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  EXPECT_EQ(b.v[0], r0);
  EXPECT_EQ(b.v[1], r1);
  EXPECT_EQ(b.v[2], r2);
  EXPECT_EQ(b.v[3], r3);
}
}  // namespace

// Known-answer vectors published with Random123 (kat_vectors, philox4x32 10).
TEST(Philox, KnownAnswers) {
  expect_block(philox(0, 0, 0, 0, 0, 0), 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8);
  expect_block(philox(0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff),
               0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd);
  expect_block(philox(0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0),
               0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1);
}

TEST(Philox, CounterLayout) {
  // Block b of (stream, sub) under key K is Philox of {lo(b), hi(b), stream, sub} / {lo(K), hi(K)}.
  const uint64_t key = 0x0123456789abcdefULL, b = 0x0000000500000007ULL;
  const Block got = block(key, Stream::E, 9, b);
  const Block want = philox(7, 5, static_cast<uint32_t>(Stream::E), 9, 0x89abcdef, 0x01234567);
  expect_block(got, want.v[0], want.v[1], want.v[2], want.v[3]);
}

TEST(Draws, PureFunctionOfKeyStreamCounter) {
  // Same arguments, same bits, in any order of evaluation.
  std::vector<double> fwd, bwd(1000);
  for (int j = 0; j < 1000; ++j) fwd.push_back(normal(42, Stream::Z, 0, j));
  for (int j = 999; j >= 0; --j) bwd[j] = normal(42, Stream::Z, 0, j);
  EXPECT_EQ(fwd, bwd);
  // normal_pair gives draws 2b and 2b+1.
  double z0, z1;
  normal_pair(42, Stream::Z, 0, 17, &z0, &z1);
  EXPECT_EQ(z0, normal(42, Stream::Z, 0, 34));
  EXPECT_EQ(z1, normal(42, Stream::Z, 0, 35));
  // Uniforms from the two halves of one block are different numbers.
  EXPECT_NE(uniform(1, Stream::U, 0, 0), uniform(1, Stream::U, 0, 1));
}

TEST(Draws, KeysStreamsAndSubsAreDifferentSequences) {
  const int n = 20000;
  auto corr = [&](auto f, auto g) {
    double sfg = 0, sff = 0, sgg = 0;
    for (int j = 0; j < n; ++j) {
      const double a = f(j), b = g(j);
      sfg += a * b, sff += a * a, sgg += b * b;
    }
    return sfg / std::sqrt(sff * sgg);
  };
  // Independent sequences: |corr| ~ 1/sqrt(n) = 0.007; 5 sigma bound.
  const double bound = 5.0 / std::sqrt(double(n));
  EXPECT_LT(std::fabs(corr([](int j) { return normal(1, Stream::Z, 0, j); },
                           [](int j) { return normal(1, Stream::E, 0, j); })),
            bound);
  EXPECT_LT(std::fabs(corr([](int j) { return normal(1, Stream::Z, 0, j); },
                           [](int j) { return normal(2, Stream::Z, 0, j); })),
            bound);
  EXPECT_LT(std::fabs(corr([](int j) { return normal(1, Stream::student_init, 1, j); },
                           [](int j) { return normal(1, Stream::student_init, 2, j); })),
            bound);
  // Neighbouring draws (the cos and sin of one Box-Muller pair) are uncorrelated.
  EXPECT_LT(std::fabs(corr([](int j) { return normal(3, Stream::A, 0, 2 * j); },
                           [](int j) { return normal(3, Stream::A, 0, 2 * j + 1); })),
            bound);
  // A key differing in the high word only gives a different sequence.
  std::set<double> seen;
  for (uint64_t key : {0ULL, 1ULL << 32, 1ULL, (1ULL << 32) | 1ULL}) seen.insert(normal(key, Stream::U, 0, 0));
  EXPECT_EQ(seen.size(), 4u);
}

TEST(Draws, UniformRangeAndMoments) {
  const int n = 200000;
  double s = 0, s2 = 0, lo = 1, hi = 0;
  for (int j = 0; j < n; ++j) {
    const double u = uniform(7, Stream::R, 0, j);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    s += u, s2 += u * u, lo = std::min(lo, u), hi = std::max(hi, u);
  }
  const double mean = s / n, var = s2 / n - mean * mean;
  // Mean 1/2 with sd sqrt(1/12/n) = 6.5e-4; variance 1/12 with sd ~ 1.9e-4.
  EXPECT_NEAR(mean, 0.5, 5 * 6.5e-4);
  EXPECT_NEAR(var, 1.0 / 12, 5 * 1.9e-4);
  EXPECT_LT(lo, 1e-4);
  EXPECT_GT(hi, 1 - 1e-4);
}

TEST(Draws, NormalMoments) {
  const int n = 400000;
  double m1 = 0, m2 = 0, m3 = 0, m4 = 0;
  int beyond2 = 0;
  for (int j = 0; j < n; ++j) {
    const double z = normal(12345, Stream::Z, 3, j);
    ASSERT_TRUE(std::isfinite(z));
    m1 += z, m2 += z * z, m3 += z * z * z, m4 += z * z * z * z;
    beyond2 += std::fabs(z) > 2;
  }
  m1 /= n, m2 /= n, m3 /= n, m4 /= n;
  // Standard errors: mean 1/sqrt(n) = 1.6e-3, E z^2 sqrt(2/n) = 2.2e-3,
  // E z^3 sqrt(15/n) = 6.1e-3, E z^4 sqrt(96/n) = 1.5e-2. Bounds at 5 sigma.
  EXPECT_NEAR(m1, 0.0, 5 * 1.6e-3);
  EXPECT_NEAR(m2, 1.0, 5 * 2.2e-3);
  EXPECT_NEAR(m3, 0.0, 5 * 6.1e-3);
  EXPECT_NEAR(m4, 3.0, 5 * 1.5e-2);
  // P(|z| > 2) = 0.0455003, sd sqrt(p(1-p)/n) = 3.3e-4.
  EXPECT_NEAR(double(beyond2) / n, 0.0455003, 5 * 3.3e-4);
}
