// Trial set-up (MODEL.md "Data", "Teacher", "Metrics"): data, teacher,
// decomposition, teacher features, moments, initial weights and the closed-form
// risks, all in float64 on the host. Choices MODEL.md leaves open are written
// down in docs/MODEL_NOTES.md; the comments here point at them.
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <exception>
#include <future>
#include <limits>
#include <list>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "linalg.hpp"
#include "problem.hpp"
#include "rng.hpp"
#include "train.hpp"
#include "trial_math.hpp"

namespace stsweep {
namespace {

using namespace linalg;
using rng::Stream;

// Initial weight scale of a `trained` teacher (per entry N(0, c^2 / fan_in)).
// Fixed, so that the teacher does not depend on the student's init_scale.
constexpr double kTeacherInitScale = 1e-2;

// Element (i, j) of an r x c matrix is normal draw j * r + i of its stream
// (column by column): a data matrix with samples as columns grows by appending
// columns when its sample count grows.
Matrix gaussian(uint64_t key, Stream s, uint32_t sub, int r, int c, double scale = 1.0) {
  Matrix M(r, c);
  const uint64_t n = static_cast<uint64_t>(r) * c;
  int i = 0, j = 0;  // (i, j) of draw idx: idx = j * r + i, stepped without dividing
  auto put = [&](double z) {
    M(i, j) = scale * z;
    if (++i == r) i = 0, ++j;
  };
  for (uint64_t idx = 0; idx < n; idx += 2) {
    double z0, z1;
    rng::normal_pair(key, s, sub, idx / 2, &z0, &z1);
    put(z0);
    if (idx + 1 < n) put(z1);
  }
  return M;
}

// Haar orthogonal n x n from a Gaussian (QR with a non-negative R diagonal).
Matrix random_orthogonal(uint64_t key, Stream s, uint32_t sub, int n) {
  return qr_orthonormal(gaussian(key, s, sub, n, n));
}

double activate(Activation a, double x) {
  switch (a) {
    case Activation::relu: return x > 0 ? x : 0.0;
    case Activation::tanh: return std::tanh(x);
    case Activation::linear: break;
  }
  return x;
}

Matrix activate(Activation a, Matrix M) {
  if (a != Activation::linear)
    for (double& x : M.a) x = activate(a, x);
  return M;
}

// Layer outputs H[0] = X, H[l] = phi(W_l H[l-1]) (hidden), H[L] = W_L H[L-1].
std::vector<Matrix> forward(const std::vector<Matrix>& W, Activation act, const Matrix& X) {
  const int L = static_cast<int>(W.size()) - 1;
  std::vector<Matrix> H(L + 1);
  H[0] = X;
  for (int l = 1; l <= L; ++l) {
    H[l] = matmul(W[l], H[l - 1]);
    if (l < L) H[l] = activate(act, std::move(H[l]));
  }
  return H;
}

Matrix product(const std::vector<Matrix>& W) {
  Matrix P = W[1];
  for (size_t l = 2; l < W.size(); ++l) P = matmul(W[l], P);
  return P;
}

std::vector<double> spectrum_of(const TrialParams& p) {
  std::vector<double> s(p.k, 1.0);
  for (int j = 0; j < p.k; ++j) {
    if (p.spectrum == SpectrumKind::power) s[j] = std::pow(j + 1.0, -p.spectrum_p);
    // geometric: s_1 / s_k = kappa, equal ratios in between.
    if (p.spectrum == SpectrumKind::geometric && p.k > 1)
      s[j] = std::pow(p.spectrum_kappa, -static_cast<double>(j) / (p.k - 1));
  }
  double sum = 0;
  for (double x : s) sum += x;
  for (double& x : s) x *= p.k / sum;
  return s;
}

const char* decomposition_name(Decomposition d) {
  switch (d) {
    case Decomposition::balanced: return "balanced";
    case Decomposition::rotated: return "rotated";
    case Decomposition::scaled: return "scaled";
    case Decomposition::power: return "power";
    case Decomposition::latent: return "latent";
    case Decomposition::input: return "input";
    case Decomposition::output: return "output";
    case Decomposition::as_trained: return "as_trained";
  }
  return "?";
}

std::string widths_text(const std::vector<int>& hidden) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < hidden.size(); ++i) os << (i ? ", " : "") << hidden[i];
  os << "]";
  return os.str();
}

// The student's data law: latents, clean inputs and the clean target.
struct Law {
  const TrialParams& p;
  std::vector<double> spectrum;
  Matrix U, Wstar, A1, A2;  // Wstar empty for the nonlinear target
  std::vector<double> sqrt_s;

  // Latents z ~ N(0, diag(s)), k x n.
  Matrix latents(uint64_t key, Stream s, int n) const {
    return scale_rows(gaussian(key, s, 0, p.k, n), sqrt_s);
  }
  // Clean targets of latents Z (inputs X = U Z).
  Matrix target(const Matrix& Z, const Matrix& X) const {
    if (p.target == Target::linear) return matmul(Wstar, X);
    return matmul(A2, activate(Activation::tanh, matmul(A1, Z)));
  }
};

