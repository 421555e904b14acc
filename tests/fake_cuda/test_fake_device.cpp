// The CUDA backend's own host code (kernels/cuda_backend.cu: waves, pools,
// streams, the teacher pass, out-of-memory, several devices) on the fake CUDA
// runtime of this folder, where the kernels run on one-thread host teams: its
// results must be the CPU backend's bit for bit, and it must break none of the
// rules the fake counts (an allocation or free while a stream has work pending,
// work for another device's stream, pointers outside the allocations). What
// the fake cannot tell (the kernels' own speed and races) is for the GPU.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "cuda_backend.cuh"
#include "fake_device.hpp"
#include "multi_backend.hpp"
#include "problem.hpp"
#include "trial_compare.hpp"

namespace stsweep {
namespace {

using namespace stsweep::testing;

struct ScopedEnv {
  std::string name;
  ScopedEnv(const char* n, const char* v) : name(n) { setenv(n, v, 1); }
  ~ScopedEnv() { unsetenv(name.c_str()); }
};

void expect_no_rule_broken(const std::string& what) {
  const fake_cuda::Counters c = fake_cuda::counters();
  EXPECT_EQ(c.stalls, 0) << what;
  EXPECT_EQ(c.wrong_device, 0) << what;
  EXPECT_EQ(c.bad_pointers, 0) << what;
  for (const auto& n : c.notes) ADD_FAILURE() << what << ": " << n;
}

RunOptions options(Precision prec) {
  RunOptions o;
  o.sweep_seed = 7;
  o.precision = prec;
  return o;
}

std::unique_ptr<Backend> fake_backend(cuda::Path path, int device = 0) {
  std::string why;
  auto be = cuda::make_backend(options(Precision::f32), path, &why, device);
  if (!be) ADD_FAILURE() << "no backend on the fake device: " << why;
  return be;
}

TEST(FakeDevice, WithoutADeviceSaysWhy) {
  fake_cuda::Config none;
  none.devices = 0;
  fake_cuda::reset(none);
  std::string why;
  EXPECT_EQ(cuda::make_backend(options(Precision::f32), cuda::Path::automatic, &why), nullptr);
  EXPECT_NE(why.find("cudaGetDeviceCount"), std::string::npos) << why;
  fake_cuda::reset();
  EXPECT_EQ(cuda::make_backend(options(Precision::f32), cuda::Path::automatic, &why, 1), nullptr);
  EXPECT_NE(why.find("CUDA device 1 does not exist"), std::string::npos) << why;
}

// Every trainer the fake has (fused, warp, general), float32 and float64, in
// waves of 3 trials (two in flight), with poisoned buffers: the CPU's bits.
TEST(FakeDevice, CudaBackendEqualsTheCpuBitForBit) {
  const ScopedEnv poison("STSWEEP_CUDA_POISON", "1");
  const ScopedEnv wave("STSWEEP_CUDA_WAVE", "3");
  for (const Batch& b : by_shape(variety_trials()))
    for (Precision prec : {Precision::f32, Precision::f64}) {
      const auto ref = run_cpu(b, prec);
      for (cuda::Path path : {cuda::Path::fused, cuda::Path::warp, cuda::Path::general}) {
        const std::string what = std::string(cuda::name(path)) + (prec == Precision::f32 ? " f32" : " f64") +
                                 ", L = " + std::to_string(b.trials[0].hidden.size() + 1);
        fake_cuda::reset();
        {
          auto be = fake_backend(path);
          ASSERT_TRUE(be);
          const auto got = be->run(b, options(prec));
          ASSERT_EQ(got.size(), ref.size());
          for (size_t i = 0; i < ref.size(); ++i) expect_same(got[i], ref[i], what + " trial " + std::to_string(i));
          const cuda::RunStats s = cuda::last_stats(*be);
          EXPECT_EQ(s.chunks, static_cast<int>((b.trials.size() + 2) / 3)) << what;
          EXPECT_NE(s.paths.find(cuda::name(path)), std::string::npos) << what << ": " << s.paths;
          EXPECT_GT(fake_cuda::counters().launches, 0) << what;
        }
        expect_no_rule_broken(what);
        EXPECT_EQ(fake_cuda::counters().live, 0) << what << ": allocations left after the backend";
      }
    }
}

// Trained teachers shared across waves are trained on the device once each,
// beside the waves in flight, with no allocation or free while a wave has work
// pending (until session 7 the teacher pass allocated and freed its memory per
// chunk, which waited for the training wave); the results are the CPU's.
TEST(FakeDevice, TeachersOnTheDeviceDoNotStallTheWaves) {
  const ScopedEnv poison("STSWEEP_CUDA_POISON", "1");
  const std::vector<TrialParams> ps = shared_teacher_trials();
  const Batch b = make_batch(ps);
  reset_teacher_cache(size_t{64} << 20);
  const auto ref = run_cpu(b, Precision::f32);
  for (const char* wave : {"2", "3"}) {
    const ScopedEnv w("STSWEEP_CUDA_WAVE", wave);
    reset_teacher_cache(size_t{64} << 20);
    fake_cuda::reset();
    {
      auto be = fake_backend(cuda::Path::automatic);
      ASSERT_TRUE(be);
      const auto got = be->run(b, options(Precision::f32));
      const cuda::RunStats s = cuda::last_stats(*be);
      EXPECT_EQ(s.teachers, 3) << "waves of " << wave;
      EXPECT_EQ(s.chunks, wave[0] == '2' ? 4 : 3);
      EXPECT_EQ(teacher_cache_stats().trained, 0) << "set-up trained a teacher the device should have";
      for (size_t i = 0; i < ref.size(); ++i) {
        ASSERT_EQ(ref[i].status, Status::done) << ref[i].message;
        expect_same(got[i], ref[i], std::string("waves of ") + wave + ", trial " + std::to_string(i));
      }
    }
    expect_no_rule_broken(std::string("waves of ") + wave);
  }
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
}

// A device whose free memory is less than cudaMemGetInfo said (another process
// took it): the first allocation fails, the wave is halved until it fits, and
// the results do not change. With less memory than one trial needs, the run
// fails with the out-of-memory error, and the next run on the same backend works.
TEST(FakeDevice, OutOfMemoryHalvesTheWave) {
  const Batch b = by_shape(variety_trials())[0];
  const auto ref = run_cpu(b, Precision::f32);
  // What the batch takes in waves of all its trials and of one trial (the
  // pools' fixed part is most of it at this size): the device gets half way.
  size_t peak[2];
  for (int one = 0; one < 2; ++one) {
    const ScopedEnv wave("STSWEEP_CUDA_WAVE", one ? "1" : "1000");
    fake_cuda::reset();
    auto be = fake_backend(cuda::Path::fused);
    ASSERT_TRUE(be);
    be->run(b, options(Precision::f32));
    ASSERT_EQ(cuda::last_stats(*be).chunks, one ? static_cast<int>(b.trials.size()) : 1);
    peak[one] = fake_cuda::counters().peak;
  }
  ASSERT_GT(peak[0], peak[1]);
  fake_cuda::Config tight;
  tight.memory = (peak[0] + peak[1]) / 2;
  tight.reported_extra = size_t(1) << 30;
  fake_cuda::reset(tight);
  {
    auto be = fake_backend(cuda::Path::fused);
    ASSERT_TRUE(be);
    const auto got = be->run(b, options(Precision::f32));
    for (size_t i = 0; i < ref.size(); ++i) expect_same(got[i], ref[i], "trial " + std::to_string(i));
    EXPECT_GT(fake_cuda::counters().out_of_memory, 0);
    EXPECT_GT(cuda::last_stats(*be).chunks, 1);
  }
  expect_no_rule_broken("halved waves");
  fake_cuda::Config tiny;
  tiny.memory = size_t(1) << 20;  // less than the pools' slack alone
  fake_cuda::reset(tiny);
  {
    auto be = fake_backend(cuda::Path::fused);
    ASSERT_TRUE(be);
    try {
      be->run(b, options(Precision::f32));
      ADD_FAILURE() << "a run on a device too small for one trial did not fail";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("cudaMalloc"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(fake_cuda::counters().live, 0);
}

// Two devices, each a backend with its own streams: the same results as one,
// and every stream's work is submitted while its own device is current (session
// 6 found the streams of the second backend made on the first device).
TEST(FakeDevice, TwoDevicesEqualOne) {
  std::vector<TrialParams> ps;
  for (int i = 0; i < 7; ++i) {
    TrialParams p = small_trial(i);
    p.lambda = 0.2 * i;
    p.path = i % 2 ? TrainPath::moment : TrainPath::data;
    ps.push_back(p);
  }
  const Batch b = make_batch(ps);
  fake_cuda::Config two;
  two.devices = 2;
  fake_cuda::reset(two);
  for (cuda::Path path : {cuda::Path::fused, cuda::Path::warp}) {
    auto one = fake_backend(path);
    ASSERT_TRUE(one);
    const auto ref = one->run(b, options(Precision::f32));
    std::vector<std::unique_ptr<Backend>> parts;
    for (int d = 0; d < 2; ++d) {
      parts.push_back(fake_backend(path, d));
      ASSERT_TRUE(parts.back());
    }
    MultiBackend both(std::move(parts), {"0", "1"});
    const auto got = both.run(b, options(Precision::f32));
    ASSERT_EQ(got.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i)
      expect_same(got[i], ref[i], std::string(cuda::name(path)) + " trial " + std::to_string(i));
  }
  expect_no_rule_broken("two devices");
}

}  // namespace
}  // namespace stsweep
