// The CUDA backend's host side and kernel bodies, run on the host: its plan
// (kernels/device_plan.cpp) and the bodies of its kernels (kernels/
// device_body.hpp) with thread blocks and warps emulated by std::threads
// (kernels/device_emu.cpp), against the CPU backend. This is the CPU suite's
// proof of the GPU code; tests/test_cuda.cpp, on a GPU, then demands that the
// device equal this emulation bit for bit.
#include <functional>

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <array>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "device_emu.hpp"
#include "device_plan.hpp"
#include "net_buffers.hpp"
#include "trial_compare.hpp"
#include "train.hpp"

namespace stsweep {
namespace {

using namespace stsweep::testing;
using cuda::kNone;

std::vector<TrialResult> run_emu_with(const Batch& b, Precision prec, const cuda::EmuOptions& eo,
                                      std::string* paths = nullptr) {
  RunOptions o;
  o.sweep_seed = 7;
  o.precision = prec;
  auto be = cuda::make_emulated_backend(eo);
  auto r = be->run(b, o);
  if (paths) *paths = cuda::emulated_stats(*be).paths;
  return r;
}
std::vector<TrialResult> run_emu(const Batch& b, Precision prec, cuda::Path path, int threads,
                                 std::string* paths = nullptr, bool compact = true) {
  cuda::EmuOptions eo;
  eo.path = path;
  eo.block_threads = threads;
  eo.compact_eval = compact;
  return run_emu_with(b, prec, eo, paths);
}

// ------------------------------------------------------------ the teams --

// Every rank of an emulated team gets the same sum, bit for bit (the kernels
// rely on it: every thread takes the same branch on a loss), and the sum of
// small integers is exact whatever the order.
TEST(EmuTeam, EveryRankGetsTheSameSum) {
  for (const auto& [n, warp] : std::vector<std::pair<int, bool>>{{32, true}, {32, false}, {96, false}}) {
    std::vector<double> got(n), exact(n);
    std::vector<float> gotf(n);
    cuda::run_emulated_team(n, warp, [&](const cuda::EmuTeam& t) {
      const double x = 1.0 / (1 + t.rank()) * (t.rank() % 3 == 0 ? 1e8 : 1.0);
      got[t.rank()] = t.sum(x);
      gotf[t.rank()] = t.sum(static_cast<float>(x));
      exact[t.rank()] = t.sum(static_cast<double>(t.rank()));
    });
    for (int r = 0; r < n; ++r) {
      EXPECT_EQ(got[r], got[0]) << "rank " << r << " of " << n;
      EXPECT_EQ(gotf[r], gotf[0]) << "rank " << r << " of " << n;
      EXPECT_EQ(exact[r], n * (n - 1) / 2.0);
    }
  }
  EXPECT_THROW(cuda::run_emulated_team(48, false, [](const cuda::EmuTeam&) {}), std::logic_error);
  EXPECT_THROW(cuda::run_emulated_team(64, true, [](const cuda::EmuTeam&) {}), std::logic_error);
}

// The block reduction sums in the device's order: a shuffle-down tree inside
// each warp, then the warps' totals in order. Worked by hand for a 64-thread
// block of floats: v[0] = 1e8, v[32] = -1e8, every other v = 1 (float spacing
// near 1e8 is 8, ties round to even):
//   warp 0: 1e8+1 -> 1e8, 1e8+2 -> 1e8, 1e8+4 -> 1e8 (tie), +8 -> 1e8+8,
//           +16 -> 1e8+24;   warp 1 likewise -1e8+24;   total 48.
// A left-to-right sum gives 31 (every 1 before v[32] is lost).
TEST(EmuTeam, BlockSumFollowsTheDeviceOrder) {
  std::vector<float> v(64, 1.0f);
  v[0] = 1e8f;
  v[32] = -1e8f;
  float serial = 0;
  for (float x : v) serial += x;
  EXPECT_EQ(serial, 31.0f);
  std::vector<float> got(64);
  cuda::run_emulated_team(64, false, [&](const cuda::EmuTeam& t) { got[t.rank()] = t.sum(v[t.rank()]); });
  for (int r = 0; r < 64; ++r) EXPECT_EQ(got[r], 48.0f) << "rank " << r;
  // A warp's butterfly: lane i adds lane i^o; by hand for v[0] = 1e8 and 31
  // ones: after o = 16 lane 0 holds 1e8 (+1 lost), lanes 1..15 hold 2, lanes
  // 16..31 hold 1e8 (lane 16: 1 + 1e8) or 2 — the same pattern as the tree, so
  // every lane ends at 1e8 + 24.
  std::vector<float> w(32, 1.0f), gw(32);
  w[0] = 1e8f;
  cuda::run_emulated_team(32, true, [&](const cuda::EmuTeam& t) { gw[t.rank()] = t.sum(w[t.rank()]); });
  for (int r = 0; r < 32; ++r) EXPECT_EQ(gw[r], 1e8f + 24.0f) << "lane " << r;
}

// --------------------------------------------------------------- layouts --

// Every region of every arena lies inside its arena and overlaps no other,
// for random shapes, both paths and any matched layers.
TEST(DeviceLayout, RegionsAreDisjointAndInside) {
  std::mt19937 g(12345);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g); };
  for (int rep = 0; rep < 300; ++rep) {
    cuda::Shape s;
    s.net.L = uni(1, 4);
    for (int l = 0; l <= s.net.L; ++l) s.net.w[l] = uni(1, 40);
    s.net.act = uni(0, 2);
    s.N = uni(1, 64);
    s.n_test = uni(0, 50);
    s.k = uni(1, s.net.w[0]);
    s.mask = static_cast<uint32_t>(uni(0, 15)) << 1 & ((1u << s.net.L) - 2);
    s.moment = s.net.act == tm::kLinear && uni(0, 1);
    s.exact = s.net.act == tm::kLinear && uni(0, 1);
    const cuda::Layout y = cuda::make_layout(s);
    const tm::Net& n = s.net;
    const int L = n.L, d = n.w[0], m = n.w[L];
    int maxw = 0;
    for (int l = 1; l <= L; ++l) maxw = std::max(maxw, n.w[l]);
    struct R {
      int off;
      long size;
      const char* what;
    };
    auto check = [&](std::vector<R> rs, int total, const char* arena) {
      SCOPED_TRACE(std::string(arena) + " rep " + std::to_string(rep));
      std::vector<R> in;
      for (const R& r : rs)
        if (r.off != kNone && r.size > 0) in.push_back(r);
      std::sort(in.begin(), in.end(), [](const R& a, const R& b) { return a.off < b.off; });
      for (size_t i = 0; i < in.size(); ++i) {
        EXPECT_GE(in[i].off, 0) << in[i].what;
        EXPECT_LE(in[i].off + in[i].size, total) << in[i].what;
        if (i + 1 < in.size()) EXPECT_LE(in[i].off + in[i].size, in[i + 1].off) << in[i].what << " overlaps " << in[i + 1].what;
      }
    };
    std::vector<R> arena, work, ev, vw;
    if (s.moment) {
      arena = {{y.Cxx, long(d) * d, "Cxx"}, {y.Cyx, long(m) * d, "Cyx"}};
      for (int l = 1; l < L; ++l) arena.push_back({y.Chx[l], long(n.w[l]) * d, "Chx"});
      for (int l = 2; l <= L; ++l) work.push_back({y.A[l], long(n.w[l]) * d, "A"});
      for (int l = 1; l <= L; ++l) work.push_back({y.E[l], long(n.w[l]) * d, "E"});
      work.push_back({y.Q[0], long(maxw) * d, "Q0"});
      work.push_back({y.Q[1], long(maxw) * d, "Q1"});
      work.push_back({y.AT, long(maxw) * d, "AT"});
      for (int l = 1; l < L; ++l) EXPECT_EQ(y.Chx[l] != kNone, (s.mask >> l & 1u) != 0);
    } else {
      arena = {{y.X, long(s.N) * d, "X"}, {y.Y, long(s.N) * m, "Y"}};
      for (int l = 1; l < L; ++l) arena.push_back({y.Ht[l], long(s.N) * n.w[l], "Ht"});
      for (int l = 1; l <= L; ++l) {
        work.push_back({y.Z[l], long(s.N) * n.w[l], "Z"});
        work.push_back({y.H[l], long(s.N) * n.w[l], "H"});
      }
      work.push_back({y.D[0], long(s.N) * maxw, "D0"});
      work.push_back({y.D[1], long(s.N) * maxw, "D1"});
      for (int l = 1; l < L; ++l) EXPECT_EQ(y.Ht[l] != kNone, (s.mask >> l & 1u) != 0);
    }
    for (const R& r : arena) EXPECT_TRUE(r.off == kNone || r.off + r.size <= y.data) << r.what << " outside the data part";
    for (int l = 1; l <= L; ++l) {
      arena.push_back({y.W0[l], long(n.w[l]) * n.w[l - 1], "W0"});
      arena.push_back({y.WT0[l], long(n.w[l]) * n.w[l - 1], "WT0"});
      work.push_back({y.W[l], long(n.w[l]) * n.w[l - 1], "W"});
      work.push_back({y.WT[l], long(n.w[l]) * n.w[l - 1], "WT"});
      EXPECT_EQ(y.W0[l] % 4, 0);
    }
    check(arena, y.arena, "arena");
    check(work, y.work, "work");
    ev = {{y.eX, long(s.N) * d, "eX"}, {y.eY, long(s.N) * m, "eY"}, {y.eWstar, long(m) * d, "eWstar"},
          {y.eMhalf, long(d) * s.k, "eMhalf"}, {y.eXt, long(s.n_test) * d, "eXt"}, {y.eYt, long(s.n_test) * m, "eYt"}};
    for (int l = 1; l < L; ++l) ev.push_back({y.eHt[l], long(s.N) * n.w[l], "eHt"});
    check(ev, y.eval, "eval");
    EXPECT_EQ(y.eWstar != kNone, s.exact);
    const int rows = std::max(s.N, s.exact ? 0 : s.n_test);
    for (int l = 1; l <= L; ++l) {
      vw.push_back({y.vW[l], long(n.w[l]) * n.w[l - 1], "vW"});
      vw.push_back({y.vWT[l], long(n.w[l]) * n.w[l - 1], "vWT"});
      vw.push_back({y.vZ[l], long(rows) * n.w[l], "vZ"});
      vw.push_back({y.vH[l], long(rows) * n.w[l], "vH"});
    }
    vw.push_back({y.vD[0], long(rows) * maxw, "vD0"});
    vw.push_back({y.vD[1], long(rows) * maxw, "vD1"});
    vw.push_back({y.vA[0], long(maxw) * d, "vA0"});
    vw.push_back({y.vA[1], long(maxw) * d, "vA1"});
    check(vw, y.vwork, "eval work");
    long snap = 0;
    for (int l = 1; l <= L; ++l) {
      EXPECT_EQ(y.wofs[l], snap);
      snap += long(n.w[l]) * n.w[l - 1];
    }
    EXPECT_EQ(y.wsize, snap);
  }
}