Law make_law(const TrialParams& p, const TrialKeys& keys) {
  const int d = p.d, k = p.k, m = p.m;
  Law law{p, spectrum_of(p), {}, {}, {}, {}, {}};
  law.sqrt_s.resize(k);
  for (int j = 0; j < k; ++j) law.sqrt_s[j] = std::sqrt(law.spectrum[j]);
  law.U = qr_orthonormal(gaussian(keys.data, Stream::U, 0, d, k));
  if (p.target == Target::linear) {
    const Matrix A = gaussian(keys.data, Stream::A, 0, m, k, 1.0 / std::sqrt(double(k)));
    law.Wstar = matmul_nt(A, law.U);
  } else {  // y = A2 tanh(A1 z), A1 k x k and A2 m x k, entries N(0, 1/k)
    law.A1 = gaussian(keys.data, Stream::target_a1, 0, k, k, 1.0 / std::sqrt(double(k)));
    law.A2 = gaussian(keys.data, Stream::target_a2, 0, m, k, 1.0 / std::sqrt(double(k)));
  }
  return law;
}

// A trained teacher: its layers after tp.steps of full-batch GD (float64) on
// its own clean training set, and whether that training stayed finite.
struct TrainedTeacher {
  std::vector<Matrix> W;  // index 1..L
  bool ok = true;
  size_t bytes() const {
    size_t b = sizeof(*this);
    for (const Matrix& M : W) b += sizeof(Matrix) + M.a.size() * sizeof(double);
    return b;
  }
};

// Its own clean training set from the teacher key, same law and label noise;
// initial weights from the teacher key. Reads exactly what teacher_recipe
// lists (w: the widths d, hidden..., m).
TeacherTraining teacher_training(const TrialParams& p, const TrialKeys& keys, const Law& law,
                                 const std::vector<int>& w) {
  const TeacherParams& tp = p.teacher;
  const int L = static_cast<int>(w.size()) - 1, m = p.m;
  TeacherTraining tt;
  tt.w = w;
  tt.act = p.activation;
  const Matrix Zt = law.latents(keys.teacher, Stream::teacher_z, tp.n_train);
  tt.X = matmul(law.U, Zt);
  tt.Y = law.target(Zt, tt.X);
  if (p.label_noise != 0)
    tt.Y = add(tt.Y, scaled(gaussian(keys.teacher, Stream::teacher_label_noise, 0, m, tp.n_train),
                            p.label_noise));
  tt.W0.resize(L + 1);
  for (int l = 1; l <= L; ++l)
    tt.W0[l] = gaussian(keys.teacher, Stream::teacher_init, static_cast<uint32_t>(l), w[l], w[l - 1],
                        kTeacherInitScale / std::sqrt(double(w[l - 1])));
  tt.steps = tp.steps;
  tt.lr = tp.lr;
  // train_plain_f64's `automatic`, written out so that another trainer takes the same path.
  tt.moment = moments_cheaper(make_net(w, p.activation), 0u, tp.n_train);
  return tt;
}

std::shared_ptr<const TrainedTeacher> train_teacher(TeacherTraining tt) {
  auto t = std::make_shared<TrainedTeacher>();
  t->W = std::move(tt.W0);
  t->ok = train_plain_f64(t->W, tt.act, tt.X, tt.Y, tt.steps, tt.lr,
                          tt.moment ? PlainPath::moment : PlainPath::data);
  return t;
}

