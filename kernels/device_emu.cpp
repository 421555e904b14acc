// The CUDA backend emulated on the host (kernels/device_emu.hpp).
#include "device_emu.hpp"

#include <algorithm>
#include <barrier>
#include <chrono>
#include <cstring>
#include <iostream>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "device_body.hpp"

namespace stsweep::cuda {

class EmuGroup {
 public:
  EmuGroup(int n, bool warp) : n_(n), warp_(warp), bar_(n), slots_(static_cast<size_t>(n)) {}
  void sync() { bar_.arrive_and_wait(); }
  template <class T>
  T sum(int r, T x) {
    if (n_ == 1) return x;
    slots_[r] = static_cast<double>(x);  // exact for float and double
    sync();
    T s;
    if (warp_) {
      // WarpTeam::sum: x += __shfl_xor_sync(x, o) for o = 16, 8, 4, 2, 1;
      // every lane ends with the same total (addition commutes exactly).
      T a[kWarp], b[kWarp];
      for (int i = 0; i < kWarp; ++i) a[i] = static_cast<T>(slots_[i]);
      for (int o = kWarp / 2; o > 0; o >>= 1) {
        for (int i = 0; i < kWarp; ++i) b[i] = a[i] + a[i ^ o];
        for (int i = 0; i < kWarp; ++i) a[i] = b[i];
      }
      s = a[r];
    } else {
      // BlockTeam::sum: x += __shfl_down_sync(x, o) for o = 16 .. 1 in each
      // warp (lane 0 holds a tree of its warp), then every thread adds the
      // warps' totals in order, starting from 0.
      s = 0;
      for (int w = 0; w < n_ / kWarp; ++w) {
        T a[kWarp];
        for (int i = 0; i < kWarp; ++i) a[i] = static_cast<T>(slots_[w * kWarp + i]);
        for (int o = kWarp / 2; o > 0; o >>= 1)
          for (int i = 0; i < o; ++i) a[i] += a[i + o];
        s += a[0];
      }
    }
    sync();  // the slots are reused by the next sum
    return s;
  }