// ------------------------------------------------------------ path choice --

std::vector<cuda::Prepared> prepare(const std::vector<TrialParams>& ps) {
  const Batch b = make_batch(ps);
  std::vector<TrialResult> out(ps.size());
  RunOptions o;
  o.sweep_seed = 7;
  return cuda::prepare_trials(b, 0, ps.size(), o, 1, out, nullptr);
}

// stsweep run's CUDA time line: summed over runs, and a warning only when
// set-up took longer than everything the device did.
TEST(DevicePlan, TimeReportSumsRunsAndSaysWhenTheHostBounds) {
  cuda::RunStats total, a, b;
  EXPECT_EQ(cuda::time_report(total), "");
  a.chunks = 1, a.setup_s = 0.5, a.train_s = 1.0, a.eval_s = 0.1, a.total_s = 1.7, a.paths = "fused";
  b.chunks = 2, b.setup_s = 0.25, b.train_s = 0.5, b.total_s = 0.8, b.paths = "fused, warp";
  b.teachers = 4, b.teacher_s = 0.125;
  cuda::accumulate(total, a);
  cuda::accumulate(total, b);
  EXPECT_EQ(cuda::time_report(total),
            "3 waves (fused, warp); host set-up 0.75 s (all threads), device training 1.50 s, evaluation 0.10 s, "
            "4 trained teachers 0.12 s; backend wall 2.50 s");
  total.setup_s = 1.8;  // > 1.5 + 0.1 + 0.125
  EXPECT_NE(cuda::time_report(total).find("the host bounds this run"), std::string::npos);
}

