// Lazy expansion of a 10^7-trial grid: count, decode and shard without materialising it.
#include <benchmark/benchmark.h>

#include <random>

#include "sweep.hpp"

namespace {

const char* kGrid = R"({"grid": {"noise": {"linspace": [0, 1, 10]}, "lambda": {"logspace": [-2, 1, 10]},
                                 "lr": {"linspace": [0.01, 0.1, 100]}, "seed": {"range": [0, 1000]}}})";
const char* kGridExclude = R"({"grid": {"noise": {"linspace": [0, 1, 10]}, "lambda": {"logspace": [-2, 1, 10]},
                                 "lr": {"linspace": [0.01, 0.1, 100]}, "seed": {"range": [0, 1000]}},
                               "exclude": [{"seed": 5}, {"noise": 0}, {"noise": 0, "seed": 7}, {"lambda": 0.01, "seed": 5}]})";

// Parse, validate and count.
void BM_ParseAndCount(benchmark::State& st) {
  const char* text = st.range(0) ? kGridExclude : kGrid;
  for (auto _ : st) benchmark::DoNotOptimize(stsweep::Sweep::from_text(text).count());
}
BENCHMARK(BM_ParseAndCount)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

// Typed parameters of a random trial.
void BM_DecodeRandom(benchmark::State& st) {
  auto s = stsweep::Sweep::from_text(st.range(0) ? kGridExclude : kGrid);
  std::mt19937_64 rng(1);
  for (auto _ : st) benchmark::DoNotOptimize(s.trial(rng() % s.count()).lr);
}
BENCHMARK(BM_DecodeRandom)->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

// Shard ranges for 1000 shards, then the first trial of each.
void BM_Shard1000(benchmark::State& st) {
  auto s = stsweep::Sweep::from_text(kGridExclude);
  for (auto _ : st)
    for (uint64_t i = 0; i < 1000; ++i) {
      auto r = stsweep::shard_range(s.count(), stsweep::Shard{i, 1000});
      benchmark::DoNotOptimize(s.trial_json(r.begin));
    }
}
BENCHMARK(BM_Shard1000)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
