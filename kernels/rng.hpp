// Counter-based random numbers: Philox4x32-10 (Salmon et al., "Parallel random
// numbers: as easy as 1, 2, 3", SC'11), as plain host/device functions.
//
// Draw j of stream (s, sub) under a 64-bit key is a pure function of
// (key, s, sub, j): no state, so every backend, thread, batch and shard sees the
// same numbers. Counter layout of one Philox block (4 x 32 bits):
//   ctr = { lo32(j / 2), hi32(j / 2), stream, sub },  key = { lo32(key), hi32(key) }.
// One block gives two uniform doubles (53 bits from two words each), so uniform
// draws 2b and 2b+1 share block b; normal draws 2b and 2b+1 are the cos and sin
// halves of one Box-Muller pair from block b. A (stream, sub) pair is meant for
// one kind of draw (uniform or normal), not both.
//
// Uniforms are bit-identical everywhere. Normals use log/sqrt/cos/sin: identical
// on one platform; CUDA's double-precision libm may differ from glibc in the last
// bit or two, which the set-up never depends on (set-up runs on the host).
#pragma once

#include <math.h>
#include <stdint.h>

#include "hd.hpp"

namespace stsweep::rng {

// Stream ids. Values are part of the data format (changing one changes every
// trial's data): append, never renumber.
enum class Stream : uint32_t {
  U = 1,                 // d x k Gaussian whose QR gives U        (data key)
  Z = 2,                 // latent z of the student set, k x N     (data key)
  E = 3,                 // input noise eps of the student set     (data key)
  A = 4,                 // target map A, m x k                    (data key)
  label_noise = 5,       // xi of the student set                  (data key)
  test_z = 6,            // Monte Carlo test set latents           (data key)
  test_e = 7,            // Monte Carlo test set input noise       (data key)
  teacher_z = 8,         // teacher training set latents           (teacher key)
  teacher_label_noise = 9,  // teacher training set label noise    (teacher key)
  G = 10,                // perturbation G, m x k                  (teacher key)
  R = 11,                // rotations of `rotated`, sub = layer    (teacher key)
  student_init = 12,     // student W_l, sub = l                   (init key)
  teacher_init = 13,     // trained teacher's initial W_l, sub = l (teacher key)
  target_a1 = 14,        // nonlinear target A1, k x k             (data key)
  target_a2 = 15,        // nonlinear target A2, m x k             (data key)
};

struct Block {
  uint32_t v[4];
};

STS_HD inline void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

// The Philox4x32 bijection with 10 rounds.
STS_HD inline Block philox4x32_10(Block ctr, uint32_t k0, uint32_t k1) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += W0;
      k1 += W1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(M0, ctr.v[0], &hi0, &lo0);
    mulhilo32(M1, ctr.v[2], &hi1, &lo1);
    Block out;
    out.v[0] = hi1 ^ ctr.v[1] ^ k0;
    out.v[1] = lo1;
    out.v[2] = hi0 ^ ctr.v[3] ^ k1;
    out.v[3] = lo0;
    ctr = out;
  }
  return ctr;
}

STS_HD inline Block block(uint64_t key, Stream stream, uint32_t sub, uint64_t b) {
  Block ctr;
  ctr.v[0] = static_cast<uint32_t>(b);
  ctr.v[1] = static_cast<uint32_t>(b >> 32);
  ctr.v[2] = static_cast<uint32_t>(stream);
  ctr.v[3] = sub;
  return philox4x32_10(ctr, static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
}

// 53 random bits from two words.
STS_HD inline uint64_t bits53(uint32_t hi, uint32_t lo) {
  return ((static_cast<uint64_t>(hi) << 32) | lo) >> 11;
}
// In [0, 1).
STS_HD inline double to_unit_closed_open(uint32_t hi, uint32_t lo) {
  return static_cast<double>(bits53(hi, lo)) * (1.0 / 9007199254740992.0);
}
// In (0, 1]: safe under log.
STS_HD inline double to_unit_open_closed(uint32_t hi, uint32_t lo) {
  return static_cast<double>(bits53(hi, lo) + 1) * (1.0 / 9007199254740992.0);
}

// Uniform draw j in [0, 1).
STS_HD inline double uniform(uint64_t key, Stream stream, uint32_t sub, uint64_t j) {
  const Block r = block(key, stream, sub, j >> 1);
  const int w = (j & 1) ? 2 : 0;
  return to_unit_closed_open(r.v[w], r.v[w + 1]);
}

// Both standard normals of Box-Muller pair b (draws 2b and 2b+1).
STS_HD inline void normal_pair(uint64_t key, Stream stream, uint32_t sub, uint64_t b, double* z0,
                               double* z1) {
  const Block r = block(key, stream, sub, b);
  const double u1 = to_unit_open_closed(r.v[0], r.v[1]);
  const double u2 = to_unit_closed_open(r.v[2], r.v[3]);
  const double rad = sqrt(-2.0 * log(u1));
  const double ang = 6.283185307179586476925286766559 * u2;
  *z0 = rad * cos(ang);
  *z1 = rad * sin(ang);
}

// Standard normal draw j.
STS_HD inline double normal(uint64_t key, Stream stream, uint32_t sub, uint64_t j) {
  double z0, z1;
  normal_pair(key, stream, sub, j >> 1, &z0, &z1);
  return (j & 1) ? z1 : z0;
}

}  // namespace stsweep::rng