TEST(DevicePlan, AutomaticPathsAndFallbacks) {
  std::vector<std::string> logs;
  const auto log = [&](const std::string& m) { logs.push_back(m); };
  cuda::DeviceLimits big;
  big.shared_per_block = 227 * 1024;
  // Small widths: a warp per network.
  auto w = prepare({small_trial(1), small_trial(2)});
  auto g = cuda::plan_groups(w, cuda::Path::automatic, 4, big, log);
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0].path, cuda::Path::warp);
  EXPECT_EQ(g[0].warps_per_block, cuda::kWarpsPerBlock);
  EXPECT_EQ(g[0].nets.size(), 4u);  // students and twins
  // Width 64 (the standard grid): a block per network.
  TrialParams wide = small_trial(3);
  wide.d = 64;
  wide.k = 16;
  wide.hidden = {64};
  wide.m = 16;
  wide.n_train = 128;
  wide.path = TrainPath::data;
  w = prepare({wide});
  g = cuda::plan_groups(w, cuda::Path::automatic, 4, big, log);
  ASSERT_EQ(g.size(), 1u);
  EXPECT_EQ(g[0].path, cuda::Path::fused);
  EXPECT_TRUE(logs.empty());
  // An arena too big for a block: cuBLAS (data path) or general (moment path, logged).
  cuda::DeviceLimits tiny;
  tiny.shared_per_block = 1024;
  g = cuda::plan_groups(w, cuda::Path::automatic, 4, tiny, log);
  EXPECT_EQ(g[0].path, cuda::Path::cublas);
  g = cuda::plan_groups(w, cuda::Path::fused, 4, tiny, log);
  EXPECT_EQ(g[0].path, cuda::Path::general);
  ASSERT_EQ(logs.size(), 1u);
  EXPECT_NE(logs[0].find("does not fit"), std::string::npos) << logs[0];
  wide.path = TrainPath::moment;
  w = prepare({wide});
  g = cuda::plan_groups(w, cuda::Path::cublas, 4, big, log);
  EXPECT_EQ(g[0].path, cuda::Path::general);
  EXPECT_NE(logs.back().find("no moment path"), std::string::npos) << logs.back();
  // Mixed matched layers and paths: one group each; members most steps first.
  std::vector<TrialParams> mixed{small_trial(1), small_trial(2), small_trial(3), small_trial(4)};
  mixed[1].path = TrainPath::moment;
  mixed[2].steps = 50;
  mixed[3].steps = 70;
  mixed[0].path = mixed[2].path = mixed[3].path = TrainPath::data;
  w = prepare(mixed);
  g = cuda::plan_groups(w, cuda::Path::automatic, 4, big, log);
  ASSERT_EQ(g.size(), 2u);
  EXPECT_EQ(g[0].members, (std::vector<size_t>{3, 2, 0}));
  EXPECT_EQ(g[0].maxT, 70);
  EXPECT_EQ(g[1].members, (std::vector<size_t>{1}));
  EXPECT_THROW(cuda::parse_path("fast"), std::runtime_error);
  EXPECT_EQ(cuda::parse_path("warp"), cuda::Path::warp);
}

// The pools of a wave are sized from the batch's worst trial (worst_trial_bytes)
// before its trials are set up; check_wave_fits holds the planned groups to
// that (the emulator checks every wave it runs, so every emulated test covers
// the sizing). Here: a wave of worst-case trials fills its pools to within one
// trial, and a pool one trial short is refused with the reason.
// A wave pins at most 1/8 of the host's RAM (less the pools' slack), at least
// one trial; nothing bounds it when the RAM or the host bytes are unknown.
TEST(DevicePlan, PinnedHostMemoryBoundsTheWave) {
  const size_t gib = size_t{1} << 30;
  EXPECT_EQ(cuda::host_wave_cap(1 << 20, 128 * gib), (16 * gib - cuda::kPoolSlack) / (1 << 20));
  EXPECT_EQ(cuda::host_wave_cap(3 * gib, 128 * gib), 5u);  // (16 GiB - 1 MiB) / 3 GiB
  EXPECT_EQ(cuda::host_wave_cap(64 * gib, 128 * gib), 1u);  // never 0
  EXPECT_EQ(cuda::host_wave_cap(1000, 4 << 20), 1u);         // RAM / 8 under the slack
  EXPECT_EQ(cuda::host_wave_cap(0, 128 * gib), SIZE_MAX);
  EXPECT_EQ(cuda::host_wave_cap(1000, 0), SIZE_MAX);
  // Small trials stay far from it on a 128 GiB host.
  const Batch b = make_batch(std::vector<TrialParams>(4, small_trial(1)));
  size_t vwork = 0;
  const cuda::TrialBytes tb = cuda::worst_trial_bytes(b, sizeof(float), cuda::batch_maxck(b), &vwork);
  EXPECT_GT(cuda::host_wave_cap(tb.host, 128 * gib), size_t{1} << 20) << tb.host << " host bytes a trial";
}