 private:
  int n_;
  bool warp_;
  std::barrier<> bar_;
  std::vector<double> slots_;
};

void EmuTeam::sync() const {
  if (trace) trace->rank[r].push_back({0, 0, SmemAccess::barrier});
  if (n > 1) g->sync();
}
float EmuTeam::sum(float x) const { return g->sum(r, x); }
double EmuTeam::sum(double x) const { return g->sum(r, x); }

void run_emulated_team(int n, bool warp, const std::function<void(const EmuTeam&)>& body, SmemTrace* trace) {
  if (n < 1 || (n > 1 && n % kWarp != 0) || (warp && n != kWarp))
    throw std::logic_error("emulated team of " + std::to_string(n) +
                           " threads: 1 or a multiple of 32 (a warp: 32)");
  EmuGroup g(n, warp);
  if (trace) trace->rank.assign(static_cast<size_t>(n), {});
  auto run = [&](int r) {
    try {
      body(EmuTeam{&g, r, n, trace});
    } catch (const std::exception& e) {
      // The other ranks would wait at the barrier forever; the bodies throw
      // only on logic errors, so stop loudly.
      std::cerr << "stsweep: emulated team: rank " << r << " threw: " << e.what() << "\n";
      std::abort();
    }
  };
  std::vector<std::thread> th;
  th.reserve(n - 1);
  for (int r = 1; r < n; ++r) th.emplace_back(run, r);
  run(0);
  for (auto& t : th) t.join();
}

double SmemReport::fma_bound(bool quarter) const {
  const double smem = static_cast<double>(quarter ? wavefronts_quarter : wavefronts);
  const double fma_clk = static_cast<double>(fma_instr) / 4;
  return smem <= fma_clk ? 1.0 : fma_clk / smem;
}

SmemReport& SmemReport::operator+=(const SmemReport& o) {
  load_instr += o.load_instr;
  store_instr += o.store_instr;
  vector_instr += o.vector_instr;
  wavefronts_quarter += o.wavefronts_quarter;
  wavefronts += o.wavefronts;
  fma_instr += o.fma_instr;
  return *this;
}
SmemReport& SmemReport::operator-=(const SmemReport& o) {
  load_instr -= o.load_instr;
  store_instr -= o.store_instr;
  vector_instr -= o.vector_instr;
  wavefronts_quarter -= o.wavefronts_quarter;
  wavefronts -= o.wavefronts;
  fma_instr -= o.fma_instr;
  return *this;
}

namespace {

// Wavefronts of one warp instruction: the most distinct 4-byte words that
// any bank serves, over the accesses given (each covers bytes / 4 words).
long long bank_wavefronts(const std::vector<const SmemAccess*>& acc) {
  std::set<uintptr_t> words[32];
  for (const SmemAccess* a : acc)
    for (int w = 0; w < std::max(1, a->bytes / 4); ++w) {
      const uintptr_t word = a->addr / 4 + static_cast<uintptr_t>(w);
      words[word % 32].insert(word);
    }
  size_t m = 0;
  for (const auto& s : words) m = std::max(m, s.size());
  return static_cast<long long>(std::max<size_t>(m, 1));
}

}  // namespace

SmemReport smem_report(const SmemTrace& t, int warp, std::vector<SmemReport>* segments) {
  SmemReport total;
  if (segments) segments->clear();
  const size_t n = t.rank.size();
  for (size_t w0 = 0; w0 < n; w0 += static_cast<size_t>(warp)) {
    const size_t w1 = std::min(n, w0 + static_cast<size_t>(warp));
    std::vector<size_t> pos(w1 - w0, 0);
    for (size_t sno = 0;; ++sno) {
      SmemReport r;
      // One segment (up to the next barrier) of every thread of the warp.
      std::vector<std::vector<const SmemAccess*>> seg(w1 - w0);
      std::vector<long long> fmas(w1 - w0, 0);
      bool any = false;
      for (size_t i = 0; i < seg.size(); ++i) {
        const auto& v = t.rank[w0 + i];
        size_t& p = pos[i];
        if (p < v.size()) any = true;
        for (; p < v.size() && v[p].kind != SmemAccess::barrier; ++p) {
          if (v[p].kind == SmemAccess::fma) fmas[i] += static_cast<long long>(v[p].addr);
          else seg[i].push_back(&v[p]);
        }
        if (p < v.size()) ++p;  // past the barrier
      }
      if (!any) break;
      r.fma_instr += *std::max_element(fmas.begin(), fmas.end());
      size_t len = 0;
      for (const auto& s : seg) len = std::max(len, s.size());
      for (size_t k = 0; k < len; ++k) {
        std::vector<const SmemAccess*> all;
        std::vector<std::vector<const SmemAccess*>> half(2), quarter(4);
        bool vec = false, store = false;
        for (size_t i = 0; i < seg.size(); ++i) {
          if (k >= seg[i].size()) continue;
          const SmemAccess* a = seg[i][k];
          all.push_back(a);
          half[(i % 32) / 16].push_back(a);
          quarter[(i % 32) / 8].push_back(a);
          vec = vec || a->bytes == 16;
          store = store || a->kind == SmemAccess::store;
        }
        (store ? r.store_instr : r.load_instr) += 1;
        if (vec) {
          ++r.vector_instr;
          for (const auto& h : half)
            if (!h.empty()) r.wavefronts += bank_wavefronts(h);
          for (const auto& q : quarter)
            if (!q.empty()) r.wavefronts_quarter += bank_wavefronts(q);
        } else {
          const long long w = bank_wavefronts(all);
          r.wavefronts += w;
          r.wavefronts_quarter += w;
        }
      }
      total += r;
      if (segments) {
        if (segments->size() <= sno) segments->resize(sno + 1);
        (*segments)[sno] += r;
      }
    }
  }
  return total;
}

namespace {

template <class T>
void poison(std::vector<T>& v) {
  if (v.empty()) return;  // data() may be null, and memset(nullptr, ., 0) is undefined (UBSan)
  std::memset(static_cast<void*>(v.data()), 0xFF, v.size() * sizeof(T));
}

class EmuBackend final : public Backend {
 public:
  explicit EmuBackend(const EmuOptions& eo) : eo_(eo) {
    if (eo_.path == Path::cublas) throw std::invalid_argument("the emulator has no cuBLAS path");
  }
  std::string name() const override { return "cuda-emulated"; }
  std::string device() const override {
    return "host emulation (" + std::to_string(eo_.block_threads) + "-thread blocks)";
  }
  RunStats stats() const { return stats_; }
  std::string time_report() const override { return cuda::time_report(total_); }

