// A model of the fused kernel's shared-memory traffic per training step, from
// the emulated kernel's own accesses (kernels/device_emu.hpp, SmemTrace and
// smem_report). No GPU needed: it runs the device body on the host.
//
//   build/bench/bench_smem_model [--d 64] [--h 64] [--m 16] [--n 128] [--path data|moment]
//                                [--kernel fused|warp]
//
// Defaults: the standard GPU grid (issue 5). For each A-load variant it prints
// warp instructions and 128-byte wavefronts per step, and the FMA rate's upper
// bound if shared memory serves one wavefront per clock against 4 warp FMAs per
// clock. 128-bit loads are served per half warp (the rule that fits the H100
// measurements in SmemReport's comment); "quarter" is the per-quarter-warp bound.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "device_emu.hpp"
#include "sweep.hpp"

using namespace stsweep;
using namespace stsweep::cuda;

namespace {

Path g_kernel = Path::fused;

// Variants: 0 = vector A with one-column tiles (v5, the default), 1 = v4, 2 = scalar A (v2).
SmemReport traced_run(const Sweep& sw, int variant, std::vector<SmemReport>* segments = nullptr) {
  SmemTrace trace;
  EmuOptions eo;
  eo.path = g_kernel;
  eo.vector_a = variant != 2;
  eo.one_column = variant == 0;
  eo.trace = &trace;
  auto be = make_emulated_backend(eo);
  Batch b;
  b.ids = {0};
  b.trials = {sw.trial(0)};
  RunOptions ro;
  ro.sweep_seed = sw.seed();
  const auto res = be->run(b, ro);
  if (res.at(0).status == Status::failed) {
    std::fprintf(stderr, "bench_smem_model: the trial failed: %s\n", res[0].message.c_str());
    std::exit(1);
  }
  return smem_report(trace, kWarp, segments);
}

std::string sweep_text(int d, int h, int m, int n, const std::string& path, int steps) {
  char buf[512];
  std::snprintf(buf, sizeof buf,
                R"({"name": "smem-model", "seed": 5, "defaults": {"d": %d, "k": %d, "m": %d, "hidden": [%d],
                "n_train": %d, "steps": %d, "lr": 0.02, "init_scale": 0.01, "checkpoints": 2, "lambda": 1.0,
                "baseline": false, "path": "%s", "noise": 0.3}})",
                d, std::min(d, 16), m, h, n, steps, path.c_str());
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  int d = 64, h = 64, m = 16, n = 128;
  std::string path = "data";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--d") d = std::atoi(argv[i + 1]);
    else if (k == "--h") h = std::atoi(argv[i + 1]);
    else if (k == "--m") m = std::atoi(argv[i + 1]);
    else if (k == "--n") n = std::atoi(argv[i + 1]);
    else if (k == "--path") path = argv[i + 1];
    else if (k == "--kernel") g_kernel = std::string(argv[i + 1]) == "warp" ? Path::warp : Path::fused;
    else {
      std::fprintf(stderr, "bench_smem_model: unknown option %s (--d --h --m --n --path --kernel)\n", k.c_str());
      return 2;
    }
  }
  // One training step = a run of 2 steps less a run of 1 (both end with a forward pass).
  const Sweep s1 = Sweep::from_text(sweep_text(d, h, m, n, path, 1));
  const Sweep s2 = Sweep::from_text(sweep_text(d, h, m, n, path, 2));
  std::printf("%s kernel, one %s-path training step of a 2-layer network: d = %d, h = %d, m = %d, N = %d, "
              "%d threads a network\n\n",
              g_kernel == Path::warp ? "warp" : "fused", path.c_str(), d, h, m, n,
              g_kernel == Path::warp ? kWarp : kThreads);
  std::printf("| A loads | load instr | of them 128-bit | store instr | FMA instr | wavefronts (quarter) | "
              "wavefronts (half) | FMA bound (quarter) | FMA bound (half) |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  const char* names[] = {"vector, v5 (default)", "vector, v4 (STSWEEP_CUDA_ONE_COLUMN=0)",
                         "scalar, v2 (STSWEEP_CUDA_VECTOR_A=0)"};
  for (int v = 0; v < 3; ++v) {
    SmemReport r = traced_run(s2, v);
    r -= traced_run(s1, v);
    std::printf("| %s | %lld | %lld | %lld | %lld | %lld | %lld | %.0f%% | %.0f%% |\n", names[v],
                r.load_instr, r.vector_instr, r.store_instr, r.fma_instr, r.wavefronts_quarter,
                r.wavefronts, 100 * r.fma_bound(true), 100 * r.fma_bound(false));
  }
  // The 1-step run (forward, update, forward), one row per barrier segment:
  // the GEMMs (segments with FMAs) of every variant, and for the default also
  // the segments without (the sums, the feature term, the transpose).
  std::printf("\nPer barrier segment, 1-step run (forward, backward and update, forward); segments "
              "without FMAs for the default only:\n\n");
  std::printf("| A loads | segment | load instr | store instr | FMA instr | wavefronts (quarter) | "
              "wavefronts (half) |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
  for (int v = 0; v < 3; ++v) {
    std::vector<SmemReport> seg;
    traced_run(s1, v, &seg);
    for (size_t i = 0; i < seg.size(); ++i)
      if (seg[i].fma_instr > 0 || (v == 0 && seg[i].load_instr + seg[i].store_instr > 0))
        std::printf("| %s | %zu | %lld | %lld | %lld | %lld | %lld |\n", names[v], i, seg[i].load_instr,
                    seg[i].store_instr, seg[i].fma_instr, seg[i].wavefronts_quarter, seg[i].wavefronts);
  }
  return 0;
}