TEST(DevicePlan, WavesFitThePoolsSizedForThem) {
  std::vector<TrialParams> ps;
  for (int s = 1; s <= 4; ++s) {
    TrialParams p = small_trial(s);
    p.lambda = 0.7;  // teacher features in the arena, and a twin
    p.baseline = true;
    p.path = TrainPath::data;
    ps.push_back(p);
  }
  ps[2].checkpoints = 3;  // fewer checkpoint steps than the worst
  const Batch b = make_batch(ps);
  const auto w = prepare(ps);
  ASSERT_EQ(w.size(), ps.size());
  cuda::DeviceLimits big;
  big.shared_per_block = 227 * 1024;
  for (size_t real : {size_t(4), size_t(8)})
    for (cuda::Path path : {cuda::Path::fused, cuda::Path::general, cuda::Path::cublas}) {
      SCOPED_TRACE(std::string(cuda::name(path)) + ", " + std::to_string(real) + "-byte reals");
      const auto plans = cuda::plan_groups(w, path, real, big, [](const std::string&) {});
      size_t vwork = 0;
      const cuda::TrialBytes tb = cuda::worst_trial_bytes(b, real, cuda::batch_maxck(b), &vwork);
      EXPECT_GT(vwork, 0u);
      EXPECT_NO_THROW(cuda::check_wave_fits(plans, real, w.size(), tb, cuda::kPoolSlack));
      // The alignment allowance is checked too: 256 bytes a buffer.
      EXPECT_THROW(cuda::check_wave_fits(plans, real, w.size(), tb, 256), std::logic_error);
      size_t dev = 0, host = 0;
      for (const auto& g : plans) {
        const cuda::GroupSizes z = cuda::group_sizes(g);
        dev += z.dev_bytes(real);
        host += z.host_bytes(real);
        // A teacher group carries no evaluation: no eval data, metrics or items.
        const cuda::GroupSizes t = cuda::group_sizes(g, true);
        EXPECT_EQ(t.eval + t.metrics + t.items, 0u);
        EXPECT_EQ(t.arena, z.arena);
        EXPECT_LT(t.dev_bytes(real), z.dev_bytes(real));
      }
      EXPECT_GT(host, (w.size() - 1) * tb.host);
      // The worst trial reserves a work area in global memory, which only the
      // general and cuBLAS trainers use (the fused trainer's is in shared
      // memory): for those two the estimate is tight.
      if (path == cuda::Path::fused) continue;
      EXPECT_GT(dev, (w.size() - 1) * tb.dev);
      try {
        cuda::check_wave_fits(plans, real, w.size() - 1, tb, cuda::kPoolSlack);
        ADD_FAILURE() << "a pool one trial short was accepted";
      } catch (const std::logic_error& e) {
        EXPECT_NE(std::string(e.what()).find("sizing bug"), std::string::npos) << e.what();
      }
    }
}

// ------------------------------------------- the kernels against the CPU --

// A team of one thread runs each product and sum in the CPU's order, so the
// emulated device equals the CPU backend BIT FOR BIT: the layouts, packing,
// loop, snapshots, evaluation and result assembly of the device code add
// nothing of their own. Every path the emulator has, float32 and float64.
TEST(DeviceEmu, OneThreadTeamsEqualTheCpuBitForBit) {
  for (const Batch& b : by_shape(variety_trials()))
    for (Precision prec : {Precision::f32, Precision::f64}) {
      const auto ref = run_cpu(b, prec);
      for (cuda::Path path : {cuda::Path::fused, cuda::Path::general}) {
        std::string paths;
        const auto got = run_emu(b, prec, path, 1, &paths);
        ASSERT_EQ(got.size(), ref.size());
        for (size_t i = 0; i < ref.size(); ++i) {
          ASSERT_EQ(ref[i].status, Status::done) << ref[i].message;
          EXPECT_TRUE(std::isfinite(got[i].test_risk) && got[i].train_loss > 0);
          expect_same(got[i], ref[i], paths + (prec == Precision::f32 ? " f32 " : " f64 ") +
                                          name(b.trials[i].activation) + " " + name(b.trials[i].path) +
                                          " trial " + std::to_string(i));
        }
      }
    }
}

// Real team sizes (a 32-lane warp, 64- and 256-thread blocks) split every
// product and sum as the device does: the CPU's metrics to float32 rounding
// in float32 and to 1e-9 in float64.
TEST(DeviceEmu, TeamsMatchTheCpu) {
  std::vector<TrialParams> ps = variety_trials();
  for (TrialParams& p : ps) p.steps = std::min<int64_t>(p.steps, 25);
  const std::vector<Batch> batches = by_shape(ps);
  for (const Batch& b : batches) {
    const auto ref32 = run_cpu(b, Precision::f32);
    const auto ref64 = run_cpu(b, Precision::f64);
    std::vector<std::pair<cuda::Path, int>> teams{{cuda::Path::warp, 32}, {cuda::Path::fused, 64}};
    if (&b == &batches.front()) teams.push_back({cuda::Path::general, 256});  // slow to emulate
    for (const auto& [path, threads] : teams) {
      std::string paths;
      const auto got32 = run_emu(b, Precision::f32, path, threads, &paths);
      EXPECT_EQ(paths, cuda::name(path));
      const auto got64 = run_emu(b, Precision::f64, path, threads);
      for (size_t i = 0; i < ref32.size(); ++i) {
        const std::string what = paths + " x" + std::to_string(threads) + " " +
                                 name(b.trials[i].activation) + " " + name(b.trials[i].path) +
                                 " trial " + std::to_string(i);
        expect_close(got32[i], ref32[i], 2e-3, 1e-6, "f32 " + what);
        expect_close(got64[i], ref64[i], 1e-9, 1e-13, "f64 " + what);
      }
    }
  }
}

// The weights a team trains are the serial path's, bit for bit: every product
// is the same fma chain per element whatever the team (TrialMathTeam), and the
// elementwise work and the transposes are exact. Only the loss sums (the
// reported losses, the divergence check) differ in rounding. So a network
// trained on the device, a teacher for instance, could stand in for one
// trained on the host.
template <class Real>
void team_weights_equal_serial(Activation act, const std::vector<int>& hidden, bool moment = false) {
  TrialParams p = base_params();
  p.d = 16;
  p.k = 4;
  p.m = 4;
  p.hidden = hidden;
  p.n_train = 32;
  p.activation = act;
  p.init_scale = 0.5;
  const TrialProblem pr = setup_trial(p, 3);
  const std::vector<int>& w = pr.w;
  const int L = pr.L, N = p.n_train;
  const tm::Net net = make_net(w, act);
  const uint32_t matched = matched_mask(pr);
  const Real lambda = Real(0.5), lr = Real(0.05);
  // One network's buffers (host/net_buffers.hpp), from the trial's data and
  // initial weights.
  struct Net {
    NetWeights<Real> w;
    std::unique_ptr<DataPath<Real>> dp;
    std::unique_ptr<MomentPath<Real>> mp;
  };
  auto make = [&] {
    auto n = std::make_unique<Net>(Net{NetWeights<Real>(net, pr.W0), nullptr, nullptr});
    if (moment)
      n->mp = std::make_unique<MomentPath<Real>>(net, trial_moments(pr, matched), matched);
    else
      n->dp = std::make_unique<DataPath<Real>>(net, pr.Xn, pr.Y, &pr.feature, matched);
    return n;
  };
  constexpr int kSteps = 6;
  auto steps = [&](const auto& team, Net& n) {
    for (int t = 0; t < kSteps; ++t) {
      if (moment) {
        tm::moment_forward(team, net, n.w.view, n.mp->ms, matched, n.mp->wk);
        tm::moment_backward_update(team, net, n.w.view, n.mp->ms, lambda, matched, lr, n.mp->wk);
      } else {
        tm::data_forward(team, net, n.w.view, n.dp->ds, matched, n.dp->wk);
        tm::data_backward_update(team, net, n.w.view, n.dp->ds, lambda, matched, lr, n.dp->wk);
      }
    }
    if (!moment) tm::data_refresh_w1(team, net, n.w.view);
  };
  auto serial = make();
  steps(tm::SerialTeam{}, *serial);
  for (const auto& [threads, warp] : std::vector<std::pair<int, bool>>{{32, true}, {64, false}, {256, false}}) {
    auto team = make();
    cuda::run_emulated_team(threads, warp, [&](const cuda::EmuTeam& t) { steps(t, *team); });
    for (int l = 1; l <= L; ++l) {
      const size_t n = serial->w.W[l].size();
      ASSERT_EQ(team->w.W[l].size(), n);
      EXPECT_EQ(std::memcmp(team->w.W[l].data(), serial->w.W[l].data(), n * sizeof(Real)), 0)
          << (sizeof(Real) == 4 ? "float" : "double") << " " << name(act) << (moment ? " moment" : " data")
          << " path, depth " << L << ", team of "
          << threads << (warp ? " (warp)" : "") << ": W" << l << " differs";
    }
  }
}