// Everything train_teacher reads, as bytes: two trials with equal recipes get
// the same teacher bit for bit, so the cache may hand one's to the other. The
// keys already hash the sweep seed, the seed and the shapes; the fields are
// listed again so that equality, not a 64-bit hash, decides.
std::string teacher_recipe(const TrialParams& p, const TrialKeys& keys) {
  std::string r;
  auto put = [&r](const auto& v) { r.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  put(keys.data), put(keys.teacher), put(p.d), put(p.k), put(p.m), put(p.hidden.size());
  for (int h : p.hidden) put(h);
  put(p.spectrum), put(p.spectrum_p), put(p.spectrum_kappa), put(p.target), put(p.activation);
  put(p.label_noise), put(p.teacher.n_train), put(p.teacher.steps), put(p.teacher.lr);
  return r;
}

// Trained teachers by recipe, shared by the threads that set trials up.
// Training a teacher costs as much as training a student (T steps of the data
// path, in float64, on one core); in a sweep over noise, lambda, the student's
// optimiser or the decomposition, every one of those trials has the same
// teacher. Least recently used recipes go first past the byte budget; a recipe
// another thread is training is waited for, not trained twice.
class TeacherCache {
 public:
  template <class Train>
  std::shared_ptr<const TrainedTeacher> get(const std::string& recipe, Train train) {
    std::promise<std::shared_ptr<const TrainedTeacher>> mine;
    std::shared_future<std::shared_ptr<const TrainedTeacher>> theirs;
    uint64_t ticket = 0;  // nonzero: this call trains the recipe for the cache
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = map_.find(recipe);  // pinned entries are there whatever the budget
      if (it != map_.end()) {
        ++stats_.reused;
        lru_.splice(lru_.begin(), lru_, it->second.pos);
        theirs = it->second.value;
      } else {
        ++stats_.trained;
        if (capacity_ > 0) {
          ticket = ++tickets_;
          lru_.push_front(recipe);
          map_.emplace(recipe, Entry{mine.get_future().share(), lru_.begin(), ticket, 0, 0});
        }
      }
    }
    if (theirs.valid()) return theirs.get();
    std::shared_ptr<const TrainedTeacher> t;
    const auto t0 = std::chrono::steady_clock::now();
    try {
      t = train();
      const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::lock_guard<std::mutex> lock(mu_);
      stats_.train_seconds += sec;
    } catch (...) {
      // Nothing is kept of a failed training (an exception, not a diverged
      // teacher): those waiting get the exception, the next trial tries again.
      if (ticket) {
        mine.set_exception(std::current_exception());
        std::lock_guard<std::mutex> lock(mu_);
        auto it = map_.find(recipe);
        if (it != map_.end() && it->second.ticket == ticket) {
          lru_.erase(it->second.pos);
          map_.erase(it);
        }
      }
      throw;
    }
    if (ticket) {
      mine.set_value(t);
      std::lock_guard<std::mutex> lock(mu_);
      auto it = map_.find(recipe);
      if (it != map_.end() && it->second.ticket == ticket) {  // not dropped by a reset meanwhile
        it->second.bytes = t->bytes() + 2 * recipe.size() + 64;
        stats_.bytes += it->second.bytes;
        evict();
      }
    }
    return t;
  }

  // Whether the recipe is kept or being trained.
  bool holds(const std::string& recipe) const {
    std::lock_guard<std::mutex> lock(mu_);
    return map_.count(recipe) != 0;
  }

  // A teacher trained elsewhere, pinned until unpin (an equal one already
  // there is kept and pinned instead: the same recipe gives the same bits).
  void put(const std::string& recipe, std::shared_ptr<const TrainedTeacher> t) {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.elsewhere;
    auto it = map_.find(recipe);
    if (it != map_.end()) {
      ++it->second.pins;
      return;
    }
    std::promise<std::shared_ptr<const TrainedTeacher>> done;
    const size_t bytes = t->bytes() + 2 * recipe.size() + 64;
    done.set_value(std::move(t));
    lru_.push_front(recipe);
    map_.emplace(recipe, Entry{done.get_future().share(), lru_.begin(), 0, bytes, 1});
    stats_.bytes += bytes;
  }

  void unpin(const std::vector<std::string>& recipes) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& r : recipes) {
      auto it = map_.find(r);
      if (it != map_.end() && it->second.pins > 0) --it->second.pins;
    }
    evict();
  }

  TeacherCacheStats stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    return stats_;
  }

  void reset(size_t capacity) {
    std::lock_guard<std::mutex> lock(mu_);
    // Trainings in flight keep their promise (their waiters hold the future);
    // only finished entries are dropped with the map.
    map_.clear();
    lru_.clear();
    capacity_ = capacity;
    stats_ = TeacherCacheStats{};
  }

 private:
  struct Entry {
    std::shared_future<std::shared_ptr<const TrainedTeacher>> value;
    std::list<std::string>::iterator pos;
    uint64_t ticket;  // which call trains it
    size_t bytes;     // 0 while its training runs
    int pins;         // put() calls not yet unpinned: kept past the budget
  };
  void evict() {  // oldest finished entries first, down to the budget (mu_ held)
    for (auto pos = lru_.end(); stats_.bytes > capacity_ && pos != lru_.begin();) {
      --pos;
      auto it = map_.find(*pos);
      if (!it->second.bytes || it->second.pins > 0) continue;
      stats_.bytes -= it->second.bytes;
      ++stats_.evicted;
      map_.erase(it);
      pos = lru_.erase(pos);
    }
  }

  mutable std::mutex mu_;
  std::unordered_map<std::string, Entry> map_;
  std::list<std::string> lru_;  // most recently used first
  uint64_t tickets_ = 0;
  size_t capacity_ = kDefaultCapacity;
  TeacherCacheStats stats_;

  static constexpr size_t kDefaultCapacity = size_t{kTeacherCacheDefaultMb} << 20;
};

TeacherCache& teacher_cache() {
  static TeacherCache cache;
  return cache;
}