  std::vector<TrialResult> run(const Batch& batch, const RunOptions& opt) override {
    const auto t0 = std::chrono::steady_clock::now();
    stats_ = RunStats{};
    std::set<std::string> paths;
    std::vector<TrialResult> out(batch.trials.size());
    if (batch.trials.empty()) return out;
    DeviceLimits lim;
    lim.shared_per_block = eo_.shared_per_block;
    const auto log = [](const std::string& m) { std::cerr << "stsweep: cuda-emulated: " << m << "\n"; };
    const size_t n = batch.trials.size(), real = opt.precision == Precision::f64 ? 8 : 4;
    const size_t cap = eo_.wave > 0 ? eo_.wave : n;
    size_t vwork = 0;
    const TrialBytes tb = worst_trial_bytes(batch, real, batch_maxck(batch), &vwork);
    // Wave by wave, as the device does (one after the other here): the wave's
    // new trained teachers first (float64), handed to set-up's cache pinned
    // until its trials are set up; then its trials (problems shared across
    // the waves, as on the device).
    SetupShare share(batch.trials, 0, n, opt.sweep_seed);
    for (size_t lo = 0; lo < n; lo += cap) {
      const size_t hi = std::min(n, lo + cap);
      PinnedTeachers pinned;
      if (eo_.device_teachers) {
        const std::vector<Prepared> tw = prepare_teachers(batch, lo, hi, opt, 1, &stats_.setup_s);
        for (const GroupPlan& g : plan_groups(tw, eo_.path, sizeof(double), lim, log)) {
          paths.insert(cuda::name(g.path));
          run_group<double>(g, tw, batch, out, &pinned.recipes);
        }
      }
      const std::vector<Prepared> wave = prepare_trials(batch, lo, hi, opt, 1, out, &stats_.setup_s, &share);
      const std::vector<GroupPlan> plans = plan_groups(wave, eo_.path, real, lim, log);
      check_wave_fits(plans, real, wave.size(), tb, kPoolSlack);  // as the device's pools are sized
      for (const GroupPlan& g : plans) {
        paths.insert(cuda::name(g.path));
        if (g.path == Path::cublas) throw std::logic_error("the emulator has no cuBLAS path");
        if (opt.precision == Precision::f64)
          run_group<double>(g, wave, batch, out);
        else
          run_group<float>(g, wave, batch, out);
      }
      ++stats_.chunks;
    }
    for (const auto& p : paths) stats_.paths += (stats_.paths.empty() ? "" : ", ") + p;
    stats_.total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    accumulate(total_, stats_);
    return out;
  }