TEST(DeviceEmu, TeamTrainedWeightsEqualTheSerialPathBitForBit) {
  team_weights_equal_serial<double>(Activation::linear, {16});
  team_weights_equal_serial<double>(Activation::tanh, {16, 12});
  team_weights_equal_serial<float>(Activation::linear, {16});
  team_weights_equal_serial<float>(Activation::relu, {16, 12});
  team_weights_equal_serial<double>(Activation::linear, {16, 12}, true);
  team_weights_equal_serial<float>(Activation::linear, {16}, true);
}

// The general path is the fused kernel on global memory: bit-identical.
// Compacting the evaluation's items changes nothing a result holds.
TEST(DeviceEmu, GeneralEqualsFusedAndCompactionIsInvisible) {
  std::vector<TrialParams> ps;
  for (int i = 0; i < 4; ++i) {
    TrialParams p = small_trial(i);
    p.hidden = {7, 5};
    p.path = TrainPath::data;
    p.lambda = 0.3 * i;
    p.steps = 15 + 4 * i;
    ps.push_back(p);
  }
  ps[2].lr = 1e3;  // diverges: its later checkpoints are never measured
  const Batch b = make_batch(ps);
  const auto fused = run_emu(b, Precision::f32, cuda::Path::fused, 64);
  const auto general = run_emu(b, Precision::f32, cuda::Path::general, 64);
  const auto all_items = run_emu(b, Precision::f32, cuda::Path::fused, 64, nullptr, false);
  ASSERT_EQ(fused[2].status, Status::diverged);
  for (size_t i = 0; i < ps.size(); ++i) {
    expect_same(general[i], fused[i], "general vs fused " + std::to_string(i));
    expect_same(all_items[i], fused[i], "all items vs compacted " + std::to_string(i));
  }
}

// One trial diverges: it is a result (status diverged, at the CPU's step),
// and its batch-mates are bit for bit what they are in a batch without it.
TEST(DeviceEmu, DivergenceLeavesBatchMatesUntouched) {
  std::vector<TrialParams> ps;
  for (int i = 0; i < 4; ++i) {
    TrialParams p = small_trial(i);
    p.lambda = 0.25 * i;
    p.path = TrainPath::data;
    ps.push_back(p);
  }
  std::vector<TrialParams> bad = ps, without = ps;
  bad[2].lr = 1e3;
  without.erase(without.begin() + 2);
  for (cuda::Path path : {cuda::Path::warp, cuda::Path::fused}) {
    SCOPED_TRACE(cuda::name(path));
    const int threads = path == cuda::Path::warp ? 32 : 64;
    const auto good_r = run_emu(make_batch(ps), Precision::f32, path, threads);
    const auto bad_r = run_emu(make_batch(bad), Precision::f32, path, threads);
    auto wo = make_batch(without);
    wo.ids = {100, 101, 103};
    const auto wo_r = run_emu(wo, Precision::f32, path, threads);
    ASSERT_EQ(bad_r[2].status, Status::diverged) << bad_r[2].message;
    EXPECT_LT(bad_r[2].steps_run, bad[2].steps);
    const auto cpu = run_cpu(make_batch(bad), Precision::f32);
    EXPECT_EQ(cpu[2].status, Status::diverged);
    EXPECT_EQ(cpu[2].steps_run, bad_r[2].steps_run);
    for (int i : {0, 1, 3}) {
      EXPECT_EQ(bad_r[i].status, Status::done);
      expect_same(bad_r[i], good_r[i], "batch-mate " + std::to_string(i));
    }
    expect_same(bad_r[0], wo_r[0], "without, 0");
    expect_same(bad_r[1], wo_r[1], "without, 1");
    expect_same(bad_r[3], wo_r[2], "without, 3");
  }
}

// ------------------------------------------------------ trained teachers --

// Batches whose trials have trained teachers, two trials per teacher: linear
// teachers on both paths (few samples: data; many: moments), a depth-3 one, a
// tanh one (as_trained) and one that diverges (its trials fail).
std::vector<Batch> teacher_batches() {
  std::vector<Batch> out;
  auto make = [](int seed, int n_train, double lr) {
    TrialParams p = small_trial(seed);
    p.teacher.kind = TeacherKind::trained;
    p.teacher.n_train = n_train;
    p.teacher.steps = 20;
    p.teacher.lr = lr;
    p.label_noise = 0.1;
    p.steps = 12;
    return p;
  };
  std::vector<TrialParams> lin, deep, nonlin;
  int id = 0;
  for (auto [n_train, lr] : {std::pair{4, 0.1}, std::pair{400, 0.1}, std::pair{12, 80.0}})
    for (double noise : {0.1, 0.6}) {
      TrialParams p = make(id++ / 2, n_train, lr);
      p.noise = noise;
      lin.push_back(p);
      TrialParams q = p;
      q.hidden = {7, 5};
      deep.push_back(q);
      TrialParams r = p;
      r.activation = Activation::tanh;
      r.path = TrainPath::data;
      r.teacher.decomposition = Decomposition::as_trained;
      nonlin.push_back(r);
    }
  for (auto* v : {&lin, &deep, &nonlin}) out.push_back(make_batch(*v));
  return out;
}