// Bytes a kept problem holds (SetupShare's budget).
size_t problem_bytes(const TrialProblem& pr) {
  size_t b = sizeof(pr);
  auto add = [&b](const Matrix& M) { b += sizeof(Matrix) + M.a.size() * sizeof(double); };
  for (const Matrix* M : {&pr.X, &pr.Xn, &pr.Y, &pr.Wstar, &pr.Mhalf, &pr.Xtest, &pr.Ytest, &pr.Wt, &pr.U}) add(*M);
  for (const std::vector<Matrix>* v : {&pr.feature, &pr.W0, &pr.teacher_W})
    for (const Matrix& M : *v) add(M);
  return b + (pr.spectrum.size() + pr.checkpoints.size()) * 8 + (pr.w.size() + pr.matched.size()) * 4;
}

// Re-factorises W_t (m x d) into L layers of widths w (MODEL.md "Teacher";
// depth > 2 as in docs/MODEL_NOTES.md). Throws InputError when a hidden width
// cannot hold the decomposition's inner dimension.
std::vector<Matrix> decompose(const TrialParams& p, const std::vector<int>& w, const Matrix& Wt,
                              const Matrix& U, uint64_t teacher_key) {
  const int L = static_cast<int>(w.size()) - 1;
  const int d = w[0], m = w[L];
  const Decomposition dec = p.teacher.decomposition;
  // Core factors through an inner dimension q: first (q x d), middle (q x q),
  // last (m x q); W_t = last * middle^(L-2) * first.
  Matrix first, middle, last;
  int q = 0;
  std::string what;
  switch (dec) {
    case Decomposition::balanced:
    case Decomposition::rotated:
    case Decomposition::scaled:
    case Decomposition::power: {
      const SVD f = svd(Wt);
      q = f.rank();
      // Exponents of S per layer: S^(1/L) each (balanced), or S^p in layer 1
      // and S^((1-p)/(L-1)) in each other layer (power).
      double e_first = 1.0 / L, e_rest = 1.0 / L;
      if (dec == Decomposition::power) {
        e_first = p.teacher.power;
        e_rest = (1.0 - p.teacher.power) / (L - 1);
      }
      first = Matrix(q, d);
      middle = Matrix(q, q);
      last = Matrix(m, q);
      for (int c = 0; c < q; ++c) {
        const double sf = std::pow(f.s[c], e_first), sr = std::pow(f.s[c], e_rest);
        for (int j = 0; j < d; ++j) first(c, j) = sf * f.Q(j, c);
        for (int i = 0; i < m; ++i) last(i, c) = f.P(i, c) * sr;
        middle(c, c) = sr;
      }
      what = "the rank r = " + std::to_string(q) + " of the teacher's map";
      break;
    }
    case Decomposition::latent:
      q = p.k;
      first = transpose(U);
      middle = identity(q);
      last = matmul(Wt, U);
      what = "k = " + std::to_string(q) + " latent features";
      break;
    case Decomposition::input:
      q = d;
      first = identity(d);
      middle = identity(q);
      last = Wt;
      what = "d = " + std::to_string(q) + " input features";
      break;
    case Decomposition::output:
      q = m;
      first = Wt;
      middle = identity(q);
      last = identity(m);
      what = "m = " + std::to_string(q) + " output features";
      break;
    case Decomposition::as_trained:
      throw std::logic_error("decompose: as_trained has no re-factorisation");
  }
  for (int l = 1; l < L; ++l)
    if (w[l] < q) {
      std::vector<int> hidden(w.begin() + 1, w.end() - 1);
      throw InputError("teacher.decomposition",
                       std::string("decomposition '") + decomposition_name(dec) + "' needs " + what +
                           " in every hidden layer, so every hidden width must be >= " +
                           std::to_string(q) + "; hidden = " + widths_text(hidden));
    }
  std::vector<Matrix> W(L + 1);
  W[1] = embed(first, w[1], d);
  for (int l = 2; l < L; ++l) W[l] = embed(middle, w[l], w[l - 1]);
  W[L] = embed(last, m, w[L - 1]);
  if (dec == Decomposition::scaled) {
    if (p.teacher.scale == 0.0 || !std::isfinite(p.teacher.scale))
      throw InputError("teacher.scale", "must be finite and nonzero");
    W[1] = scaled(W[1], p.teacher.scale);
    W[L] = scaled(W[L], 1.0 / p.teacher.scale);
  }
  if (dec == Decomposition::rotated)  // each hidden layer mixed by its own R_l
    for (int l = 1; l < L; ++l) {
      const Matrix R = random_orthogonal(teacher_key, Stream::R, static_cast<uint32_t>(l), w[l]);
      W[l] = matmul(R, W[l]);
      W[l + 1] = matmul_nt(W[l + 1], R);
    }
  return W;
}

}  // namespace

int usable_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  const unsigned hw = std::thread::hardware_concurrency();
  return hw > 0 ? static_cast<int>(hw) : 1;
}

int thread_count(int requested) { return requested > 0 ? requested : usable_cores(); }

