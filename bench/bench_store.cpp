// Results store throughput: 10^6 trial rows with 64-point curves.
//
//   build/bench/bench_store                      (STSWEEP_BENCH_ROWS=N to change 10^6)
//
// WriteRows: the HDF5 writer alone (what a checkpoint or a merge does), blocks of 8192 rows.
// RunPath:   what `run` does per batch (journal record + fdatasync, batches of 1024)
//            and at the end (fold the journal into the file: copy, write, rename).
// Counters: rows/s and MB/s of raw row data (params + metrics + 7 curves of 64 values).
// Pipeline/<ms>/<fold>: `run`'s loop (run_pipeline) on sweeps/standard_gpu.json
//            (16384 trials, batches of 1024) with a stand-in backend that takes
//            <ms> milliseconds per batch (sleeping: the host is free, as with a GPU)
//            and returns synthetic results; <fold> 1 = fold while training (what
//            `run` does on CUDA). Counter exposed_pct: the store's time with no
//            batch training, as a share of wall (issue 4's "share of wall").
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <random>
#include <thread>

#include <benchmark/benchmark.h>

#include "batching.hpp"
#include "pipeline.hpp"
#include "store.hpp"

using namespace stsweep;

namespace {

int64_t bench_rows() {
  const char* e = std::getenv("STSWEEP_BENCH_ROWS");
  return e ? std::atoll(e) : 1000000;
}
constexpr int kC = 64;

// A block of `n` rows with ids from `first`, noisy doubles (compress like real curves, or worse).
RowBlock make_block(int64_t first, int64_t n, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0, 1);
  const auto& cs = store_columns();
  RowBlock b = RowBlock::empty(kC);
  for (int64_t i = 0; i < n; ++i) b.trial.push_back(first + i);
  for (size_t k = 0; k < cs.size(); ++k) {
    auto& d = b.cols[k];
    size_t len = cs[k].curve ? n * kC : n;
    for (size_t i = 0; i < len; ++i) {
      switch (cs[k].type) {
        case ColType::f64: d.f.push_back(cs[k].key.empty() ? u(rng) : 0.5); break;
        case ColType::i64: d.i.push_back(cs[k].name == "step" ? static_cast<int64_t>(i % kC) * 31 : 32); break;
        case ColType::i8: d.i.push_back(cs[k].name == "status" ? 1 : 0); break;
        case ColType::str: d.s.push_back("balanced"); break;
      }
    }
  }
  return b;
}
double row_bytes() {
  double s = 8;  // trial id
  for (const auto& c : store_columns())
    s += (c.curve ? kC : 1) * (c.type == ColType::i8 ? 1 : c.type == ColType::str ? 8 : 8);
  return s;
}
std::string bench_dir() {
  auto d = std::filesystem::temp_directory_path() / ("stsweep_bench_" + std::to_string(::getpid()));
  std::filesystem::create_directories(d);
  return d.string();
}

void WriteRows(benchmark::State& state) {
  const int64_t N = bench_rows(), block = 8192;
  std::mt19937_64 rng(1);
  RowBlock proto = make_block(0, block, rng);
  const std::string p = bench_dir() + "/write.h5";
  for (auto _ : state) {
    FileHeader h;
    h.schema = store_schema_digest();
    h.ranges = {{0, static_cast<uint64_t>(N)}};
    h.sweep_trials = N;
    H5Results f = H5Results::create(p, h, kC);
    for (int64_t r = 0; r < N; r += block) {
      for (int64_t i = 0; i < block; ++i) proto.trial[i] = std::min(r + i, N - 1);
      f.write(proto);
    }
    f.close();
  }
  state.counters["rows/s"] = benchmark::Counter(static_cast<double>(N), benchmark::Counter::kIsRate);
  state.counters["MB/s"] = benchmark::Counter(N * row_bytes() / 1e6, benchmark::Counter::kIsRate);
  state.counters["file_MB"] = std::filesystem::file_size(p) / 1e6;
  std::filesystem::remove(p);
}