void expect_teacher_results_equal(const std::vector<TrialResult>& got, const std::vector<TrialResult>& ref,
                                  const std::string& what) {
  ASSERT_EQ(got.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    SCOPED_TRACE(what + ", trial " + std::to_string(i));
    EXPECT_EQ(got[i].status, ref[i].status) << got[i].message << " | " << ref[i].message;
    EXPECT_EQ(got[i].message, ref[i].message);
    if (ref[i].status != Status::done) continue;
    // From the teacher's weights alone (set-up, float64): equal bits iff the
    // teachers' bits are equal.
    EXPECT_EQ(std::memcmp(&got[i].teacher_clean_risk, &ref[i].teacher_clean_risk, sizeof(double)), 0)
        << got[i].teacher_clean_risk << " vs " << ref[i].teacher_clean_risk;
    expect_same(got[i], ref[i], what);
  }
}

// The device trains a wave's new teachers itself (prepare_teachers, float64,
// one network per block or warp) and hands them to set-up's cache; the trials
// must come out exactly as with teachers trained by set-up on one host core:
// the same path (moments for the linear teacher with many samples), the same
// loop, the same divergence verdict, and teams that train the serial path's
// bits. Every trainer the emulator has, on one-warp teams; with one-thread
// teams the whole run equals the CPU backend's bit for bit.
TEST(DeviceEmu, TeachersTrainedOnTheDeviceAreTheHostsBitForBit) {
  const std::vector<Batch> batches = teacher_batches();
  // Both teacher paths are exercised.
  {
    const auto tt = teachers_to_train(batches[0].trials, 0, batches[0].trials.size(), 7, 1);
    ASSERT_EQ(tt.size(), 3u);
    EXPECT_FALSE(tt[0].moment);
    EXPECT_TRUE(tt[1].moment);
  }
  struct Team {
    cuda::Path path;
    int threads;
  };
  for (size_t bi = 0; bi < batches.size(); ++bi) {
    const Batch& b = batches[bi];
    reset_teacher_cache(size_t{64} << 20);
    const auto cpu = run_cpu(b, Precision::f32);
    ASSERT_EQ(teacher_cache_stats().trained, 3);
    ASSERT_EQ(cpu[4].status, Status::failed);  // the diverged teacher
    ASSERT_EQ(cpu[0].status, Status::done) << cpu[0].message;
    // (Blocks of 64 and 256 train the serial bits too: TeamTrainedWeightsEqual...;
    // here the plumbing, on one-warp teams, which emulate fastest.)
    for (Team t : {Team{cuda::Path::fused, 1}, Team{cuda::Path::warp, 32}, Team{cuda::Path::general, 32}}) {
      const std::string what = "batch " + std::to_string(bi) + ", " + cuda::name(t.path) + " x" +
                               std::to_string(t.threads);
      cuda::EmuOptions eo;
      eo.path = t.path;
      eo.block_threads = t.threads;
      eo.device_teachers = false;
      reset_teacher_cache(size_t{64} << 20);
      const auto host = run_emu_with(b, Precision::f32, eo);
      eo.device_teachers = true;
      reset_teacher_cache(0);  // pinned teachers are found whatever the budget
      auto be = cuda::make_emulated_backend(eo);
      RunOptions o;
      o.sweep_seed = 7;
      const auto dev = be->run(b, o);
      const TeacherCacheStats st = teacher_cache_stats();
      EXPECT_EQ(st.trained, 0) << what << ": set-up trained a teacher the device had trained";
      EXPECT_EQ(st.elsewhere, 3) << what;
      EXPECT_EQ(st.bytes, 0u) << what << ": unpinned teachers stay past a zero budget";
      EXPECT_EQ(cuda::emulated_stats(*be).teachers, 3) << what;
      expect_teacher_results_equal(dev, host, what + ", device vs host teachers");
      if (t.threads == 1) expect_teacher_results_equal(dev, cpu, what + ", vs the CPU backend");
    }
  }
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
}

// A batch cut into waves (each its own teacher pass, set-up and groups, as
// on the device with STSWEEP_CUDA_WAVE) gives the bits of one wave; a teacher
// that trials of two waves share is trained once, and its pins end with its
// wave's set-up.
TEST(DeviceEmu, SeveralWavesEqualOne) {
  const std::vector<TrialParams> ps = shared_teacher_trials();
  const Batch b = make_batch(ps);
  RunOptions o;
  o.sweep_seed = 7;
  cuda::EmuOptions eo;
  eo.block_threads = 32;
  reset_teacher_cache(size_t{64} << 20);
  auto one = cuda::make_emulated_backend(eo);
  const auto ref = one->run(b, o);
  EXPECT_EQ(cuda::emulated_stats(*one).chunks, 1);
  EXPECT_EQ(cuda::emulated_stats(*one).teachers, 3);
  for (size_t wave : {2u, 3u}) {
    eo.wave = wave;
    reset_teacher_cache(size_t{64} << 20);
    auto several = cuda::make_emulated_backend(eo);
    const auto got = several->run(b, o);
    EXPECT_EQ(cuda::emulated_stats(*several).chunks, static_cast<int>((ps.size() + wave - 1) / wave));
    EXPECT_EQ(cuda::emulated_stats(*several).teachers, 3) << "a teacher of two waves trained twice";
    // stsweep run's time line: the waves, host and device seconds, over every run().
    const std::string rep = several->time_report();
    const int waves = static_cast<int>((ps.size() + wave - 1) / wave);
    EXPECT_EQ(rep.rfind(std::to_string(waves) + " waves (", 0), 0u) << rep;
    EXPECT_NE(rep.find("host set-up "), std::string::npos) << rep;
    EXPECT_NE(rep.find(", 3 trained teachers "), std::string::npos) << rep;
    several->run(b, o);
    EXPECT_EQ(several->time_report().rfind(std::to_string(2 * waves) + " waves (", 0), 0u) << "not summed over runs";
    EXPECT_EQ(teacher_cache_stats().trained, 0);
    for (size_t i = 0; i < ref.size(); ++i) {
      ASSERT_EQ(ref[i].status, Status::done) << ref[i].message;
      EXPECT_EQ(got[i].trial, ref[i].trial);
      expect_same(got[i], ref[i], "wave " + std::to_string(wave) + ", trial " + std::to_string(i));
    }
  }
  reset_teacher_cache(size_t{kTeacherCacheDefaultMb} << 20);
}