void parallel_for(size_t n, int threads, const std::function<void(size_t)>& f) {
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::exception_ptr first;  // the first exception of f; the others stop taking work
  auto work = [&] {
    try {
      for (size_t k; (k = next.fetch_add(1)) < n;) f(k);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!first) first = std::current_exception();
      next.store(n);
    }
  };
  const size_t nt = std::min<size_t>(n, static_cast<size_t>(std::max(threads, 1)));
  // The calling thread is one of the nt. A thread the system refuses (too
  // many, or no memory for its stack) is one fewer: those started share the
  // work. Until session 13 the refusal left joinable threads behind, and
  // std::terminate ended the run without a word or a checkpoint.
  std::vector<std::thread> pool;
  pool.reserve(nt > 0 ? nt - 1 : 0);
  for (size_t t = 1; t < nt; ++t) {
    try {
      pool.emplace_back(work);
    } catch (...) {  // system_error, or bad_alloc for the thread's state
      break;
    }
  }
  work();
  for (auto& th : pool) th.join();
  if (first) std::rethrow_exception(first);
}

namespace {

// Set-up's InputErrors that come before a trained teacher would be trained,
// shared with teachers_to_train (which skips those trials: set-up reports them).
void check_law_inputs(const TrialParams& p) {
  if (p.k < 1 || p.k > p.d) throw InputError("k", "need 1 <= k <= d");
  if (p.hidden.empty()) throw InputError("hidden", "need at least one hidden layer (L >= 2)");
}

std::vector<int> matched_set(const TrialParams& p, int L) {
  std::vector<int> M;
  if (p.matched_layers.empty()) {
    for (int l = 1; l < L; ++l) M.push_back(l);
    return M;
  }
  for (int l : p.matched_layers) {
    if (l < 1 || l > L - 1)
      throw InputError("matched_layers", "layer " + std::to_string(l) +
                                             " is not a hidden layer (1.." + std::to_string(L - 1) +
                                             ")");
    M.push_back(l);
  }
  std::sort(M.begin(), M.end());
  M.erase(std::unique(M.begin(), M.end()), M.end());
  return M;
}

}  // namespace

std::vector<int64_t> checkpoint_steps(int64_t T, int count) {
  if (T < 0) throw std::invalid_argument("checkpoint_steps: negative step count");
  // At least {0, T}; at most every step.
  const int64_t n = std::min<int64_t>(std::max(count, 2), T + 1);
  std::vector<int64_t> steps{0};
  if (n == 1) return steps;
  int64_t prev = 0;
  for (int64_t i = 1; i < n; ++i) {
    // Ideal: T^((i-1)/(n-2)), from 1 to T; then strictly increasing with room left.
    const double ideal =
        n == 2 ? static_cast<double>(T) : std::pow(static_cast<double>(T), double(i - 1) / double(n - 2));
    int64_t v = std::llround(ideal);
    v = std::max(v, prev + 1);
    v = std::min(v, T - (n - 1 - i));
    steps.push_back(v);
    prev = v;
  }
  return steps;
}

Matrix end_to_end(const std::vector<Matrix>& W) {
  if (W.size() < 2) throw std::logic_error("end_to_end: no layers");
  Matrix A = W[1];
  for (size_t l = 2; l < W.size(); ++l) {
    if (W[l].cols != A.rows) throw std::logic_error("end_to_end: layer widths do not chain");
    Matrix B(W[l].rows, A.cols);
    // tm::gemm: one fma chain per element over p = 0.. from 0, the product the
    // CUDA backend's evaluation forms (eval_item), in the CPU's register tiles.
    tm::gemm<tm::kSet>(tm::SerialTeam{}, B.rows, B.cols, W[l].cols, W[l].a.data(), W[l].cols, 1, A.a.data(),
                       A.cols, B.a.data(), B.cols);
    A = std::move(B);
  }
  return A;
}

double linear_risk(const TrialProblem& pr, const Matrix& We) {
  if (pr.Wstar.rows > 0) {
    // The exact formula is written once, in tm::linear_risk: the trainer's evaluator
    // (host/train.cpp) and the CUDA backend call it too, so a risk computed here equals
    // the stored test_risk of the same map bit for bit (same summation order).
    if (We.rows != pr.Wstar.rows || We.cols != pr.Wstar.cols || pr.Mhalf.rows != pr.Wstar.cols)
      throw std::logic_error("linear_risk: shapes of We, W* and Mhalf do not agree");
    return tm::linear_risk(We.rows, We.cols, pr.Mhalf.cols, We.a.data(), pr.Wstar.a.data(), pr.Mhalf.a.data(),
                           pr.sigma, pr.sigma_y);
  }
  // Nonlinear target: Monte Carlo over the test set (clean targets; label noise added exactly).
  if (pr.Xtest.cols == 0) throw std::logic_error("linear_risk: nonlinear target without a test set");
  return frob2(sub(matmul(We, pr.Xtest), pr.Ytest)) / pr.Xtest.cols + pr.Ytest.rows * pr.sigma_y * pr.sigma_y;
}

