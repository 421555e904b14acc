// The CUDA backend's host side that needs no CUDA (kernels/device_plan.hpp).
#include "device_plan.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <exception>
#include <map>
#include <mutex>
#include <tuple>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include "train.hpp"

namespace stsweep::cuda {

static_assert(kDivergeFactor == stsweep::kDivergeFactor, "divergence rule as in host/train.cpp");
static_assert(kZeroLossRtol == stsweep::kZeroLossRtol, "loss_rise's floor as in host/train.cpp");

const char* name(Path p) {
  switch (p) {
    case Path::fused: return "fused";
    case Path::warp: return "warp";
    case Path::general: return "general";
    case Path::cublas: return "cublas";
    default: return "auto";
  }
}

Path parse_path(const std::string& v) {
  if (v == "auto") return Path::automatic;
  if (v == "fused") return Path::fused;
  if (v == "warp") return Path::warp;
  if (v == "general") return Path::general;
  if (v == "cublas") return Path::cublas;
  throw std::runtime_error("STSWEEP_CUDA_PATH=" + v +
                           ": expected auto, fused, warp, general or cublas");
}

void accumulate(RunStats& total, const RunStats& s) {
  total.setup_s += s.setup_s;
  total.train_s += s.train_s;
  total.eval_s += s.eval_s;
  total.total_s += s.total_s;
  total.net_steps += s.net_steps;
  total.flops += s.flops;
  total.chunks += s.chunks;
  total.teachers += s.teachers;
  total.teacher_s += s.teacher_s;
  for (size_t at = 0; at < s.paths.size();) {  // each of s's paths not yet in total's
    size_t end = s.paths.find(", ", at);
    if (end == std::string::npos) end = s.paths.size();
    const std::string p = s.paths.substr(at, end - at);
    if ((", " + total.paths + ", ").find(", " + p + ", ") == std::string::npos)
      total.paths += (total.paths.empty() ? "" : ", ") + p;
    at = end + 2;
  }
}

std::string time_report(const RunStats& t) {
  if (t.chunks == 0) return "";
  auto fmt = [](const char* f, double x) {
    char buf[64];
    std::snprintf(buf, sizeof buf, f, x);
    return std::string(buf);
  };
  std::string out = std::to_string(t.chunks) + (t.chunks == 1 ? " wave" : " waves") +
                    (t.paths.empty() ? "" : " (" + t.paths + ")") + "; host set-up " + fmt("%.2f", t.setup_s) +
                    " s (all threads), device training " + fmt("%.2f", t.train_s) + " s, evaluation " +
                    fmt("%.2f", t.eval_s) + " s";
  if (t.teachers > 0)
    out += ", " + std::to_string(t.teachers) + " trained teachers " + fmt("%.2f", t.teacher_s) + " s";
  out += "; backend wall " + fmt("%.2f", t.total_s) + " s";
  // The host sets up a wave while the device trains the one before: when
  // set-up takes longer than the device's work, the host bounds the run.
  const double device_s = t.train_s + t.eval_s + t.teacher_s;
  if (t.setup_s > device_s)
    out += "; set-up took longer than the device's work (" + fmt("%.2f", device_s) +
           " s): the host bounds this run (more host threads would help)";
  return out;
}

// ------------------------------------------------------------------ layout --
Layout make_layout(const Shape& s) {
  Layout y;
  for (int l = 0; l <= tm::kMaxLayers; ++l)
    y.Ht[l] = y.Chx[l] = y.W0[l] = y.WT0[l] = y.W[l] = y.WT[l] = y.Z[l] = y.H[l] = y.A[l] =
        y.E[l] = y.cHt[l] = y.cW[l] = y.cG[l] = y.cZ[l] = y.cH[l] = y.wofs[l] = y.eHt[l] =
            y.vW[l] = y.vWT[l] = y.vZ[l] = y.vH[l] = kNone;
  const tm::Net& n = s.net;
  const int L = n.L, d = n.w[0], m = n.w[L], N = s.N;
  int maxw = 0;
  for (int l = 1; l <= L; ++l) maxw = std::max(maxw, n.w[l]);
  const bool nonlin = n.act != tm::kLinear;
  const auto matched = [&](int l) { return l < L && (s.mask >> l & 1u); };
  long long top = 0;
  const auto take = [&top](long long count) {  // 32-byte aligned for float and double
    const long long at = top;
    top += (count + 3) / 4 * 4;
    if (top > std::numeric_limits<int>::max()) throw std::runtime_error("cuda: trial arena too large");
    return static_cast<int>(at);
  };
  y.moment = s.moment ? 1 : 0;
  // Trial arena: data part, then initial weights.
  if (s.moment) {
    y.Cxx = take(static_cast<long long>(d) * d);
    y.Cyx = take(static_cast<long long>(m) * d);
    for (int l = 1; l < L; ++l)
      if (matched(l)) y.Chx[l] = take(static_cast<long long>(n.w[l]) * d);
  } else {
    y.X = take(static_cast<long long>(N) * d);
    y.Y = take(static_cast<long long>(N) * m);
    for (int l = 1; l < L; ++l)
      if (matched(l)) y.Ht[l] = take(static_cast<long long>(N) * n.w[l]);
  }
  y.data = static_cast<int>(top);
  for (int l = 1; l <= L; ++l) {
    y.W0[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
    if (!s.moment) y.WT0[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
  }
  y.arena = static_cast<int>(top);
  // Network work (fused kernel): the pointers of host/train.cpp's DataPath/MomentPath.
  top = 0;
  for (int l = 1; l <= L; ++l) {
    y.W[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
    if (!s.moment) y.WT[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
  }
  if (s.moment) {
    for (int l = 2; l <= L; ++l) y.A[l] = take(static_cast<long long>(n.w[l]) * d);
    for (int l = 1; l <= L; ++l)
      if (l == L || matched(l)) y.E[l] = take(static_cast<long long>(n.w[l]) * d);
    y.Q[0] = take(static_cast<long long>(maxw) * d);
    y.Q[1] = take(static_cast<long long>(maxw) * d);
    y.AT = take(static_cast<long long>(maxw) * d);
    y.D[0] = y.D[1] = kNone;
  } else {
    for (int l = 1; l <= L; ++l) {
      y.Z[l] = take(static_cast<long long>(N) * n.w[l]);
      if (l < L && nonlin) y.H[l] = take(static_cast<long long>(N) * n.w[l]);
    }
    y.D[0] = take(static_cast<long long>(N) * maxw);
    y.D[1] = take(static_cast<long long>(N) * maxw);
    y.Q[0] = y.Q[1] = kNone;
  }
  y.work = static_cast<int>(top);
  // Network work (cuBLAS path, data path only): own data copy, W, G, Z, H, D.
  top = 0;
  if (!s.moment) {
    y.cX = take(static_cast<long long>(N) * d);
    y.cY = take(static_cast<long long>(N) * m);
    for (int l = 1; l <= L; ++l) {
      if (matched(l)) y.cHt[l] = take(static_cast<long long>(N) * n.w[l]);
      y.cW[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
      y.cG[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
      y.cZ[l] = take(static_cast<long long>(N) * n.w[l]);
      if (l < L && nonlin) y.cH[l] = take(static_cast<long long>(N) * n.w[l]);
    }
    y.cD[0] = take(static_cast<long long>(N) * maxw);
    y.cD[1] = take(static_cast<long long>(N) * maxw);
  } else {
    y.cD[0] = y.cD[1] = kNone;
  }
  y.cwork = static_cast<int>(top);
  // Snapshot of one network's weights (dense, no padding).
  top = 0;
  for (int l = 1; l <= L; ++l) {
    y.wofs[l] = static_cast<int>(top);
    top += static_cast<long long>(n.w[l]) * n.w[l - 1];
  }
  y.wsize = static_cast<int>(top);
  // Eval arena (double).
  top = 0;
  y.eX = take(static_cast<long long>(N) * d);
  y.eY = take(static_cast<long long>(N) * m);
  for (int l = 1; l < L; ++l)
    if (matched(l)) y.eHt[l] = take(static_cast<long long>(N) * n.w[l]);
  if (s.exact) {
    y.eWstar = take(static_cast<long long>(m) * d);
    y.eMhalf = take(static_cast<long long>(d) * s.k);
  } else if (s.n_test > 0) {
    y.eXt = take(static_cast<long long>(s.n_test) * d);
    y.eYt = take(static_cast<long long>(s.n_test) * m);
  }
  y.eval = static_cast<int>(top);
  // Eval work (double): weights in both layouts, forward workspace for the
  // larger of the training and test sets, the end-to-end ping-pong.
  top = 0;
  const int rows = std::max(N, s.exact ? 0 : s.n_test);
  for (int l = 1; l <= L; ++l) {
    y.vW[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
    y.vWT[l] = take(static_cast<long long>(n.w[l]) * n.w[l - 1]);
    y.vZ[l] = take(static_cast<long long>(rows) * n.w[l]);
    if (l < L && nonlin) y.vH[l] = take(static_cast<long long>(rows) * n.w[l]);
  }
  y.vD[0] = take(static_cast<long long>(rows) * maxw);
  y.vD[1] = take(static_cast<long long>(rows) * maxw);
  y.vA[0] = take(static_cast<long long>(maxw) * d);
  y.vA[1] = take(static_cast<long long>(maxw) * d);
  y.vwork = static_cast<int>(top);
  return y;
}


// Bytes one trial needs: a group of one member with its twin, maxck
// checkpoints and the larger of the two work areas, sized as the backend
// carves a group (group_sizes); the pools' alignment is in their slack.
TrialBytes trial_bytes(const Layout& y, size_t real, int maxck) {
  const Path widest = y.cwork > y.work ? Path::cublas : Path::general;
  const GroupSizes z = group_sizes(y, widest, 1, 2, maxck + 2, maxck, false);
  return {z.dev_bytes(real), z.host_bytes(real)};
}


GroupSizes group_sizes(const Layout& y, Path path, size_t nt, size_t nn, int slots_, int ck_total, bool teacher) {
  GroupSizes z;
  const size_t slots = static_cast<size_t>(slots_);
  z.arena = nt * y.arena;
  z.eval = teacher ? 0 : nt * y.eval;
  z.ts = nt;
  z.ck = static_cast<size_t>(std::max(ck_total, 1));
  z.nets = nn;
  z.snap = nn * slots * y.wsize;
  z.metrics = teacher ? 0 : nn * slots * 3;
  z.items = teacher ? 0 : nn * slots;
  z.work = path == Path::general ? nn * y.work : path == Path::cublas ? nn * y.cwork : 0;
  return z;
}

GroupSizes group_sizes(const GroupPlan& g, bool teacher) {
  return group_sizes(g.y, g.path, g.members.size(), g.nets.size(), g.slots, g.ck_total, teacher);
}

size_t GroupSizes::dev_bytes(size_t real) const {
  return (arena + work) * real + (eval + snap + metrics) * sizeof(double) + ts * sizeof(TrialScalars) +
         (ck + items + (items ? 1 : 0)) * sizeof(long long) + nets * (sizeof(NetRef) + sizeof(NetState));
}

size_t GroupSizes::host_bytes(size_t real) const {
  return arena * real + (eval + metrics) * sizeof(double) + ts * sizeof(TrialScalars) + ck * sizeof(long long) +
         nets * (sizeof(NetRef) + sizeof(NetState));
}

size_t host_wave_cap(size_t host_per_trial, size_t ram_bytes) {
  if (host_per_trial == 0 || ram_bytes == 0) return SIZE_MAX;
  const size_t share = ram_bytes / 8;
  return share > kPoolSlack ? std::max<size_t>(1, (share - kPoolSlack) / host_per_trial) : 1;
}

void check_wave_fits(const std::vector<GroupPlan>& plans, size_t real, size_t trials, const TrialBytes& tb,
                     size_t slack) {
  size_t dev = 0, host = 0, align = 0;
  for (const GroupPlan& g : plans) {
    const GroupSizes z = group_sizes(g);
    dev += z.dev_bytes(real);
    host += z.host_bytes(real);
    align += GroupSizes::kBuffers * 256;
  }
  if (dev > trials * tb.dev || host > trials * tb.host || align > slack)
    throw std::logic_error("cuda: a wave of " + std::to_string(trials) + " trials in " +
                           std::to_string(plans.size()) + " groups needs " + std::to_string(dev) +
                           " device and " + std::to_string(host) + " host bytes (+" + std::to_string(align) +
                           " alignment); its pools hold " + std::to_string(trials * tb.dev) + " and " +
                           std::to_string(trials * tb.host) + " (+" + std::to_string(slack) +
                           ") (sizing bug: worst_trial_bytes)");
}

int batch_maxck(const Batch& b) {
  int maxck = 2;
  for (const TrialParams& p : b.trials)
    maxck = std::max<int>(maxck, static_cast<int>(std::min<int64_t>(std::max(p.checkpoints, 2),
                                                                     int64_t(p.steps) + 1)));
  return maxck;
}

TrialBytes worst_trial_bytes(const Batch& b, size_t real, int maxck, size_t* eval_work) {
  const TrialParams& p0 = b.trials.at(0);
  Shape s;
  s.net = make_net(p0.widths(), p0.activation);
  s.N = p0.n_train;
  s.n_test = p0.n_test;
  s.k = p0.k;
  s.exact = p0.linear();
  s.mask = 0;
  for (int l = 1; l < s.net.L; ++l) s.mask |= 1u << l;
  TrialBytes worst;
  for (int moment = 0; moment < 2; ++moment) {
    s.moment = moment;
    const Layout y = make_layout(s);
    const TrialBytes t = trial_bytes(y, real, maxck);
    worst.dev = std::max(worst.dev, t.dev);
    worst.host = std::max(worst.host, t.host);
    *eval_work = std::max(*eval_work, static_cast<size_t>(y.vwork) * 8);
  }
  return worst;
}

// --------------------------------------------------------------- packing --
namespace {
void put(double* dst, const Matrix& M) { std::copy(M.a.begin(), M.a.end(), dst); }
void put_t(double* dst, const Matrix& M) {  // M^T (samples as rows)
  for (int i = 0; i < M.rows; ++i)
    for (int j = 0; j < M.cols; ++j) dst[static_cast<size_t>(j) * M.rows + i] = M(i, j);
}
template <class Real>
void put(Real* dst, const Matrix& M) {
  for (size_t i = 0; i < M.a.size(); ++i) dst[i] = static_cast<Real>(M.a[i]);
}
template <class Real>
void put_t(Real* dst, const Matrix& M) {
  for (int i = 0; i < M.rows; ++i)
    for (int j = 0; j < M.cols; ++j) dst[static_cast<size_t>(j) * M.rows + i] = static_cast<Real>(M(i, j));
}
void expect(const Matrix& M, int r, int c, const char* what) {
  if (M.rows != r || M.cols != c)
    throw std::logic_error(std::string("cuda: ") + what + " is " + std::to_string(M.rows) + "x" +
                           std::to_string(M.cols) + ", expected " + std::to_string(r) + "x" +
                           std::to_string(c));
}


void fill_eval(const TrialProblem& pr, const Shape& s, const Layout& y, double* eval);

// `eval` null: no evaluation data (trained teachers are not evaluated).
template <class Real>
void pack_trial(const Prepared& p, const Shape& s, const Layout& y, Real* arena, double* eval,
                TrialScalars& ts) {
  const TrialProblem& pr = p.pr;
  const tm::Net& n = s.net;
  const int L = n.L, d = n.w[0], m = n.w[L], N = s.N;
  for (int l = 1; l <= L; ++l) {
    expect(pr.W0[l], n.w[l], n.w[l - 1], "W0");
    put(arena + y.W0[l], pr.W0[l]);
    if (!y.moment) put_t(arena + y.WT0[l], pr.W0[l]);
  }
  expect(pr.Xn, d, N, "inputs");
  expect(pr.Y, m, N, "labels");
  ts = TrialScalars{};
  if (y.moment) {
    const TrialMoments mo = trial_moments(pr, s.mask);
    put(arena + y.Cxx, mo.Cxx);
    put(arena + y.Cyx, mo.Cyx);
    ts.tr_yy = mo.tr_yy;
    for (int l = 1; l < L; ++l)
      if (y.Chx[l] != kNone) {
        put(arena + y.Chx[l], mo.Chx[l]);
        ts.tr_hh[l] = mo.tr_hh[l];
      }
  } else {
    put_t(arena + y.X, pr.Xn);
    put_t(arena + y.Y, pr.Y);
    for (int l = 1; l < L; ++l)
      if (y.Ht[l] != kNone) {
        expect(pr.feature[l], n.w[l], N, "teacher features");
        put_t(arena + y.Ht[l], pr.feature[l]);
      }
  }
  if (eval) fill_eval(pr, s, y, eval);
  ts.lambda = pr.params.lambda;
  ts.lr = pr.params.lr;
  ts.sigma = pr.sigma;
  ts.sigma_y = pr.sigma_y;
  ts.T = pr.params.steps;
  ts.nck = static_cast<int>(pr.checkpoints.size());
}

// The float64 data the evaluation measures a trial's snapshots on.
void fill_eval(const TrialProblem& pr, const Shape& s, const Layout& y, double* eval) {
  const tm::Net& n = s.net;
  const int L = n.L, d = n.w[0], m = n.w[L], N = s.N;
  put_t(eval + y.eX, pr.Xn);
  put_t(eval + y.eY, pr.Y);
  for (int l = 1; l < L; ++l)
    if (y.eHt[l] != kNone) {
      expect(pr.feature[l], n.w[l], N, "teacher features");
      put_t(eval + y.eHt[l], pr.feature[l]);
    }
  if (y.eWstar != kNone) {
    expect(pr.Wstar, m, d, "Wstar");
    expect(pr.Mhalf, d, s.k, "Mhalf");
    put(eval + y.eWstar, pr.Wstar);
    put(eval + y.eMhalf, pr.Mhalf);
  }
  if (y.eXt != kNone) {
    expect(pr.Xtest, d, s.n_test, "test inputs");
    expect(pr.Ytest, m, s.n_test, "test targets");
    put_t(eval + y.eXt, pr.Xtest);
    put_t(eval + y.eYt, pr.Ytest);
  }
}
}  // namespace

// ---------------------------------------------------------------- set-up --
std::vector<Prepared> prepare_trials(const Batch& batch, size_t lo, size_t hi,
                                     const RunOptions& opt, int nthreads,
                                     std::vector<TrialResult>& out, double* setup_s, SetupShare* share) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::unique_ptr<Prepared>> slot(hi - lo);
  const auto one = [&](size_t i) {
    const int64_t id = i < batch.ids.size() ? batch.ids[i] : static_cast<int64_t>(i);
    TrialResult& r = out[i];
    r.trial = id;
    try {
      auto p = std::make_unique<Prepared>();
      p->index = i;
      p->pr = share ? share->setup(i) : setup_trial(batch.trials[i], opt.sweep_seed);
      if (static_cast<int>(p->pr.w.size()) != p->pr.L + 1)
        throw std::logic_error("train: widths do not match the depth");
      if (static_cast<int>(p->pr.W0.size()) != p->pr.L + 1)
        throw std::logic_error("train: W0 has wrong depth");
      if (static_cast<int>(p->pr.feature.size()) < p->pr.L && !p->pr.matched.empty())
        throw std::logic_error("train: teacher features missing");
      p->net = make_net(p->pr.w, p->pr.params.activation);
      p->mask = matched_mask(p->pr);
      p->moment = trains_on_moments(p->pr);
      slot[i - lo] = std::move(p);
    } catch (const InputError& e) {
      r.status = Status::failed;
      r.message = std::string("input error: ") + e.what();
    } catch (const std::exception& e) {
      r.status = Status::failed;
      r.message = e.what();
    }
  };
  for_each_in_setup_order(batch.trials, lo, hi, opt.sweep_seed, nthreads, one, share);
  std::vector<Prepared> prepared;
  prepared.reserve(hi - lo);
  for (auto& p : slot)
    if (p) prepared.push_back(std::move(*p));
  if (setup_s) *setup_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return prepared;
}

bool env_choice(const char* name, const char* dflt, const char* other) {
  const char* e = std::getenv(name);
  if (!e || !*e || std::string(e) == dflt) return false;
  if (std::string(e) == other) return true;
  throw std::runtime_error(std::string(name) + "=" + e + ": expected " + dflt + " or " + other);
}

bool teachers_on_device() { return !env_choice("STSWEEP_CUDA_TEACHERS", "device", "host"); }

std::vector<Prepared> prepare_teachers(const Batch& batch, size_t lo, size_t hi, const RunOptions& opt,
                                       int nthreads, double* setup_s) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<TeacherTraining> tt = teachers_to_train(batch.trials, lo, hi, opt.sweep_seed, nthreads);
  std::vector<Prepared> out(tt.size());
  for (size_t j = 0; j < tt.size(); ++j) {
    Prepared& p = out[j];
    TeacherTraining& t = tt[j];
    p.index = j;
    p.teacher = true;
    p.recipe = std::move(t.recipe);
    TrialProblem& pr = p.pr;
    pr.L = static_cast<int>(t.w.size()) - 1;
    pr.w = t.w;
    pr.params.activation = t.act;
    pr.params.lambda = 0;
    pr.params.lr = t.lr;
    pr.params.steps = t.steps;
    pr.params.baseline = false;
    pr.Xn = std::move(t.X);
    pr.Y = std::move(t.Y);
    pr.W0 = std::move(t.W0);
    pr.feature.assign(pr.L, Matrix());
    p.net = make_net(pr.w, t.act);
    p.mask = 0;
    p.moment = t.moment;
  }
  if (setup_s) *setup_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

void collect_teachers(const GroupPlan& g, const std::vector<Prepared>& wave, const NetState* state,
                      const double* snap, std::vector<std::string>* pinned) {
  const tm::Net& n = g.s.net;
  for (size_t k = 0; k < g.nets.size(); ++k) {
    const Prepared& p = wave[g.members[g.nets[k].trial]];
    if (!p.teacher) throw std::logic_error("cuda: collect_teachers on a student");
    const double* fin = snap + (k * g.slots + g.slots - 1) * static_cast<size_t>(g.y.wsize);
    std::vector<Matrix> W(n.L + 1);
    for (int l = 1; l <= n.L; ++l) {
      W[l] = Matrix(n.w[l], n.w[l - 1]);
      std::copy(fin + g.y.wofs[l], fin + g.y.wofs[l] + W[l].a.size(), W[l].a.begin());
    }
    // The host's loop (train_plain_f64) checks the loss before each of its
    // steps; the trainer checks after the last too. Past that check the
    // weights are the same.
    const bool ok = !state[k].diverged || state[k].steps_run >= p.pr.params.steps;
    put_trained_teacher(p.recipe, std::move(W), ok);
    pinned->push_back(p.recipe);
  }
}

// ---------------------------------------------------------------- groups --
std::vector<GroupPlan> plan_groups(const std::vector<Prepared>& wave, Path want, size_t real,
                                   const DeviceLimits& lim,
                                   const std::function<void(const std::string&)>& log) {
  // Group by (path, matched layers, teacher, N): one layout per group.
  // (A batch's students share N; its teachers may not: teacher.n_train.)
  std::map<std::tuple<int, uint32_t, int, int>, std::vector<size_t>> groups;
  for (size_t i = 0; i < wave.size(); ++i)
    groups[{wave[i].moment ? 1 : 0, wave[i].mask, wave[i].teacher ? 1 : 0, wave[i].pr.Xn.cols}].push_back(i);
  std::vector<GroupPlan> plans;
  for (auto& [key, members] : groups) {
    GroupPlan g;
    const Prepared& p0 = wave[members[0]];
    Shape& s = g.s;
    s.net = p0.net;
    s.N = p0.pr.Xn.cols;
    s.n_test = p0.pr.params.linear() ? 0 : p0.pr.Xtest.cols;
    s.k = p0.pr.Mhalf.cols;
    s.mask = std::get<1>(key);
    s.moment = std::get<0>(key) != 0;
    s.exact = !p0.teacher && p0.pr.params.linear();  // teachers are not evaluated
    g.y = make_layout(s);
    const Layout& y = g.y;
    // Which trainer.
    g.net_shared = (static_cast<size_t>(y.data) + y.work) * real;
    int maxw = 0;
    for (int l = 0; l <= s.net.L; ++l) maxw = std::max(maxw, s.net.w[l]);
    const int warps = static_cast<int>(std::min<size_t>(
        kWarpsPerBlock, g.net_shared ? lim.shared_per_block / g.net_shared : kWarpsPerBlock));
    const bool fits = g.net_shared <= lim.shared_per_block;
    Path path = want;
    if (path == Path::automatic) {
      if (maxw <= kWarpMaxWidth && warps >= 2)
        path = Path::warp;
      else
        path = fits ? Path::fused : s.moment ? Path::general : Path::cublas;
    }
    if ((path == Path::fused || path == Path::warp) && !fits) {
      log("arena of " + std::to_string(g.net_shared >> 10) + " KB does not fit a block (" +
          std::to_string(lim.shared_per_block >> 10) + " KB): general path");
      path = Path::general;
    }
    if (path == Path::cublas && s.moment) {
      log("the cuBLAS path has no moment path: general path for moment-path trials");
      path = Path::general;
    }
    if (path == Path::cublas && p0.teacher) {
      log("trained teachers train on the general path (cuBLAS would not give the host's bits)");
      path = Path::general;
    }
    g.path = path;
    g.warps_per_block = path == Path::warp ? std::max(1, warps) : 0;
    // Members with the most steps first: their blocks start first, so a group
    // of mixed lengths does not end on a tail of long trainings.
    g.members = members;
    std::stable_sort(g.members.begin(), g.members.end(), [&](size_t a, size_t b) {
      return wave[a].pr.params.steps > wave[b].pr.params.steps;
    });
    for (size_t j = 0; j < g.members.size(); ++j) {
      const Prepared& p = wave[g.members[j]];
      g.nets.push_back({static_cast<int>(j), 0});
      if (p.pr.params.baseline) g.nets.push_back({static_cast<int>(j), 1});
      g.maxck = std::max<int>(g.maxck, static_cast<int>(p.pr.checkpoints.size()));
      g.ck_total += static_cast<int>(p.pr.checkpoints.size());
      g.maxT = std::max<long long>(g.maxT, p.pr.params.steps);
      g.step_flops += s.moment ? tm::moment_step_flops(s.net, p.mask) : tm::data_step_flops(s.net, s.N);
    }
    g.slots = g.maxck + 2;
    plans.push_back(std::move(g));
  }
  return plans;
}

template <class Real>
void pack_group(const GroupPlan& g, const std::vector<Prepared>& wave, Real* arena, double* eval,
                TrialScalars* ts, long long* ck, int threads) {
  const size_t n = g.members.size();
  std::vector<int> ck_off(n);
  for (size_t j = 0, at = 0; j < n; ++j) {
    ck_off[j] = static_cast<int>(at);
    at += wave[g.members[j]].pr.checkpoints.size();
  }
  // Members write disjoint parts of the buffers. A logic_error (a shape that
  // does not match the layout) is a bug: the first one is rethrown here.
  std::exception_ptr err;
  std::mutex mu;
  parallel_for(n, threads, [&](size_t j) {
    try {
      const Prepared& p = wave[g.members[j]];
      pack_trial<Real>(p, g.s, g.y, arena + j * g.y.arena, eval ? eval + j * g.y.eval : nullptr, ts[j]);
      ts[j].ck_offset = ck_off[j];
      std::copy(p.pr.checkpoints.begin(), p.pr.checkpoints.end(), ck + ck_off[j]);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!err) err = std::current_exception();
    }
  });
  if (err) std::rethrow_exception(err);
}
template void pack_group<float>(const GroupPlan&, const std::vector<Prepared>&, float*, double*,
                                TrialScalars*, long long*, int);
template void pack_group<double>(const GroupPlan&, const std::vector<Prepared>&, double*, double*,
                                 TrialScalars*, long long*, int);

void collect_group(const GroupPlan& g, const std::vector<Prepared>& wave, const Batch& batch,
                   const NetState* state, const double* metrics, std::vector<TrialResult>& out,
                   RunStats& stats) {
  constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
  // Per network: its trace from the state and the metrics of its slots.
  std::vector<NetTrace> traces(g.nets.size());
  for (size_t k = 0; k < g.nets.size(); ++k) {
    const NetState& s = state[k];
    const Prepared& p = wave[g.members[g.nets[k].trial]];
    const size_t nck = p.pr.checkpoints.size();
    const double* m = metrics + k * g.slots * 3;
    NetTrace& tr = traces[k];
    tr.test.assign(nck, kNaN);
    tr.label.assign(nck, kNaN);
    tr.feature.assign(nck, kNaN);
    for (size_t c = 0; c < nck && static_cast<int>(c) < s.written; ++c) {
      tr.test[c] = m[c * 3];
      tr.label[c] = m[c * 3 + 1];
      tr.feature[c] = m[c * 3 + 2];
    }
    const double* f = m + static_cast<size_t>(g.slots - 2) * 3;
    const double* l = m + static_cast<size_t>(g.slots - 1) * 3;
    tr.first = {f[0], f[1], f[2]};
    tr.last = {l[0], l[1], l[2]};
    tr.diverged = s.diverged != 0;
    tr.steps_run = s.steps_run;
    tr.diverged_loss = s.diverged_loss;
    tr.loss_rise = s.rise.rise;
    stats.net_steps += static_cast<double>(s.steps_run);
    stats.flops += static_cast<double>(s.steps_run) * g.step_flops / g.members.size();
  }
  for (size_t k = 0; k < g.nets.size(); ++k) {
    if (g.nets[k].twin) continue;
    const Prepared& p = wave[g.members[g.nets[k].trial]];
    const bool twin = k + 1 < g.nets.size() && g.nets[k + 1].twin &&
                      g.nets[k + 1].trial == g.nets[k].trial;
    TrialResult r = assemble_trial_result(p.pr, traces[k], twin ? &traces[k + 1] : nullptr);
    r.trial = p.index < batch.ids.size() ? batch.ids[p.index] : static_cast<int64_t>(p.index);
    out[p.index] = std::move(r);
  }
}

}  // namespace stsweep::cuda