// Fresh random shapes and settings on every run (the seed is printed), as
// tests/test_cuda.cpp's CudaFused test does on the GPU, here on the emulator
// with warps and 64-thread blocks.
TEST(DeviceEmu, MatchesCpuOnFreshRandomProblems) {
  const unsigned seed = std::random_device{}();
  std::printf("seed %u\n", seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937 g(seed);
  RandomLimits lim;  // smaller than the GPU test's: 32 threads per emulated block
  lim.max_d = 20;
  lim.max_m = 5;
  lim.max_h = 16;
  lim.max_n = 24;
  lim.min_test = 20;
  lim.max_test = 60;
  lim.min_steps = 5;
  lim.max_steps = 30;
  lim.max_ck = 6;
  lim.trials = 3;
  for (int shape = 0; shape < 3; ++shape) {
    const std::vector<TrialParams> ps = random_trials(g, lim);
    const Batch b = make_batch(ps);
    const auto ref = run_cpu(b, Precision::f32);
    for (const auto& [path, threads] : std::vector<std::pair<cuda::Path, int>>{
             {cuda::Path::warp, 32}, {cuda::Path::fused, 64}}) {
      const auto got = run_emu(b, Precision::f32, path, threads);
      for (size_t i = 0; i < ref.size(); ++i)
        expect_close(got[i], ref[i], 2e-3, 1e-6,
                     "shape " + std::to_string(shape) + " " + cuda::name(path) + " trial " +
                         std::to_string(i) + " (" + name(ps[i].activation) + ")");
    }
  }
}

// ------------------------------------------------- the shared-memory model --

// A warp's trace with one access per thread: thread i touches word f(i).
cuda::SmemTrace one_instruction(int bytes, const std::function<uintptr_t(int)>& word) {
  cuda::SmemTrace t;
  t.rank.resize(32);
  for (int i = 0; i < 32; ++i) t.rank[i].push_back({word(i) * 4 + 4096, bytes, cuda::SmemAccess::load});
  return t;
}

TEST(SmemModel, BankRulesOnKnownPatterns) {
  // 32-bit: consecutive words, one word for all (broadcast), stride 2, stride 32.
  EXPECT_EQ(cuda::smem_report(one_instruction(4, [](int i) { return uintptr_t(i); })).wavefronts, 1);
  EXPECT_EQ(cuda::smem_report(one_instruction(4, [](int) { return uintptr_t(5); })).wavefronts, 1);
  EXPECT_EQ(cuda::smem_report(one_instruction(4, [](int i) { return uintptr_t(2 * i); })).wavefronts, 2);
  EXPECT_EQ(cuda::smem_report(one_instruction(4, [](int i) { return uintptr_t(32 * i); })).wavefronts, 32);
  // Two rows 64 words apart, half a warp each: the same banks, 2 wavefronts.
  EXPECT_EQ(cuda::smem_report(one_instruction(4, [](int i) { return uintptr_t(i < 16 ? 0 : 64); })).wavefronts,
            2);
  // 128-bit: the three LDS.128 patterns measured with Nsight Compute on an H100
  // (NVIDIA developer forum, "Discrepancy in LDS.128 Wavefronts: Does SMEM
  // broadcast across quarter-warps?"). Contiguous, 16 bytes a thread: 4.
  const auto own = cuda::smem_report(one_instruction(16, [](int i) { return uintptr_t(4 * i); }));
  EXPECT_EQ(own.wavefronts, 4);
  EXPECT_EQ(own.wavefronts_quarter, 4);
  EXPECT_EQ(own.vector_instr, 1);
  // Threads t and t + 16 read chunk t, chunks 32 bytes apart: 8.
  const auto p1 = cuda::smem_report(one_instruction(16, [](int i) { return uintptr_t(8 * (i % 16)); }));
  EXPECT_EQ(p1.wavefronts, 8);
  EXPECT_EQ(p1.wavefronts_quarter, 8);
  // Threads 0-15 read one chunk, 16-31 the chunk 32 bytes on: 2 (by quarters it would be 4).
  const auto p2 = cuda::smem_report(one_instruction(16, [](int i) { return uintptr_t(i < 16 ? 0 : 8); }));
  EXPECT_EQ(p2.wavefronts, 2);
  EXPECT_EQ(p2.wavefronts_quarter, 4);
  // The forward GEMM's X rows: two 16-byte chunks 64 words apart, half a warp each.
  const auto rows = cuda::smem_report(one_instruction(16, [](int i) { return uintptr_t(i < 16 ? 0 : 64); }));
  EXPECT_EQ(rows.wavefronts, 2);
  EXPECT_EQ(rows.wavefronts_quarter, 4);
}

TEST(SmemModel, BarriersSplitInstructionsAndFmasCountPerWarp) {
  cuda::SmemTrace t;
  t.rank.resize(64);  // two warps
  for (int i = 0; i < 64; ++i) {
    auto& v = t.rank[i];
    v.push_back({uintptr_t(4 * i), 4, cuda::SmemAccess::load});  // conflict-free
    v.push_back({8, 0, cuda::SmemAccess::fma});
    v.push_back({0, 0, cuda::SmemAccess::barrier});
    if (i % 32 < 8) v.push_back({uintptr_t(4 * 32 * i), 4, cuda::SmemAccess::store});  // 8 threads, one bank
  }
  std::vector<cuda::SmemReport> seg;
  const cuda::SmemReport r = cuda::smem_report(t, 32, &seg);
  EXPECT_EQ(r.load_instr, 2);
  EXPECT_EQ(r.store_instr, 2);
  EXPECT_EQ(r.fma_instr, 16);  // 8 per warp
  EXPECT_EQ(r.wavefronts, 2 * 1 + 2 * 8);
  ASSERT_EQ(seg.size(), 2u);
  EXPECT_EQ(seg[0].fma_instr, 16);
  EXPECT_EQ(seg[1].wavefronts, 16);
  EXPECT_DOUBLE_EQ(r.fma_bound(), (16.0 / 4) / 18);
}

// The emulated team of n ranks, run one rank at a time (the helpers below
// have no sync inside), recording its shared-memory accesses into `t`.
cuda::EmuTeam tracing_team(cuda::SmemTrace* t, int r, int n) { return cuda::EmuTeam{nullptr, r, n, t}; }

// The step's sums (tm::residual_sq, tm::diff_sq): member r takes elements r,
// r + size, ... into lanes 0, 1, ..., 15, 0, ...; so a warp reads consecutive
// words (one wavefront an instruction; blocks of 16 a member cost 16), and a
// team of one (the CPU, through its SIMD path) sums element i in lane i % 16.
// tm::transpose moves whole warps' diagonals: its loads and stores are
// conflict-free too.
TEST(SmemModel, SumsAndTransposeAreConflictFreeAndKeepTheirLanes) {
  const int n = 2048 + 40;  // not a multiple of 16 x 256
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> O(n), Y(n), D(n);
  for (int i = 0; i < n; ++i) O[i] = g(rng), Y[i] = g(rng);
  const float invN = 1.f / 128;
  for (int sz : {1, 32, 256}) {
    cuda::SmemTrace rt, dt;
    rt.rank.resize(sz);
    dt.rank.resize(sz);
    for (int r = 0; r < sz; ++r) {
      std::fill(D.begin(), D.end(), NAN);
      const float got = tm::residual_sq(tracing_team(&rt, r, sz), n, O.data(), Y.data(), D.data(), invN);
      const float got_d = tm::diff_sq(tracing_team(&dt, r, sz), n, O.data(), Y.data());
      float p[tm::kLanes] = {};
      int c = 0;
      for (int i = r; i < n; i += sz, ++c) {
        const float e = O[i] - Y[i];
        p[c % tm::kLanes] = std::fma(e, e, p[c % tm::kLanes]);
        ASSERT_EQ(D[i], e * invN) << "element " << i << ", team of " << sz;
      }
      const float want = tm::combine_lanes(p);
      EXPECT_EQ(got, want) << "rank " << r << " of " << sz;
      EXPECT_EQ(got_d, want) << "rank " << r << " of " << sz;
    }
    if (sz < 32) continue;
    for (const auto* t : {&rt, &dt}) {
      const cuda::SmemReport rep = cuda::smem_report(*t);
      EXPECT_GT(rep.load_instr, 0);
      EXPECT_EQ(rep.wavefronts, rep.load_instr + rep.store_instr) << "team of " << sz;
    }
  }
  // Transposes: the second layer's W (16 x 64) after its update, the first
  // layer's (64 x 64), and shapes without the diagonal schedule (copies in
  // turn), on teams of 1, 32 and 256.
  const std::pair<int, int> shapes[] = {{16, 64}, {64, 64}, {8, 32}, {64, 96}, {16, 16}, {5, 7}, {48, 64}};
  for (const auto& [rows, cols] : shapes) {
    std::vector<float> W(rows * cols), WT;
    for (auto& w : W) w = g(rng);
    for (int sz : {1, 32, 256}) {
      WT.assign(rows * cols, NAN);
      cuda::SmemTrace tt;
      tt.rank.resize(sz);
      for (int r = 0; r < sz; ++r) tm::transpose(tracing_team(&tt, r, sz), rows, cols, W.data(), WT.data());
      for (int i = 0; i < rows; ++i)
        for (int j = 0; j < cols; ++j)
          ASSERT_EQ(WT[j * rows + i], W[i * cols + j]) << rows << " x " << cols << ", team of " << sz;
      const bool diagonal = sz % 32 == 0 && cols % 32 == 0 && (rows % 32 == 0 || 32 % rows == 0);
      if (!diagonal) continue;
      const cuda::SmemReport tr = cuda::smem_report(tt);
      EXPECT_EQ(tr.load_instr, rows * cols / 32);
      EXPECT_EQ(tr.store_instr, rows * cols / 32);
      EXPECT_EQ(tr.wavefronts, tr.load_instr + tr.store_instr) << rows << " x " << cols << ", team of " << sz;
    }
  }
}

// The traced GEMMs of one data-path step hold every multiply-add of the step
// (2N (2 h d + 3 m h) flops for a 2-layer network: docs/PERFORMANCE.md), and
// the scalar-A team gives the same bits as the vector-A one.
TEST(SmemModel, TraceCoversEveryFmaOfAStepAndScalarAEqualsVectorA) {
  TrialParams p = base_params();
  p.d = 16;
  p.k = 4;
  p.m = 4;
  p.hidden = {16};
  p.n_train = 32;
  p.path = TrainPath::data;
  p.baseline = false;
  p.checkpoints = 2;
  auto traced = [&](int steps, bool va, std::vector<TrialResult>* out) {
    TrialParams q = p;
    q.steps = steps;
    cuda::SmemTrace trace;
    cuda::EmuOptions eo;
    eo.path = cuda::Path::fused;
    eo.block_threads = 64;
    eo.vector_a = va;
    eo.trace = &trace;
    auto r = run_emu_with(make_batch({q}), Precision::f32, eo);
    if (out) *out = r;
    return cuda::smem_report(trace);
  };
  std::vector<TrialResult> vec, sca;
  cuda::SmemReport step = traced(3, true, &vec);
  step -= traced(2, true, nullptr);
  const long long flops = 2LL * 32 * (2 * 16 * 16 + 3 * 4 * 16);
  // Lanes per warp instruction: every thread of the 64 runs the same tiles here.
  EXPECT_EQ(step.fma_instr * 32 * 2, flops);
  EXPECT_GT(step.vector_instr, 0) << "X is 16-byte aligned with rows of 16 floats: vector A loads";
  const cuda::SmemReport all_scalar = traced(3, false, &sca);
  EXPECT_EQ(all_scalar.vector_instr, 0);
  ASSERT_EQ(vec.size(), 1u);
  expect_same(sca[0], vec[0], "scalar A vs vector A");
}

}  // namespace
}  // namespace stsweep