TrialProblem setup_trial(const TrialParams& p, uint64_t sweep_seed) {
  check_law_inputs(p);
  TrialProblem pr;
  pr.params = p;
  pr.L = p.depth();
  const int L = pr.L, d = p.d, k = p.k, m = p.m, N = p.n_train;
  pr.w = p.widths();
  pr.matched = matched_set(p, L);
  pr.sigma = p.noise;
  pr.sigma_y = p.label_noise;
  const TrialKeys keys = trial_keys(sweep_seed, p);
  const bool linear_target = p.target == Target::linear;

  // Data law.
  const Law law = make_law(p, keys);
  pr.spectrum = law.spectrum;
  pr.U = law.U;
  pr.Mhalf = scale_cols(pr.U, law.sqrt_s);
  pr.Wstar = law.Wstar;

  // Student set.
  {
    const Matrix Z = law.latents(keys.data, Stream::Z, N);
    pr.X = matmul(pr.U, Z);
    pr.Xn = add(pr.X, scaled(gaussian(keys.data, Stream::E, 0, d, N), pr.sigma));
    pr.Y = law.target(Z, pr.X);
    if (pr.sigma_y != 0)
      pr.Y = add(pr.Y, scaled(gaussian(keys.data, Stream::label_noise, 0, m, N), pr.sigma_y));
  }
  // Monte Carlo test set (nonlinear problems): noisy inputs, clean targets.
  Matrix Xtest_clean;
  if (!p.linear()) {
    const Matrix Z = law.latents(keys.data, Stream::test_z, p.n_test);
    Xtest_clean = matmul(pr.U, Z);
    pr.Xtest = add(Xtest_clean, scaled(gaussian(keys.data, Stream::test_e, 0, d, p.n_test), pr.sigma));
    pr.Ytest = law.target(Z, Xtest_clean);
  }

  // Teacher: its end-to-end map W_t, then its layers.
  const TeacherParams& tp = p.teacher;
  std::vector<Matrix> trained;
  check_teacher_rules(p, "");
  switch (tp.kind) {
    case TeacherKind::oracle:
    case TeacherKind::perturbed:
      pr.Wt = pr.Wstar;
      if (tp.kind == TeacherKind::perturbed) {
        const Matrix G = gaussian(keys.teacher, Stream::G, 0, m, k);
        const double gn = frob(G);
        // ||W* U||_F = ||A||_F since U^T U = I.
        const double c = gn > 0 ? tp.delta * frob(matmul(pr.Wstar, pr.U)) / gn : 0.0;
        pr.Wt = add(pr.Wstar, scaled(matmul_nt(G, pr.U), c));
      }
      break;
    case TeacherKind::trained: {
      const std::shared_ptr<const TrainedTeacher> t =
          teacher_cache().get(teacher_recipe(p, keys),
                              [&] { return train_teacher(teacher_training(p, keys, law, pr.w)); });
      if (!t->ok)
        throw std::runtime_error("the trained teacher diverged (teacher.lr = " +
                                 std::to_string(tp.lr) + ")");
      trained = t->W;
      pr.Wt = product(trained);
      break;
    }
  }
  pr.teacher_W = tp.decomposition == Decomposition::as_trained
                     ? trained
                     : decompose(p, pr.w, pr.Wt, pr.U, keys.teacher);

  // Teacher features on the CLEAN student inputs, for every matched layer
  // (kept when lambda = 0 too: the twin reports its feature loss).
  const std::vector<Matrix> H = forward(pr.teacher_W, p.activation, pr.X);
  pr.feature.assign(L, Matrix());
  for (int l : pr.matched) pr.feature[l] = H[l];

  // Student initial weights (the twin starts from the same ones).
  pr.W0.assign(L + 1, Matrix());
  for (int l = 1; l <= L; ++l)
    pr.W0[l] = gaussian(keys.init, Stream::student_init, static_cast<uint32_t>(l), pr.w[l],
                        pr.w[l - 1], p.init_scale / std::sqrt(double(pr.w[l - 1])));

  // Closed forms.
  if (linear_target) {
    Matrix WB = pr.Wstar;  // sigma = 0: W* itself is optimal
    if (pr.sigma > 0) {
      // W_B = W* Sx (Sx + sigma^2 I)^-1, i.e. W_B^T = (Sx + sigma^2 I)^-1 Sx W*^T.
      const Matrix Sx = matmul_nt(pr.Mhalf, pr.Mhalf);
      const Matrix K = add(Sx, scaled(identity(d), pr.sigma * pr.sigma));
      WB = transpose(solve_spd(K, matmul_nt(Sx, pr.Wstar)));
    }
    pr.bayes_risk = linear_risk(pr, WB);
  } else {
    pr.bayes_risk = std::numeric_limits<double>::quiet_NaN();  // no closed form
  }
  pr.interp_risk = linear_risk(pr, times_pinv(pr.Y, pr.Xn));
  if (linear_target && p.activation == Activation::linear) {
    pr.teacher_clean_risk = frob2(matmul(sub(pr.Wt, pr.Wstar), pr.Mhalf));
  } else {  // Monte Carlo: the teacher network on clean test inputs vs clean targets
    const std::vector<Matrix> Ht = forward(pr.teacher_W, p.activation, Xtest_clean);
    pr.teacher_clean_risk = frob2(sub(Ht[L], pr.Ytest)) / p.n_test;
  }
  pr.checkpoints = checkpoint_steps(p.steps, p.checkpoints);
  return pr;
}

