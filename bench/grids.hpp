// The trial of the standard GPU grid (issue 5; sweeps/standard_gpu.json's
// defaults, noise 0.5): 2-layer linear, d = h = 64, k = m = 16, N = 128,
// T = 1000, lambda = 1, oracle teacher, data path. bench_cuda trains it;
// bench_cpu_train times its host set-up.
#pragma once

#include "params.hpp"

namespace stsweep::bench {

inline TrialParams standard_gpu_trial() {
  TrialParams p;
  p.d = 64;
  p.k = 16;
  p.m = 16;
  p.hidden = {64};
  p.n_train = 128;
  p.steps = 1000;
  p.lr = 0.02;
  p.init_scale = 0.01;
  p.checkpoints = 8;
  p.lambda = 1.0;
  p.noise = 0.5;
  p.path = TrainPath::data;
  p.teacher.kind = TeacherKind::oracle;
  return p;
}

}  // namespace stsweep::bench
