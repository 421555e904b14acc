// Results store throughput: 10^6 trial rows with 64-point curves.
//
//   build/bench/bench_store                      (STSWEEP_BENCH_ROWS=N to change 10^6)
//
// WriteRows: the HDF5 writer alone (what a checkpoint or a merge does), blocks of 8192 rows.
// RunPath:   what `run` does per batch (journal record + fdatasync, batches of 1024)
//            and at the end (fold the journal into the file: copy, write, rename).
// Counters: rows/s and MB/s of raw row data (params + metrics + 7 curves of 64 values).
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include <benchmark/benchmark.h>

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

}  // namespace

BENCHMARK(WriteRows)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();
BENCHMARK(RunPath)->Iterations(1)->Unit(benchmark::kSecond)->UseRealTime();
BENCHMARK_MAIN();