std::string setup_ignores_text() {
  const size_t n = std::size(kSetupIgnores);
  std::string t;
  for (size_t i = 0; i < n; ++i) t += (i == 0 ? "" : i + 1 == n ? " or " : ", ") + std::string(kSetupIgnores[i]);
  return t;
}

std::string problem_recipe(const TrialParams& p, uint64_t sweep_seed) {
  TrialParams q = p;  // what only training reads, neutral (kSetupIgnores)
  q.lambda = 0;
  q.lr = 0;
  q.steps = 0;
  q.checkpoints = 0;
  q.baseline = true;
  q.path = TrainPath::automatic;
  return std::to_string(sweep_seed) + " " + to_json(q).dump();
}

namespace {
// Process totals of every SetupShare, and the budget new ones take.
struct ShareTotals {
  std::mutex mu;
  SetupCacheStats s;
  size_t budget = size_t{kSetupCacheDefaultMb} << 20;
};
ShareTotals& share_totals() {
  static ShareTotals t;
  return t;
}
void count_setup(long long SetupCacheStats::*what) {  // one more of a total
  std::lock_guard<std::mutex> lock(share_totals().mu);
  ++(share_totals().s.*what);
}
}  // namespace

SetupCacheStats setup_cache_stats() {
  std::lock_guard<std::mutex> lock(share_totals().mu);
  return share_totals().s;
}

void count_moments_reused() { count_setup(&SetupCacheStats::moments_reused); }

void reset_setup_cache(size_t capacity_bytes) {
  std::lock_guard<std::mutex> lock(share_totals().mu);
  share_totals().s = SetupCacheStats{};
  share_totals().budget = capacity_bytes;
}

struct SetupShare::Impl {
  using Ptr = std::shared_ptr<const TrialProblem>;
  struct Entry {
    int left = 0;                      // trials of the range still to take it
    std::shared_future<Ptr> value;     // invalid until a trial starts building it
    size_t bytes = 0;
  };
  size_t budget = 0;
  std::vector<std::string> recipe;  // of trial lo + k
  std::vector<char> copy;           // trial lo + k has the problem of an earlier trial
  std::mutex mu;
  std::unordered_map<std::string, Entry> map;  // recipes of two or more trials of the range
  size_t bytes = 0;                            // of the problems kept now
  size_t peak = 0;
};

SetupShare::SetupShare(const std::vector<TrialParams>& trials, size_t lo, size_t hi, uint64_t sweep_seed)
    : trials_(trials), lo_(lo), seed_(sweep_seed) {
  size_t budget;
  {
    std::lock_guard<std::mutex> lock(share_totals().mu);
    budget = share_totals().budget;
  }
  if (budget == 0 || hi <= lo + 1) return;
  impl_ = std::make_unique<Impl>();
  impl_->budget = budget;
  impl_->recipe.reserve(hi - lo);
  impl_->copy.reserve(hi - lo);
  for (size_t i = lo; i < hi; ++i) {
    impl_->recipe.push_back(problem_recipe(trials[i], sweep_seed));
    impl_->copy.push_back(impl_->map[impl_->recipe.back()].left++ > 0);
  }
  for (auto it = impl_->map.begin(); it != impl_->map.end();)
    it = it->second.left < 2 ? impl_->map.erase(it) : std::next(it);
  if (impl_->map.empty()) impl_.reset();
}

SetupShare::~SetupShare() = default;

bool SetupShare::copies(size_t i) const { return impl_ && impl_->copy[i - lo_]; }