 private:
  template <class Real>
  void run_group(const GroupPlan& g, const std::vector<Prepared>& wave, const Batch& batch,
                 std::vector<TrialResult>& out, std::vector<std::string>* pinned = nullptr) {
    const Layout& y = g.y;
    const size_t nn = g.nets.size();
    // The device buffers, of the CUDA backend's sizes, poisoned as
    // STSWEEP_CUDA_POISON does.
    const GroupSizes z = group_sizes(g, pinned != nullptr);
    std::vector<Real> arena(z.arena), work(z.work), smem;
    std::vector<double> eval(z.eval), snap(z.snap), metrics(z.metrics);
    std::vector<TrialScalars> ts(z.ts);
    std::vector<long long> ck(z.ck);
    std::vector<NetState> state(z.nets);
    poison(arena);
    poison(eval);
    poison(snap);
    poison(metrics);
    poison(state);
    poison(work);
    pack_group<Real>(g, wave, arena.data(), pinned ? nullptr : eval.data(), ts.data(), ck.data());
    // Shared memory as the launch has it: a block's warps x one network's
    // slice on the warp path, one network's on the fused path.
    const bool warp = g.path == Path::warp;
    const int warps = warp ? g.warps_per_block : 1;
    const size_t net_reals = static_cast<size_t>(y.data) + y.work;
    if (g.path != Path::general) {
      smem.resize(static_cast<size_t>(warps) * net_reals);
      poison(smem);
    }
    GroupBuffers<Real> buf;
    buf.arena = arena.data();
    buf.work = work.empty() ? nullptr : work.data();
    buf.eval = eval.data();
    buf.ts = ts.data();
    buf.ck = ck.data();
    buf.nets = g.nets.data();
    buf.state = state.data();
    buf.snap = snap.data();
    buf.metrics = metrics.data();
    const TrainArgs<Real> a = train_args(g, buf);
    const auto t0 = std::chrono::steady_clock::now();
    // The launch's blocks one after the other, each through the kernel's own
    // indexing: fused and general, block k trains network k; warp, warp w of
    // block b trains warp_network(b, warps, w) in its slice (warp_train_body).
    const auto blocks = [&](const auto& t) {
      Real* sm = smem.empty() ? nullptr : smem.data();
      if (!warp) {
        for (int k = 0; k < a.nnets; ++k) train_network(t, a, k, sm);
        return;
      }
      const int reals = static_cast<int>(net_reals);
      for (int b = 0; b < warp_blocks(a.nnets, warps); ++b)
        for (int w = 0; w < warps; ++w) warp_train_body(t, a, b, warps, w, reals, sm);
    };
    run_emulated_team(
        warp ? kWarp : eo_.block_threads, warp,
        [&](const EmuTeam& team) {
          EmuTeam t = team;
          t.one_column = eo_.one_column;
          if (eo_.vector_a)
            blocks(t);
          else
            blocks(EmuTeamScalarA{t});
        },
        eo_.trace);
    const auto t1 = std::chrono::steady_clock::now();
    if (pinned) {  // a teacher group: its final weights, no evaluation
      collect_teachers(g, wave, state.data(), snap.data(), pinned);
      stats_.teacher_s += std::chrono::duration<double>(t1 - t0).count();
      stats_.teachers += static_cast<long long>(nn);
      return;
    }
    stats_.train_s += std::chrono::duration<double>(t1 - t0).count();
    // The items: compacted as the device's cub::DeviceSelect::If does, or all
    // (no list). The launch's blocks one after the other (eval_block: grid-
    // strided over the items, each block in its own workspace); kEvalBlocks
    // does not divide most item counts, so the strides' ends are exercised.
    std::vector<long long> items;
    items.reserve(static_cast<size_t>(nn) * g.slots + 1);  // data() not null: an empty list is not "all"
    if (eo_.compact_eval)
      for (long long it = 0; it < static_cast<long long>(nn) * g.slots; ++it)
        if (eval_needed(state[it / g.slots], static_cast<int>(it % g.slots), g.maxck)) items.push_back(it);
    const long long nitems = static_cast<long long>(items.size());
    constexpr int kEvalBlocks = 3;
    std::vector<double> ws(static_cast<size_t>(kEvalBlocks) * y.vwork);
    poison(ws);
    EvalArgs e = eval_args(g, buf, ws.data());
    if (eo_.compact_eval) {
      e.items = items.data();
      e.nitems = &nitems;
    }
    run_emulated_team(eo_.block_threads, false, [&](const EmuTeam& team) {
      for (int b = 0; b < kEvalBlocks; ++b) eval_block(team, e, b, kEvalBlocks);
    });
    const auto t2 = std::chrono::steady_clock::now();
    stats_.eval_s += std::chrono::duration<double>(t2 - t1).count();
    collect_group(g, wave, batch, state.data(), metrics.data(), out, stats_);
  }

  EmuOptions eo_;
  RunStats stats_;
  RunStats total_;  // every run() so far (time_report)
};

}  // namespace

std::unique_ptr<Backend> make_emulated_backend(const EmuOptions& eo) {
  return std::make_unique<EmuBackend>(eo);
}

RunStats emulated_stats(const Backend& b) {
  const auto* e = dynamic_cast<const EmuBackend*>(&b);
  return e ? e->stats() : RunStats{};
}

}  // namespace stsweep::cuda