void RunPath(benchmark::State& state) {
  const int64_t N = bench_rows(), batch = 1024;
  std::mt19937_64 rng(2);
  RowBlock proto = make_block(0, batch, rng);
  Sweep sw = Sweep::from_text(R"({"name": "bench", "seed": 1, "defaults": {"checkpoints": 64},
    "grid": {"seed": {"range": [0, )" + std::to_string(N) + "]}}}");
  const std::string p = bench_dir() + "/run.h5";
  for (auto _ : state) {
    std::filesystem::remove(p);
    WriterOptions o;
    o.path = p;
    o.shard = "0/1";
    o.range = {0, static_cast<uint64_t>(N)};
    o.backend = "bench";
    o.precision = "f32";
    o.checkpoint_every = 1e9;  // one fold, at the end
    auto w = ResultsWriter::start(sw, o);
    for (int64_t r = 0; r < N; r += batch) {
      int64_t n = std::min(batch, N - r);
      RowBlock b = proto;
      if (n < batch) {
        state.PauseTiming();
        b = make_block(r, n, rng);
        state.ResumeTiming();
      }
      for (int64_t i = 0; i < n; ++i) b.trial[i] = r + i;
      w->append(b, 0.0);
    }
    w->finish();
  }
  state.counters["rows/s"] = benchmark::Counter(static_cast<double>(N), benchmark::Counter::kIsRate);
  state.counters["MB/s"] = benchmark::Counter(N * row_bytes() / 1e6, benchmark::Counter::kIsRate);
  state.counters["file_MB"] = std::filesystem::file_size(p) / 1e6;
  std::filesystem::remove(p);
}

// Stands in for a GPU: the host sleeps while "training" (ms per 1024 trials)
// and gets results of the right shape (8 checkpoints) with noisy values.
class PacedBackend : public Backend {
 public:
  explicit PacedBackend(double ms_per_1024) : ms_(ms_per_1024) {}
  std::string name() const override { return "paced"; }
  std::string device() const override { return "sleep"; }
  std::vector<TrialResult> run(const Batch& b, const RunOptions&) override {
    std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms_ * b.ids.size() / 1024.0));
    std::uniform_real_distribution<double> u(0, 1);
    std::vector<TrialResult> out(b.ids.size());
    for (size_t i = 0; i < out.size(); ++i) {
      TrialResult& r = out[i];
      r.trial = static_cast<int64_t>(b.ids[i]);
      r.status = Status::done;
      r.steps_run = b.trials[i].steps;
      r.test_risk = u(rng_), r.baseline_test_risk = u(rng_), r.bayes_risk = u(rng_), r.interp_risk = u(rng_);
      r.excess_risk = r.test_risk - r.bayes_risk;
      r.train_loss = u(rng_), r.label_loss = u(rng_), r.feature_loss = u(rng_), r.best_test_risk = u(rng_);
      const int C = b.trials[i].checkpoints;
      for (int c = 0; c < C; ++c) {
        r.checkpoint_steps.push_back(c * 125);
        for (auto* v : {&r.curve_test_risk, &r.curve_label_loss, &r.curve_feature_loss, &r.curve_baseline_test_risk,
                        &r.curve_baseline_label_loss, &r.curve_baseline_feature_loss})
          v->push_back(u(rng_));
      }
    }
    return out;
  }

 private:
  double ms_;
  std::mt19937_64 rng_{3};
};

void Pipeline(benchmark::State& state) {
  const double ms = static_cast<double>(state.range(0));
  PipelineOptions po;
  po.fold_while_training = state.range(1) != 0;
  Sweep sw = Sweep::from_file(std::string(STSWEEP_SOURCE_DIR) + "/sweeps/standard_gpu.json");
  const std::string p = bench_dir() + "/pipeline.h5";
  PipelineStats ps;
  double wall = 0;
  for (auto _ : state) {
    std::filesystem::remove(p);
    const auto t0 = std::chrono::steady_clock::now();
    WriterOptions o;
    o.path = p;
    o.shard = "0/1";
    o.range = {0, sw.count()};
    o.backend = "paced";
    o.precision = "f32";
    auto w = ResultsWriter::start(sw, o);  // as in `run`: opening the file is exposed
    po.open_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    Batcher batcher(sw, o.range, [&](uint64_t id) { return w->final(static_cast<int64_t>(id)); }, 1024);
    PacedBackend be(ms);
    ps = run_pipeline(batcher, be, RunOptions{}, *w, {}, po);
    wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  state.counters["trials"] = static_cast<double>(ps.total);
  state.counters["train_s"] = ps.compute;
  state.counters["store_s"] = ps.store;
  state.counters["exposed_s"] = ps.store_exposed;
  state.counters["exposed_pct"] = 100.0 * ps.store_exposed / wall;
  std::filesystem::remove(p);
}

}  // namespace

BENCHMARK(Pipeline)
    ->ArgNames({"ms_per_batch", "fold"})
    ->ArgsProduct({{90, 180, 300}, {0, 1}})
    ->Iterations(1)
    ->Unit(benchmark::kSecond)
    ->UseRealTime();
BENCHMARK(WriteRows)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();
BENCHMARK(RunPath)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();
BENCHMARK_MAIN();