TrialProblem SetupShare::setup(size_t i) {
  using Ptr = Impl::Ptr;
  const TrialParams& p = trials_[i];
  auto build_own = [&] {  // not shared: counted with the shared builds
    count_setup(&SetupCacheStats::built);
    return setup_trial(p, seed_);
  };
  if (!impl_) return build_own();
  const std::string& r = impl_->recipe[i - lo_];
  std::promise<Ptr> mine;
  std::shared_future<Ptr> theirs;
  bool alone = false;  // alone in the range, or dropped: built below, unlocked
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->map.find(r);
    alone = it == impl_->map.end();
    if (!alone) {
      Impl::Entry& e = it->second;
      if (e.value.valid()) {
        theirs = e.value;
        count_setup(&SetupCacheStats::reused);
      } else {
        e.value = mine.get_future().share();
        count_setup(&SetupCacheStats::built);
      }
      if (--e.left == 0) {  // the last trial of the recipe: nothing more to keep
        impl_->bytes -= e.bytes;
        impl_->map.erase(it);
      }
    }
  }
  if (alone) return build_own();
  if (!theirs.valid()) {  // this trial builds it for the others
    std::shared_ptr<const TrialProblem> sp;
    try {
      TrialProblem built = setup_trial(p, seed_);
      built.shared_moments = std::make_shared<SharedMoments>();
      sp = std::make_shared<const TrialProblem>(std::move(built));
    } catch (...) {
      // The others get the same error (the same inputs); none is kept.
      mine.set_exception(std::current_exception());
      std::lock_guard<std::mutex> lock(impl_->mu);
      impl_->map.erase(r);
      throw;
    }
    mine.set_value(sp);
    {
      std::lock_guard<std::mutex> lock(impl_->mu);
      auto it = impl_->map.find(r);
      if (it != impl_->map.end()) {
        const size_t b = problem_bytes(*sp);
        if (impl_->bytes + b > impl_->budget) {  // over budget: the others build their own
          impl_->map.erase(it);
          count_setup(&SetupCacheStats::evicted);
        } else {
          it->second.bytes = b;
          impl_->bytes += b;
          impl_->peak = std::max(impl_->peak, impl_->bytes);
          std::lock_guard<std::mutex> tl(share_totals().mu);
          share_totals().s.bytes = std::max(share_totals().s.bytes, impl_->peak);
        }
      }
    }
    return *sp;
  }
  TrialProblem pr = *theirs.get();  // the builder's exception, if it failed
  pr.params = p;
  pr.checkpoints = checkpoint_steps(p.steps, p.checkpoints);
  return pr;
}

TeacherCacheStats teacher_cache_stats() { return teacher_cache().stats(); }

std::string trained_teacher_recipe(const TrialParams& p, uint64_t sweep_seed) {
  return p.teacher.kind == TeacherKind::trained ? teacher_recipe(p, trial_keys(sweep_seed, p)) : std::string();
}

std::vector<size_t> setup_order(const std::vector<TrialParams>& trials, size_t lo, size_t hi,
                                uint64_t sweep_seed, const SetupShare* share) {
  std::vector<size_t> first, later;
  std::unordered_set<std::string> seen;
  for (size_t i = lo; i < hi; ++i) {
    const std::string recipe = trained_teacher_recipe(trials[i], sweep_seed);
    const bool waits = !recipe.empty() && !seen.insert(recipe).second;
    (waits || (share && share->copies(i)) ? later : first).push_back(i);
  }
  first.insert(first.end(), later.begin(), later.end());
  return first;
}

void for_each_in_setup_order(const std::vector<TrialParams>& trials, size_t lo, size_t hi,
                             uint64_t sweep_seed, int threads, const std::function<void(size_t)>& f,
                             const SetupShare* share) {
  const std::vector<size_t> order = setup_order(trials, lo, hi, sweep_seed, share);
  parallel_for(order.size(), threads, [&](size_t k) { f(order[k]); });
}

void reset_teacher_cache(size_t capacity_bytes) { teacher_cache().reset(capacity_bytes); }

std::vector<TeacherTraining> teachers_to_train(const std::vector<TrialParams>& trials, size_t lo, size_t hi,
                                               uint64_t sweep_seed, int threads) {
  std::vector<size_t> first;  // the first trial of each recipe the cache lacks
  std::vector<std::string> recipes;
  std::unordered_set<std::string> seen;
  for (size_t i = lo; i < hi; ++i) {
    const TrialParams& p = trials[i];
    if (p.teacher.kind != TeacherKind::trained) continue;
    try {  // set-up fails such a trial before it needs the teacher, and reports it
      check_law_inputs(p);
      check_teacher_rules(p, "");
    } catch (const InputError&) {
      continue;
    }
    std::string recipe = trained_teacher_recipe(p, sweep_seed);
    if (!seen.insert(recipe).second || teacher_cache().holds(recipe)) continue;
    first.push_back(i);
    recipes.push_back(std::move(recipe));
  }
  std::vector<TeacherTraining> out(first.size());
  std::vector<char> built(first.size(), 0);
  parallel_for(first.size(), threads, [&](size_t j) {
    const TrialParams& p = trials[first[j]];
    try {
      const TrialKeys keys = trial_keys(sweep_seed, p);
      out[j] = teacher_training(p, keys, make_law(p, keys), p.widths());
      out[j].recipe = std::move(recipes[j]);
      built[j] = 1;
    } catch (const std::exception&) {
      // Not trained: left to the trial's set-up, which reports it.
    }
  });
  std::vector<TeacherTraining> kept;
  kept.reserve(out.size());
  for (size_t j = 0; j < out.size(); ++j)
    if (built[j]) kept.push_back(std::move(out[j]));
  return kept;
}

void put_trained_teacher(const std::string& recipe, std::vector<Matrix> W, bool ok) {
  auto t = std::make_shared<TrainedTeacher>();
  t->W = std::move(W);
  t->ok = ok;
  teacher_cache().put(recipe, std::move(t));
}

void unpin_teachers(const std::vector<std::string>& recipes) { teacher_cache().unpin(recipes); }

}  // namespace stsweep
