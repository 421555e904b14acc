// The results file: HDF5 layout, journal, checkpoints, merge (docs/RESULTS.md).
#include "store.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>

#include <hdf5.h>
#include <hdf5_hl.h>
#include <nlohmann/json.hpp>

#include "version.hpp"

namespace stsweep {
namespace {

using json = nlohmann::json;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr hsize_t kRowChunk = 4096;        // rows per chunk of a 1-D column
constexpr hsize_t kCurveChunkValues = 16384;  // values per chunk of a 2-D column
constexpr size_t kWriteRows = 8192;         // rows gathered before one HDF5 write

std::string errno_text(int e) { return std::strerror(e); }

// --- HDF5 error handling -----------------------------------------------------
struct H5Quiet {
  H5Quiet() {
    // No clean-up at exit: after a failed close (disk full) HDF5's atexit
    // handler crashes on the half-closed file.
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
};
void h5_quiet() { static H5Quiet q; }

herr_t collect_error(unsigned n, const H5E_error2_t* e, void* data) {
  auto* out = static_cast<std::vector<std::string>*>(data);
  std::string d = e->desc ? e->desc : "";
  if (!d.empty()) out->push_back(d);
  (void)n;
  return 0;
}
// The HDF5 error stack's most specific messages (the OS error when there is one).
std::string h5_detail() {
  std::vector<std::string> msgs;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_error, &msgs);
  H5Eclear2(H5E_DEFAULT);
  for (const auto& m : msgs) {
    // The OS error inside HDF5's long write-failure text, e.g. 'No space left on device'.
    auto a = m.find("error message = '");
    if (a != std::string::npos) {
      a += 17;
      auto b = m.find('\'', a);
      return m.substr(a, b == std::string::npos ? std::string::npos : b - a);
    }
    if (m.find("errno") != std::string::npos) return m;
  }
  return msgs.empty() ? std::string("HDF5 error") : msgs.front();
}
[[noreturn]] void h5_fail(const std::string& what) {
  throw std::runtime_error(what + " (" + h5_detail() + ")");
}

// An owned hid_t, closed with the right function.
class Hid {
 public:
  Hid() = default;
  explicit Hid(hid_t id) : id_(id) {}
  Hid(const Hid&) = delete;
  Hid& operator=(const Hid&) = delete;
  Hid(Hid&& o) noexcept : id_(o.id_) { o.id_ = -1; }
  Hid& operator=(Hid&& o) noexcept {
    if (this != &o) { reset(); id_ = o.id_; o.id_ = -1; }
    return *this;
  }
  ~Hid() { reset(); }
  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }
  bool valid() const { return id_ >= 0; }
  herr_t reset() {
    herr_t rc = 0;
    if (id_ >= 0) {
      switch (H5Iget_type(id_)) {
        case H5I_FILE: rc = H5Fclose(id_); break;
        case H5I_DATASET: rc = H5Dclose(id_); break;
        case H5I_DATASPACE: rc = H5Sclose(id_); break;
        case H5I_DATATYPE: rc = H5Tclose(id_); break;
        case H5I_ATTR: rc = H5Aclose(id_); break;
        case H5I_GENPROP_LST: rc = H5Pclose(id_); break;
        case H5I_GROUP: rc = H5Gclose(id_); break;
        default: rc = H5Idec_ref(id_); break;
      }
    }
    id_ = -1;
    return rc;
  }

 private:
  hid_t id_ = -1;
};
Hid check(hid_t id, const std::string& what) {
  if (id < 0) h5_fail(what);
  return Hid(id);
}
void check(herr_t rc, const char* what, const std::string& name) {
  if (rc < 0) h5_fail(std::string(what) + " " + name);
}

Hid vl_string_type() {
  Hid t = check(H5Tcopy(H5T_C_S1), "string type");
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return t;
}
hid_t file_type(ColType t) {
  switch (t) {
    case ColType::i8: return H5T_STD_I8LE;
    case ColType::i64: return H5T_STD_I64LE;
    case ColType::f64: return H5T_IEEE_F64LE;
    case ColType::str: break;
  }
  return -1;
}

// --- attributes ----------------------------------------------------------------
void attr_delete(hid_t obj, const char* name) {
  if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
}
void attr_str(hid_t obj, const char* name, const std::string& v) {
  attr_delete(obj, name);
  Hid t = vl_string_type();
  Hid s = check(H5Screate(H5S_SCALAR), "dataspace");
  Hid a = check(H5Acreate2(obj, name, t, s, H5P_DEFAULT, H5P_DEFAULT), std::string("attribute ") + name);
  const char* p = v.c_str();
  check(H5Awrite(a, t, &p), "writing attribute", name);
}
template <typename T>
void attr_num(hid_t obj, const char* name, hid_t ftype, hid_t mtype, const std::vector<T>& v,
              bool scalar) {
  attr_delete(obj, name);
  hsize_t n = v.size();
  Hid s = check(scalar ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, nullptr), "dataspace");
  Hid a = check(H5Acreate2(obj, name, ftype, s, H5P_DEFAULT, H5P_DEFAULT), std::string("attribute ") + name);
  if (!v.empty()) check(H5Awrite(a, mtype, v.data()), "writing attribute", name);
}
void attr_i64(hid_t obj, const char* name, int64_t v) {
  attr_num<int64_t>(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, {v}, true);
}
void attr_f64(hid_t obj, const char* name, double v) {
  attr_num<double>(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, {v}, true);
}
bool has_attr(hid_t obj, const char* name) { return H5Aexists(obj, name) > 0; }
std::string read_attr_str(hid_t obj, const char* name) {
  if (!has_attr(obj, name)) return "";
  Hid a = check(H5Aopen(obj, name, H5P_DEFAULT), std::string("attribute ") + name);
  Hid ft = check(H5Aget_type(a), "attribute type");
  if (H5Tget_class(ft) != H5T_STRING) return "";
  if (H5Tis_variable_str(ft) > 0) {
    Hid t = vl_string_type();
    char* p = nullptr;
    check(H5Aread(a, t, &p), "reading attribute", name);
    std::string out = p ? p : "";
    if (p) H5free_memory(p);
    return out;
  }
  size_t n = H5Tget_size(ft);
  std::string out(n, '\0');
  check(H5Aread(a, ft, out.data()), "reading attribute", name);
  out.resize(std::strlen(out.c_str()));
  return out;
}
std::vector<int64_t> read_attr_i64s(hid_t obj, const char* name) {
  if (!has_attr(obj, name)) return {};
  Hid a = check(H5Aopen(obj, name, H5P_DEFAULT), std::string("attribute ") + name);
  Hid s = check(H5Aget_space(a), "attribute space");
  hssize_t n = H5Sget_simple_extent_npoints(s);
  std::vector<int64_t> v(std::max<hssize_t>(n, 0));
  if (!v.empty()) check(H5Aread(a, H5T_NATIVE_INT64, v.data()), "reading attribute", name);
  return v;
}
int64_t read_attr_i64(hid_t obj, const char* name) {
  auto v = read_attr_i64s(obj, name);
  return v.empty() ? 0 : v[0];
}

// --- checksums and byte buffers ------------------------------------------------------
// FNV-1a over 8-byte words (then the tail): detects torn and corrupted records.
uint64_t checksum(const char* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  const uint64_t prime = 1099511628211ull;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = (h ^ w) * prime;
    h ^= h >> 29;
  }
  for (; i < n; ++i) h = (h ^ static_cast<unsigned char>(p[i])) * prime;
  return h;
}
struct Bytes {
  std::string b;
  template <typename T>
  void put(const T& v) { b.append(reinterpret_cast<const char*>(&v), sizeof(T)); }
  template <typename T>
  void put_n(const T* v, size_t n) { b.append(reinterpret_cast<const char*>(v), sizeof(T) * n); }
};
struct Reader {
  const char* p;
  const char* end;
  template <typename T>
  T get() {
    if (static_cast<size_t>(end - p) < sizeof(T)) throw std::runtime_error("short record");
    T v;
    std::memcpy(&v, p, sizeof(T));
    p += sizeof(T);
    return v;
  }
  // Throws unless n more values of T are left: checked before anything is
  // allocated for them (a damaged count must not ask for terabytes).
  template <typename T>
  void need(size_t n) const {
    if (static_cast<size_t>(end - p) / sizeof(T) < n) throw std::runtime_error("short record");
  }
  template <typename T>
  void get_n(T* v, size_t n) {
    need<T>(n);
    if (n == 0) return;  // v may be an empty vector's null data(): memcpy(nullptr, ., 0) is undefined
    std::memcpy(v, p, sizeof(T) * n);
    p += sizeof(T) * n;
  }
  template <typename T>
  void get_vec(std::vector<T>& v, size_t n) {
    need<T>(n);
    v.resize(n);
    get_n(v.data(), n);
  }
};

// --- file system helpers ----------------------------------------------------------------
bool exists(const std::string& p) {
  struct stat st;
  return ::stat(p.c_str(), &st) == 0;
}
std::string dir_of(const std::string& p) {
  auto s = p.find_last_of('/');
  if (s == std::string::npos) return ".";
  return s == 0 ? "/" : p.substr(0, s);
}
void fsync_path(const std::string& p, bool dir) {
  int fd = ::open(p.c_str(), dir ? (O_RDONLY | O_DIRECTORY) : O_RDONLY);
  if (fd < 0) throw std::runtime_error("cannot open " + p + ": " + errno_text(errno));
  int rc = ::fsync(fd);
  int e = errno;
  ::close(fd);
  if (rc != 0 && !dir) throw std::runtime_error("cannot sync " + p + ": " + errno_text(e));
}
void write_all(int fd, const char* p, size_t n, const std::string& what) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error("cannot write " + what + ": " + errno_text(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}
void copy_file(const std::string& from, const std::string& to) {
  int in = ::open(from.c_str(), O_RDONLY);
  if (in < 0) throw std::runtime_error("cannot open " + from + ": " + errno_text(errno));
  int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (out < 0) {
    int e = errno;
    ::close(in);
    throw std::runtime_error("cannot create " + to + ": " + errno_text(e));
  }
  struct stat st;
  ::fstat(in, &st);
  off_t left = st.st_size;
  bool fallback = false;
  try {
    while (left > 0 && !fallback) {
      ssize_t n = ::copy_file_range(in, nullptr, out, nullptr, static_cast<size_t>(left), 0);
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP) {
          fallback = true;
          break;
        }
        throw std::runtime_error("cannot copy " + from + " to " + to + ": " + errno_text(errno));
      }
      if (n == 0) break;
      left -= n;
    }
    if (fallback) {
      std::vector<char> buf(1 << 20);
      off_t off = st.st_size - left;
      ::lseek(in, off, SEEK_SET);
      ::lseek(out, off, SEEK_SET);
      while (true) {
        ssize_t r = ::read(in, buf.data(), buf.size());
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) throw std::runtime_error("cannot read " + from + ": " + errno_text(errno));
        if (r == 0) break;
        write_all(out, buf.data(), static_cast<size_t>(r), to);
      }
    }
  } catch (...) {
    ::close(in);
    ::close(out);
    throw;
  }
  ::close(in);
  if (::close(out) != 0) throw std::runtime_error("cannot write " + to + ": " + errno_text(errno));
}

std::string random_id() {
  std::random_device rd;
  uint64_t a = (uint64_t(rd()) << 32) ^ rd(), b = (uint64_t(rd()) << 32) ^ rd();
  char buf[40];
  std::snprintf(buf, sizeof buf, "%016llx%016llx", (unsigned long long)a, (unsigned long long)b);
  return buf;
}

// --- metrics: name -> field of TrialResult ----------------------------------------------
struct MetricField {
  ColType type;
  double (*f)(const TrialResult&);
  int64_t (*i)(const TrialResult&);
  std::string doc;
};
const std::map<std::string, MetricField>& metric_fields() {
  static const std::map<std::string, MetricField> m = {
      {"steps_run", {ColType::i64, nullptr, [](const TrialResult& r) { return r.steps_run; },
                     "gradient steps actually taken (< steps when diverged)"}},
      {"test_risk", {ColType::f64, [](const TrialResult& r) { return r.test_risk; }, nullptr,
                     "test risk R(W_e) of the student at the end"}},
      {"baseline_test_risk", {ColType::f64, [](const TrialResult& r) { return r.baseline_test_risk; }, nullptr,
                              "test risk of the lambda = 0 twin (NaN when baseline = false)"}},
      {"bayes_risk", {ColType::f64, [](const TrialResult& r) { return r.bayes_risk; }, nullptr,
                      "Bayes risk, the best any estimator can do"}},
      {"excess_risk", {ColType::f64, [](const TrialResult& r) { return r.excess_risk; }, nullptr,
                       "test_risk - bayes_risk"}},
      {"interp_risk", {ColType::f64, [](const TrialResult& r) { return r.interp_risk; }, nullptr,
                       "risk of the minimum-norm interpolant / least squares R(Y Xn^+)"}},
      {"teacher_clean_risk", {ColType::f64, [](const TrialResult& r) { return r.teacher_clean_risk; }, nullptr,
                              "clean risk of the teacher"}},
      {"train_loss", {ColType::f64, [](const TrialResult& r) { return r.train_loss; }, nullptr,
                      "full training loss at the end (label + lambda * feature)"}},
      {"label_loss", {ColType::f64, [](const TrialResult& r) { return r.label_loss; }, nullptr,
                      "label loss (1/2N)||f(Xn) - Y||^2 at the end"}},
      {"feature_loss", {ColType::f64, [](const TrialResult& r) { return r.feature_loss; }, nullptr,
                        "feature loss (1/2N) sum_l ||h^l - H_t^l||^2 at the end (unweighted)"}},
      {"best_test_risk", {ColType::f64, [](const TrialResult& r) { return r.best_test_risk; }, nullptr,
                          "lowest test risk over the checkpoints (early-stopping oracle)"}},
      {"best_step", {ColType::i64, nullptr, [](const TrialResult& r) { return r.best_step; },
                     "step of best_test_risk"}},
      {"zero_loss", {ColType::i8, nullptr, [](const TrialResult& r) { return int64_t{r.zero_loss}; },
                     "1 when the training loss reached the zero-loss tolerance"}},
      {"baseline_best_test_risk",
       {ColType::f64, [](const TrialResult& r) { return r.baseline_best_test_risk; }, nullptr,
        "lowest test risk of the lambda = 0 twin over the checkpoints (NaN when baseline = false)"}},
      {"baseline_best_step", {ColType::i64, nullptr, [](const TrialResult& r) { return r.baseline_best_step; },
                              "step of baseline_best_test_risk (-1 when baseline = false)"}},
      {"loss_rise", {ColType::f64, [](const TrialResult& r) { return r.loss_rise; }, nullptr,
                     "largest factor by which the training loss rose above its lowest earlier value "
                     "(1: it never rose; unstable GD when well above 1)"}},
      {"baseline_loss_rise", {ColType::f64, [](const TrialResult& r) { return r.baseline_loss_rise; }, nullptr,
                              "loss_rise of the lambda = 0 twin (NaN when baseline = false)"}},
      {"student_diverged", {ColType::i8, nullptr, [](const TrialResult& r) { return int64_t{r.student_diverged}; },
                            "1 when the student diverged (then status = diverged), else 0"}},
      {"baseline_train_loss", {ColType::f64, [](const TrialResult& r) { return r.baseline_train_loss; }, nullptr,
                               "training loss of the lambda = 0 twin at the end, its label loss (NaN when "
                               "baseline = false)"}},
      {"baseline_zero_loss", {ColType::i8, nullptr, [](const TrialResult& r) { return int64_t{r.baseline_zero_loss}; },
                              "1 when the lambda = 0 twin's training loss reached the zero-loss tolerance, 0 when "
                              "not, -1 when baseline = false"}},
      {"twin_diverged", {ColType::i8, nullptr, [](const TrialResult& r) { return int64_t{r.twin_diverged}; },
                         "1 when the lambda = 0 twin diverged (then status = diverged, though the student's "
                         "metrics are its own), 0 when not, -1 when baseline = false"}},
  };
  return m;
}
const std::vector<double>* curve_field(const TrialResult& r, const std::string& name) {
  if (name == "test_risk") return &r.curve_test_risk;
  if (name == "label_loss") return &r.curve_label_loss;
  if (name == "feature_loss") return &r.curve_feature_loss;
  if (name == "baseline_test_risk") return &r.curve_baseline_test_risk;
  if (name == "baseline_label_loss") return &r.curve_baseline_label_loss;
  if (name == "baseline_feature_loss") return &r.curve_baseline_feature_loss;
  return nullptr;
}
std::string strip_curve(const std::string& n) { return n.rfind("curve_", 0) == 0 ? n.substr(6) : n; }

bool is_param_column(const Column& c) { return !c.key.empty(); }
double fill_f64(const Column&) { return kNaN; }
int64_t fill_int(const Column& c) {
  if (c.name == "status") return static_cast<int64_t>(Status::pending);
  return is_param_column(c) ? 0 : -1;
}

}  // namespace

// --- columns ------------------------------------------------------------------
const std::vector<Column>& store_columns() {
  static const std::vector<Column> cols = [] {
    std::vector<Column> c;
    std::set<std::string> seen{"trial", "checkpoint"};
    auto add = [&](Column col) {
      if (!seen.insert(col.name).second)
        throw std::logic_error("results store: duplicate column name '" + col.name + "'");
      c.push_back(std::move(col));
    };
    for (const auto& s : param_specs()) {
      ColType t = s.type == 'i' ? ColType::i64 : s.type == 'f' ? ColType::f64
                : s.type == 's' ? ColType::str : ColType::i8;
      add({s.column, t, false, s.doc, s.key});
    }
    add({"status", ColType::i8, false, "trial status: 0 pending, 1 done, 2 diverged, 3 failed", ""});
    const auto& fields = metric_fields();
    for (const auto& n : scalar_metric_names()) {
      if (n == "status" || n == "trial") continue;
      auto it = fields.find(n);
      if (it == fields.end())
        throw std::logic_error("results store: unknown metric '" + n + "' (add it to host/store.cpp)");
      add({n, it->second.type, false, it->second.doc, ""});
    }
    add({"step", ColType::i64, true, "training step of each checkpoint (-1: none)", ""});
    TrialResult probe;
    for (const auto& n0 : curve_names()) {
      std::string n = strip_curve(n0);
      if (!curve_field(probe, n))
        throw std::logic_error("results store: unknown curve '" + n0 + "' (add it to host/store.cpp)");
      add({"curve_" + n, ColType::f64, true, n + " at each checkpoint (NaN: none)", ""});
    }
    return c;
  }();
  return cols;
}

bool int_column_has_missing(const Column& c) {
  return !c.curve && c.key.empty() && (c.type == ColType::i64 || c.type == ColType::i8) && c.name != "status";
}

int store_column_index(const std::string& name) {
  const auto& c = store_columns();
  for (size_t i = 0; i < c.size(); ++i)
    if (c[i].name == name) return static_cast<int>(i);
  return -1;
}

std::string store_schema_digest() {
  std::string s;
  for (const auto& c : store_columns()) s += c.name + ":" + char(c.type) + (c.curve ? "2" : "1") + ";";
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", (unsigned long long)checksum(s.data(), s.size()));
  return buf;
}

// --- RowBlock -------------------------------------------------------------------------
RowBlock RowBlock::empty(int C) {
  RowBlock b;
  b.C = C;
  b.cols.resize(store_columns().size());
  return b;
}

void RowBlock::widen(int newC) {
  if (newC <= C) return;
  const auto& cs = store_columns();
  size_t n = rows();
  for (size_t k = 0; k < cs.size(); ++k) {
    if (!cs[k].curve) continue;
    auto& d = cols[k];
    if (cs[k].type == ColType::f64) {
      std::vector<double> v(n * newC, kNaN);
      for (size_t r = 0; r < n; ++r)
        for (int j = 0; j < C; ++j) v[r * newC + j] = d.f[r * C + j];
      d.f.swap(v);
    } else {
      std::vector<int64_t> v(n * newC, -1);
      for (size_t r = 0; r < n; ++r)
        for (int j = 0; j < C; ++j) v[r * newC + j] = d.i[r * C + j];
      d.i.swap(v);
    }
  }
  C = newC;
}

void RowBlock::append(const RowBlock& o) {
  if (cols.empty()) cols.resize(store_columns().size());
  if (o.C > C) widen(o.C);
  const auto& cs = store_columns();
  trial.insert(trial.end(), o.trial.begin(), o.trial.end());
  for (size_t k = 0; k < cs.size(); ++k) {
    auto& d = cols[k];
    const auto& s = o.cols[k];
    if (!cs[k].curve) {
      d.i.insert(d.i.end(), s.i.begin(), s.i.end());
      d.f.insert(d.f.end(), s.f.begin(), s.f.end());
      d.s.insert(d.s.end(), s.s.begin(), s.s.end());
      continue;
    }
    for (size_t r = 0; r < o.rows(); ++r)
      for (int j = 0; j < C; ++j) {
        if (cs[k].type == ColType::f64) d.f.push_back(j < o.C ? s.f[r * o.C + j] : kNaN);
        else d.i.push_back(j < o.C ? s.i[r * o.C + j] : -1);
      }
  }
}

RowBlock RowBlock::from_batch(const Batch& b, const std::vector<TrialResult>& res) {
  if (res.size() != b.ids.size())
    throw std::runtime_error("backend returned " + std::to_string(res.size()) + " results for a batch of " +
                             std::to_string(b.ids.size()));
  const auto& cs = store_columns();
  const auto& fields = metric_fields();
  int C = 0;
  for (const auto& r : res) {
    C = std::max(C, static_cast<int>(r.checkpoint_steps.size()));
    for (const auto& c : cs)
      if (c.curve && c.name != "step") C = std::max(C, static_cast<int>(curve_field(r, c.name.substr(6))->size()));
  }
  RowBlock out = empty(C);
  size_t n = res.size();
  out.trial = b.ids;
  for (size_t k = 0; k < cs.size(); ++k) {
    auto& d = out.cols[k];
    if (cs[k].curve) {
      if (cs[k].type == ColType::i64) d.i.assign(n * C, -1);
      else d.f.assign(n * C, kNaN);
    }
  }
  for (size_t r = 0; r < n; ++r) {
    const TrialResult& t = res[r];
    if (t.trial >= 0 && t.trial != b.ids[r])
      throw std::runtime_error("backend returned result of trial " + std::to_string(t.trial) + " for trial " +
                               std::to_string(b.ids[r]));
    auto pv = flatten(b.trials[r]);
    size_t p = 0;
    for (size_t k = 0; k < cs.size(); ++k) {
      const Column& c = cs[k];
      auto& d = out.cols[k];
      if (is_param_column(c)) {
        const ParamValue& v = pv.at(p++);
        if (c.type == ColType::str) {
          if (auto* s = std::get_if<std::string>(&v)) d.s.push_back(*s);
          else if (auto* i = std::get_if<int64_t>(&v)) d.s.push_back(std::to_string(*i));
          else d.s.push_back(json(std::get<double>(v)).dump());
        } else if (c.type == ColType::f64) {
          if (auto* x = std::get_if<double>(&v)) d.f.push_back(*x);
          else if (auto* i = std::get_if<int64_t>(&v)) d.f.push_back(static_cast<double>(*i));
          else throw std::logic_error("parameter " + c.name + " is text, expected a number");
        } else {
          if (auto* i = std::get_if<int64_t>(&v)) d.i.push_back(*i);
          else if (auto* x = std::get_if<double>(&v)) d.i.push_back(static_cast<int64_t>(*x));
          else throw std::logic_error("parameter " + c.name + " is text, expected an integer");
        }
      } else if (c.name == "status") {
        d.i.push_back(static_cast<int64_t>(t.status));
      } else if (c.curve && t.status == Status::failed) {
        // the fill values set above (NaN, step -1), as for every metric below
      } else if (c.name == "step") {
        for (size_t j = 0; j < t.checkpoint_steps.size(); ++j) d.i[r * C + j] = t.checkpoint_steps[j];
      } else if (c.curve) {
        const auto* v = curve_field(t, c.name.substr(6));
        for (size_t j = 0; j < v->size(); ++j) d.f[r * C + j] = (*v)[j];
      } else if (t.status == Status::failed) {
        // A failed trial measured nothing: the fill values of a row not run yet
        // (NaN, -1), not the result's zeros, which read as a perfect result
        // (until session 13: test_risk 0, zero_loss 0).
        if (c.type == ColType::f64) d.f.push_back(fill_f64(c));
        else d.i.push_back(fill_int(c));
      } else {
        const MetricField& f = fields.at(c.name);
        if (f.type == ColType::f64) d.f.push_back(f.f(t));
        else d.i.push_back(f.i(t));
      }
    }
    if (p != pv.size()) throw std::logic_error("flatten() and param_specs() disagree in length");
  }
  return out;
}

// --- header ------------------------------------------------------------------------
int64_t FileHeader::rows() const {
  int64_t n = 0;
  for (const auto& r : ranges) n += static_cast<int64_t>(r.end - r.begin);
  return n;
}
namespace {
std::string join_unique(const std::vector<Session>& ss, std::string Session::*m) {
  std::vector<std::string> seen;
  for (const auto& s : ss)
    if (!(s.*m).empty() && std::find(seen.begin(), seen.end(), s.*m) == seen.end()) seen.push_back(s.*m);
  std::string out;
  for (const auto& s : seen) out += (out.empty() ? "" : ",") + s;
  return out;
}
json sessions_json(const std::vector<Session>& ss) {
  json a = json::array();
  for (const auto& s : ss)
    a.push_back({{"start_time", s.start_time}, {"end_time", s.end_time}, {"backend", s.backend},
                 {"device", s.device}, {"host", s.host}, {"precision", s.precision},
                 {"engine_version", s.engine_version}, {"git_commit", s.git_commit},
                 {"wall_seconds", s.wall_seconds}, {"compute_seconds", s.compute_seconds},
                 {"store_seconds", s.store_seconds}, {"store_exposed_seconds", s.store_exposed_seconds},
                 {"trials", s.trials}, {"id", s.id}});
  return a;
}
std::vector<Session> sessions_from(const std::string& text) {
  std::vector<Session> out;
  if (text.empty()) return out;
  json a = json::parse(text, nullptr, false);
  if (!a.is_array()) return out;
  for (const auto& j : a) {
    Session s;
    s.start_time = j.value("start_time", "");
    s.end_time = j.value("end_time", "");
    s.backend = j.value("backend", "");
    s.device = j.value("device", "");
    s.host = j.value("host", "");
    s.precision = j.value("precision", "");
    s.engine_version = j.value("engine_version", "");
    s.git_commit = j.value("git_commit", "");
    s.wall_seconds = j.value("wall_seconds", 0.0);
    s.compute_seconds = j.value("compute_seconds", 0.0);
    s.store_seconds = j.value("store_seconds", 0.0);  // absent in files of earlier versions
    s.store_exposed_seconds = j.value("store_exposed_seconds", 0.0);
    s.trials = j.value("trials", int64_t{0});
    s.id = j.value("id", "");  // absent before session 15
    out.push_back(s);
  }
  return out;
}
}  // namespace
std::string FileHeader::ids_text() const {
  std::string t;
  for (const auto& r : ranges)
    if (r.end > r.begin)
      t += (t.empty() ? "" : ", ") + std::to_string(r.begin) + ".." + std::to_string(r.end - 1);
  return t.empty() ? "none" : t;
}
std::string FileHeader::backends() const { return join_unique(sessions, &Session::backend); }
std::string FileHeader::devices() const { return join_unique(sessions, &Session::device); }
std::string FileHeader::hosts() const { return join_unique(sessions, &Session::host); }
std::string FileHeader::precisions() const { return join_unique(sessions, &Session::precision); }
std::string FileHeader::start_time() const { return sessions.empty() ? "" : sessions.front().start_time; }
std::string FileHeader::end_time() const { return sessions.empty() ? "" : sessions.back().end_time; }
namespace {
double sum_over(const std::vector<Session>& ss, double Session::*m) {
  double s = 0;
  for (const auto& x : ss) s += x.*m;
  return s;
}
}  // namespace
double FileHeader::wall_seconds() const { return sum_over(sessions, &Session::wall_seconds); }
double FileHeader::compute_seconds() const { return sum_over(sessions, &Session::compute_seconds); }
double FileHeader::store_seconds() const { return sum_over(sessions, &Session::store_seconds); }
double FileHeader::store_exposed_seconds() const { return sum_over(sessions, &Session::store_exposed_seconds); }

// --- H5Results ----------------------------------------------------------------------
struct H5Results::Impl {
  Hid file, trial_ds, ckpt_ds;
  std::vector<Hid> ds;  // per store_columns()
  bool writable = false;

  // Transfer property list with our own type-conversion buffers. By default
  // HDF5 callocs a fresh 1 MiB buffer for every H5Dwrite/H5Dread that converts
  // (the string columns): on the 512-row standard CPU grid that zeroing and
  // its page faults were most of the final checkpoint's time.
  hid_t xfer() const {
    if (!dxpl_.valid()) {
      tconv_.assign(kXferBuffer, 0);
      bkg_.assign(kXferBuffer, 0);
      dxpl_ = Hid(check(H5Pcreate(H5P_DATASET_XFER), "transfer property list"));
      check(H5Pset_buffer(dxpl_, kXferBuffer, tconv_.data(), bkg_.data()), "setting the transfer buffer of", "a results file");
    }
    return dxpl_;
  }

 private:
  static constexpr size_t kXferBuffer = 1 << 20;
  mutable Hid dxpl_;
  mutable std::vector<unsigned char> tconv_, bkg_;
};

H5Results::~H5Results() {
  if (impl_) {
    try { close(); } catch (...) {}
  }
}
H5Results::H5Results(H5Results&&) noexcept = default;
H5Results& H5Results::operator=(H5Results&&) noexcept = default;

int64_t H5Results::row_of(int64_t id) const {
  int64_t base = 0;
  for (const auto& r : h_.ranges) {
    if (id >= static_cast<int64_t>(r.begin) && id < static_cast<int64_t>(r.end))
      return base + id - static_cast<int64_t>(r.begin);
    base += static_cast<int64_t>(r.end - r.begin);
  }
  return -1;
}

H5Results H5Results::create(const std::string& path, const FileHeader& h, int curve_chunk) {
  h5_quiet();
  H5Results out;
  out.impl_ = std::make_unique<Impl>();
  out.h_ = h;
  out.path_ = path;
  out.impl_->writable = true;
  Impl& im = *out.impl_;
  im.file = check(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), "cannot create " + path);
  const hsize_t N = static_cast<hsize_t>(h.rows());
  const hsize_t rchunk = std::max<hsize_t>(1, std::min<hsize_t>(N, kRowChunk));
  const hsize_t cchunk = static_cast<hsize_t>(std::clamp(curve_chunk, 1, 1024));
  const hsize_t crchunk = std::max<hsize_t>(1, std::min<hsize_t>(std::max<hsize_t>(N, 1), kCurveChunkValues / cchunk));

  auto make_dcpl = [&](int rank, const hsize_t* chunk, bool text = false) {
    Hid p = check(H5Pcreate(H5P_DATASET_CREATE), "property list");
    check(H5Pset_chunk(p, rank, chunk), "chunking", path);
    check(H5Pset_shuffle(p), "shuffle", path);
    check(H5Pset_deflate(p, 1), "deflate", path);
    // A checksum per chunk: a bit flipped on disk (bit rot, a bad copy) fails the
    // read instead of reading as a plausible number (h5py and xarray check it
    // too). HDF5 refuses it on variable-length text, whose chunks hold heap ids.
    if (!text) check(H5Pset_fletcher32(p), "checksums", path);
    return p;
  };
  // trial: the row coordinate (ids), a dimension scale.
  {
    Hid sp = check(H5Screate_simple(1, &N, nullptr), "dataspace");
    Hid p = make_dcpl(1, &rchunk);
    im.trial_ds = check(H5Dcreate2(im.file, "trial", H5T_STD_I64LE, sp, H5P_DEFAULT, p, H5P_DEFAULT),
                        "cannot create dataset trial in " + path);
    // Ids in blocks: memory independent of the number of rows.
    std::vector<int64_t> ids;
    hsize_t row = 0;
    for (const auto& r : h.ranges) {
      for (uint64_t id = r.begin; id < r.end;) {
        uint64_t n = std::min<uint64_t>(r.end - id, 1 << 16);
        ids.resize(n);
        for (uint64_t j = 0; j < n; ++j) ids[j] = static_cast<int64_t>(id + j);
        Hid fs = check(H5Dget_space(im.trial_ds), "dataspace");
        hsize_t cnt = n;
        H5Sselect_hyperslab(fs, H5S_SELECT_SET, &row, nullptr, &cnt, nullptr);
        Hid ms = check(H5Screate_simple(1, &cnt, nullptr), "dataspace");
        check(H5Dwrite(im.trial_ds, H5T_NATIVE_INT64, ms, fs, im.xfer(), ids.data()), "writing trial ids to", path);
        row += n;
        id += n;
      }
    }
    check(H5DSset_scale(im.trial_ds, "trial"), "dimension scale trial in", path);
    attr_str(im.trial_ds, "long_name", "trial id (its index in the sweep; stsweep list shows its parameters)");
  }
  // checkpoint: the curve coordinate 0..C-1, extended as curves widen.
  {
    hsize_t zero = 0, unl = H5S_UNLIMITED;
    Hid sp = check(H5Screate_simple(1, &zero, &unl), "dataspace");
    Hid p = make_dcpl(1, &cchunk);
    im.ckpt_ds = check(H5Dcreate2(im.file, "checkpoint", H5T_STD_I64LE, sp, H5P_DEFAULT, p, H5P_DEFAULT),
                       "cannot create dataset checkpoint in " + path);
    check(H5DSset_scale(im.ckpt_ds, "checkpoint"), "dimension scale checkpoint in", path);
    attr_str(im.ckpt_ds, "long_name", "checkpoint index (the training step of each is in `step`)");
  }
  Hid strtype = vl_string_type();
  for (const auto& c : store_columns()) {
    Hid p;
    Hid sp;
    if (c.curve) {
      hsize_t dims[2] = {N, 0}, maxd[2] = {N, H5S_UNLIMITED}, ch[2] = {crchunk, cchunk};
      sp = check(H5Screate_simple(2, dims, maxd), "dataspace");
      p = make_dcpl(2, ch);
    } else {
      sp = check(H5Screate_simple(1, &N, nullptr), "dataspace");
      p = make_dcpl(1, &rchunk, c.type == ColType::str);
    }
    hid_t ft = c.type == ColType::str ? strtype.get() : file_type(c.type);
    if (c.type == ColType::f64) {
      double f = fill_f64(c);
      check(H5Pset_fill_value(p, H5T_NATIVE_DOUBLE, &f), "fill value", c.name);
    } else if (c.type != ColType::str) {
      int64_t f = fill_int(c);
      check(H5Pset_fill_value(p, H5T_NATIVE_INT64, &f), "fill value", c.name);
    }
    Hid d = check(H5Dcreate2(im.file, c.name.c_str(), ft, sp, H5P_DEFAULT, p, H5P_DEFAULT),
                  "cannot create dataset " + c.name + " in " + path);
    check(H5DSattach_scale(d, im.trial_ds, 0), "attaching trial to", c.name);
    if (c.curve) check(H5DSattach_scale(d, im.ckpt_ds, 1), "attaching checkpoint to", c.name);
    attr_str(d, "long_name", c.doc);
    if (!c.key.empty()) attr_str(d, "sweep_key", c.key);
    if (c.name == "status") {
      attr_num<int8_t>(d, "flag_values", H5T_STD_I8LE, H5T_NATIVE_INT8, {0, 1, 2, 3}, false);
      attr_str(d, "flag_meanings", "pending done diverged failed");
    }
    if (int_column_has_missing(c)) {  // in the column's own type, as CF asks
      if (c.type == ColType::i8) attr_num<int8_t>(d, "missing_value", H5T_STD_I8LE, H5T_NATIVE_INT8, {-1}, true);
      else attr_i64(d, "missing_value", -1);
    }
    if (c.curve && c.name != "step") attr_str(d, "coordinates", "step");
    im.ds.push_back(std::move(d));
  }
  out.write_header();
  return out;
}

H5Results H5Results::open(const std::string& path, bool writable) {
  h5_quiet();
  H5Results out;
  out.impl_ = std::make_unique<Impl>();
  out.path_ = path;
  out.impl_->writable = writable;
  Impl& im = *out.impl_;
  // What the file is before HDF5 opens it: a directory, a FIFO (HDF5 would
  // block on it forever) or an unreadable file each get their own message.
  {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0)
      throw InputError("", path + ": " + (errno == ENOENT ? std::string("no such file") : std::strerror(errno)));
    if (S_ISDIR(st.st_mode)) throw InputError("", path + ": is a directory, not a results file");
    if (!S_ISREG(st.st_mode)) throw InputError("", path + ": not a regular file (a pipe or a device?)");
    if (::access(path.c_str(), writable ? R_OK | W_OK : R_OK) != 0)
      throw InputError("", path + ": " + std::strerror(errno));
    // H5Fis_hdf5 says "not HDF5" for any failure, "Too many open files" too.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::runtime_error("cannot open " + path + ": " + std::strerror(errno));
    ::close(fd);
  }
  if (H5Fis_hdf5(path.c_str()) <= 0) {
    H5Eclear2(H5E_DEFAULT);
    throw InputError("", path + ": not an HDF5 file");
  }
  im.file = Hid(H5Fopen(path.c_str(), writable ? H5F_ACC_RDWR : H5F_ACC_RDONLY, H5P_DEFAULT));
  if (!im.file.valid()) {
    const std::string d = h5_detail();
    if (d.find("unable to lock") != std::string::npos || d.find("Resource temporarily unavailable") != std::string::npos)
      throw std::runtime_error("cannot open " + path + ": another program has it open for writing (" + d +
                               "; HDF5 locks files it writes: close it there, e.g. h5py's File in 'r+' or 'a' mode)");
    throw InputError("", path + ": damaged or truncated HDF5 file (" + d + ")");
  }
  try {
    out.read_and_check_structure();
  } catch (const InputError&) {
    throw;
  } catch (const std::exception& e) {  // an attribute or dataset HDF5 cannot read as ours: a damaged file
    throw InputError("", path + ": damaged results file: " + e.what());
  }
  return out;
}

// The header, the datasets and their agreement (a file edited with h5py, or
// damaged, could otherwise be read past a dataset's end or with another
// type: session 14's robustness review read 1e238 means from a shortened
// column). Each failure is an InputError that names the dataset or attribute.
void H5Results::read_and_check_structure() {
  Impl& im = *impl_;
  const std::string& path = path_;
  FileHeader& h = h_;
  if (H5Aexists(im.file, "format") <= 0)
    throw InputError("", path + ": not a stsweep results file (no `format` attribute)");
  h.format = read_attr_str(im.file, "format");
  if (h.format.rfind("stsweep-results", 0) != 0)
    throw InputError("", path + ": not a stsweep results file (its format is \"" + h.format + "\"" +
                             (h.format.rfind("stsweep-trial", 0) == 0 ? ": a trial export" : "") + ")");
  if (h.format != FileHeader{}.format)
    throw InputError("", path + ": format \"" + h.format + "\", this engine reads \"" + FileHeader{}.format + "\"");
  h.schema = read_attr_str(im.file, "schema");
  h.sweep_json = read_attr_str(im.file, "sweep_json");
  h.sweep_hash = read_attr_str(im.file, "sweep_hash");
  h.sweep_name = read_attr_str(im.file, "sweep_name");
  h.sweep_seed = static_cast<uint64_t>(read_attr_i64(im.file, "sweep_seed"));
  h.sweep_trials = read_attr_i64(im.file, "sweep_trials");
  h.shard = read_attr_str(im.file, "shard");
  auto rr = read_attr_i64s(im.file, "trial_ranges");
  if (h.sweep_trials < 0) throw InputError("", path + ": attribute sweep_trials is negative");
  if (rr.size() % 2 != 0)
    throw InputError("", path + ": attribute trial_ranges has " + std::to_string(rr.size()) +
                             " values, not [begin, end) pairs");
  for (size_t i = 0; i < rr.size(); i += 2) {
    const int64_t lo = i ? rr[i - 1] : 0;
    if (rr[i] < lo || rr[i + 1] < rr[i] || rr[i + 1] > h.sweep_trials)  // [b, b): a shard with no trials
      throw InputError("", path + ": attribute trial_ranges: [" + std::to_string(rr[i]) + ", " +
                               std::to_string(rr[i + 1]) + ") is not an increasing range of trial ids of the " +
                               std::to_string(h.sweep_trials) + "-trial sweep");
    h.ranges.push_back({static_cast<uint64_t>(rr[i]), static_cast<uint64_t>(rr[i + 1])});
  }
  h.file_id = read_attr_str(im.file, "file_id");
  h.generation = read_attr_i64(im.file, "generation");
  h.sessions = sessions_from(read_attr_str(im.file, "sessions"));
  if (has_attr(im.file, "checkpoint_seconds")) {
    double cs = 0;
    Hid a = check(H5Aopen(im.file, "checkpoint_seconds", H5P_DEFAULT), "attribute checkpoint_seconds");
    if (H5Aread(a, H5T_NATIVE_DOUBLE, &cs) >= 0 && std::isfinite(cs) && cs >= 0) h.checkpoint_seconds = cs;
  }
  h.n_pending = read_attr_i64(im.file, "n_pending");
  h.n_done = read_attr_i64(im.file, "n_done");
  h.n_diverged = read_attr_i64(im.file, "n_diverged");
  h.n_failed = read_attr_i64(im.file, "n_failed");
  if (h.schema != store_schema_digest())
    throw InputError("", path + ": written by an engine with different columns (schema " + h.schema +
                             ", this engine " + store_schema_digest() + ")");
  const auto open_ds = [&](const std::string& name) {
    Hid d(H5Dopen2(im.file, name.c_str(), H5P_DEFAULT));
    if (!d.valid()) {
      H5Eclear2(H5E_DEFAULT);
      throw InputError("", path + ": missing dataset " + name);
    }
    return d;
  };
  // Rank and extent of a dataset (dims[0] rows, dims[1] checkpoints).
  const auto extent = [&](hid_t d, const std::string& name, int rank, hsize_t* dims) {
    Hid sp = check(H5Dget_space(d), "dataspace of " + name);
    if (H5Sget_simple_extent_ndims(sp) != rank)
      throw InputError("", path + ": dataset " + name + " has " + std::to_string(H5Sget_simple_extent_ndims(sp)) +
                               " dimensions, expected " + std::to_string(rank));
    H5Sget_simple_extent_dims(sp, dims, nullptr);
  };
  // The stored type is the one this engine writes (a float64 column stored as
  // another float would be converted without a word).
  const auto type_is = [&](hid_t d, const std::string& name, ColType t) {
    Hid ft = check(H5Dget_type(d), "type of " + name);
    bool ok;
    if (t == ColType::str)
      ok = H5Tget_class(ft) == H5T_STRING;
    else
      ok = H5Tequal(ft, file_type(t)) > 0;
    if (!ok) {
      const char* want = t == ColType::str ? "text" : t == ColType::f64 ? "IEEE float64, little-endian"
                         : t == ColType::i64 ? "int64, little-endian" : "int8";
      throw InputError("", path + ": dataset " + name + " is not stored as " + want);
    }
  };
  const hsize_t rows = static_cast<hsize_t>(h.rows());
  hsize_t dims[2] = {0, 0};
  im.trial_ds = open_ds("trial");
  im.ckpt_ds = open_ds("checkpoint");
  extent(im.ckpt_ds, "checkpoint", 1, dims);
  const hsize_t C = dims[0];
  C_ = static_cast<int>(C);
  type_is(im.trial_ds, "trial", ColType::i64);
  extent(im.trial_ds, "trial", 1, dims);
  if (dims[0] != rows)
    throw InputError("", path + ": dataset trial has " + std::to_string(dims[0]) + " rows, trial_ranges holds " +
                             std::to_string(rows) + " trials");
  for (const auto& c : store_columns()) {
    Hid d = open_ds(c.name);
    type_is(d, c.name, c.type);
    extent(d, c.name, c.curve ? 2 : 1, dims);
    if (dims[0] != rows || (c.curve && dims[1] != C))
      throw InputError("", path + ": dataset " + c.name + " has " + std::to_string(dims[0]) + " rows" +
                               (c.curve ? " x " + std::to_string(dims[1]) : std::string()) + ", the file holds " +
                               std::to_string(rows) + " trials" +
                               (c.curve ? " x " + std::to_string(C) + " checkpoints" : std::string()));
    im.ds.push_back(std::move(d));
  }
  // The trial ids are those of trial_ranges, in order (row_of maps ids to rows
  // by the ranges alone), read in blocks.
  int64_t row = 0;
  std::vector<int64_t> ids;
  for (const auto& r : h.ranges) {
    for (uint64_t id = r.begin; id < r.end;) {
      const hsize_t n = std::min<uint64_t>(r.end - id, 1 << 16);
      ids.resize(n);
      Hid fs = check(H5Dget_space(im.trial_ds), "dataspace of trial");
      const hsize_t start = static_cast<hsize_t>(row);
      H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, nullptr, &n, nullptr);
      Hid ms = check(H5Screate_simple(1, &n, nullptr), "dataspace");
      check(H5Dread(im.trial_ds, H5T_NATIVE_INT64, ms, fs, H5P_DEFAULT, ids.data()), "reading trial ids of", path);
      for (hsize_t j = 0; j < n; ++j)
        if (ids[j] != static_cast<int64_t>(id + j))
          throw InputError("", path + ": dataset trial holds id " + std::to_string(ids[j]) + " at row " +
                                   std::to_string(row + static_cast<int64_t>(j)) + ", trial_ranges says " +
                                   std::to_string(id + j));
      row += static_cast<int64_t>(n);
      id += n;
    }
  }
}

void H5Results::write_header() {
  hid_t f = impl_->file;
  attr_str(f, "format", h_.format);
  attr_str(f, "schema", store_schema_digest());
  attr_str(f, "sweep_json", h_.sweep_json);
  attr_str(f, "sweep_hash", h_.sweep_hash);
  attr_str(f, "sweep_name", h_.sweep_name);
  attr_i64(f, "sweep_seed", static_cast<int64_t>(h_.sweep_seed));
  attr_i64(f, "sweep_trials", h_.sweep_trials);
  attr_str(f, "shard", h_.shard);
  std::vector<int64_t> rr;
  for (const auto& r : h_.ranges) {
    rr.push_back(static_cast<int64_t>(r.begin));
    rr.push_back(static_cast<int64_t>(r.end));
  }
  attr_num<int64_t>(f, "trial_ranges", H5T_STD_I64LE, H5T_NATIVE_INT64, rr, false);
  attr_str(f, "file_id", h_.file_id);
  attr_i64(f, "generation", h_.generation);
  attr_str(f, "engine_version", STSWEEP_VERSION);
  attr_str(f, "git_commit", STSWEEP_GIT_COMMIT);
  attr_str(f, "backend", h_.backends());
  attr_str(f, "device", h_.devices());
  attr_str(f, "host", h_.hosts());
  attr_str(f, "precision", h_.precisions());
  attr_str(f, "start_time", h_.start_time());
  attr_str(f, "end_time", h_.end_time());
  attr_f64(f, "wall_seconds", h_.wall_seconds());
  attr_f64(f, "compute_seconds", h_.compute_seconds());
  attr_str(f, "sessions", sessions_json(h_.sessions).dump());
  attr_f64(f, "checkpoint_seconds", h_.checkpoint_seconds);
  attr_i64(f, "n_pending", h_.n_pending);
  attr_i64(f, "n_done", h_.n_done);
  attr_i64(f, "n_diverged", h_.n_diverged);
  attr_i64(f, "n_failed", h_.n_failed);
  attr_i64(f, "complete", h_.complete() ? 1 : 0);
}

namespace {
// Union of hyperslabs over sorted rows (runs of consecutive rows), columns [0, ncols).
void select_rows(hid_t space, const std::vector<int64_t>& sorted_rows, hsize_t ncols, bool two_d) {
  H5Sselect_none(space);
  size_t i = 0;
  while (i < sorted_rows.size()) {
    size_t j = i + 1;
    while (j < sorted_rows.size() && sorted_rows[j] == sorted_rows[j - 1] + 1) ++j;
    hsize_t start[2] = {static_cast<hsize_t>(sorted_rows[i]), 0};
    hsize_t count[2] = {static_cast<hsize_t>(j - i), ncols};
    if (H5Sselect_hyperslab(space, H5S_SELECT_OR, start, nullptr, count, nullptr) < 0)
      h5_fail("selecting rows");
    (void)two_d;
    i = j;
  }
}
}  // namespace

void H5Results::write(const RowBlock& b) {
  if (!impl_ || !impl_->writable) throw std::logic_error("results file not open for writing");
  Impl& im = *impl_;
  const size_t n = b.rows();
  if (n == 0) return;
  const auto& cs = store_columns();
  // Sort rows: HDF5 writes the selection in file order.
  std::vector<int64_t> rowidx(n);
  for (size_t r = 0; r < n; ++r) {
    rowidx[r] = row_of(b.trial[r]);
    if (rowidx[r] < 0)
      throw std::runtime_error(path_ + " does not hold trial " + std::to_string(b.trial[r]));
  }
  std::vector<size_t> order(n);
  for (size_t r = 0; r < n; ++r) order[r] = r;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t c) { return rowidx[a] < rowidx[c]; });
  // A row written twice in one block: the later one wins.
  std::vector<size_t> keep;
  for (size_t k = 0; k < n; ++k) {
    if (k + 1 < n && rowidx[order[k]] == rowidx[order[k + 1]]) continue;
    keep.push_back(order[k]);
  }
  std::vector<int64_t> srows(keep.size());
  for (size_t k = 0; k < keep.size(); ++k) srows[k] = rowidx[keep[k]];
  const hsize_t m = keep.size();

  if (b.C > C_) {  // widen the curves and the checkpoint scale
    hsize_t newC = static_cast<hsize_t>(b.C);
    check(H5Dset_extent(im.ckpt_ds, &newC), "extending checkpoint in", path_);
    std::vector<int64_t> idx(newC - C_);
    for (size_t j = 0; j < idx.size(); ++j) idx[j] = C_ + static_cast<int64_t>(j);
    Hid fs = check(H5Dget_space(im.ckpt_ds), "dataspace");
    hsize_t start = C_, cnt = idx.size();
    H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, nullptr, &cnt, nullptr);
    Hid ms = check(H5Screate_simple(1, &cnt, nullptr), "dataspace");
    check(H5Dwrite(im.ckpt_ds, H5T_NATIVE_INT64, ms, fs, im.xfer(), idx.data()), "writing checkpoint in", path_);
    for (size_t k = 0; k < cs.size(); ++k) {
      if (!cs[k].curve) continue;
      hsize_t dims[2] = {static_cast<hsize_t>(rows()), newC};
      check(H5Dset_extent(im.ds[k], dims), "extending", cs[k].name);
    }
    C_ = b.C;
  }
  const hsize_t C = static_cast<hsize_t>(C_);

  Hid fs1 = check(H5Dget_space(im.trial_ds), "dataspace");
  select_rows(fs1, srows, 1, false);
  Hid ms1 = check(H5Screate_simple(1, &m, nullptr), "dataspace");
  Hid fs2, ms2;
  if (C > 0) {
    hsize_t dims[2] = {static_cast<hsize_t>(rows()), C};
    fs2 = check(H5Screate_simple(2, dims, nullptr), "dataspace");
    select_rows(fs2, srows, C, true);
    hsize_t mdims[2] = {m, C};
    ms2 = check(H5Screate_simple(2, mdims, nullptr), "dataspace");
  }
  Hid strtype = vl_string_type();
  std::vector<int8_t> i8;
  std::vector<int64_t> i64;
  std::vector<double> f64;
  std::vector<const char*> str;
  for (size_t k = 0; k < cs.size(); ++k) {
    const Column& c = cs[k];
    const auto& d = b.cols[k];
    hid_t ds = im.ds[k];
    herr_t rc = 0;
    if (c.curve) {
      if (C == 0) continue;
      const int bc = b.C;
      if (c.type == ColType::f64) {
        f64.assign(m * C, kNaN);
        for (size_t r = 0; r < m; ++r)
          for (int j = 0; j < bc; ++j) f64[r * C + j] = d.f[keep[r] * bc + j];
        rc = H5Dwrite(ds, H5T_NATIVE_DOUBLE, ms2, fs2, im.xfer(), f64.data());
      } else {
        i64.assign(m * C, -1);
        for (size_t r = 0; r < m; ++r)
          for (int j = 0; j < bc; ++j) i64[r * C + j] = d.i[keep[r] * bc + j];
        rc = H5Dwrite(ds, H5T_NATIVE_INT64, ms2, fs2, im.xfer(), i64.data());
      }
    } else if (c.type == ColType::str) {
      str.resize(m);
      for (size_t r = 0; r < m; ++r) str[r] = d.s[keep[r]].c_str();
      rc = H5Dwrite(ds, strtype, ms1, fs1, im.xfer(), str.data());
    } else if (c.type == ColType::f64) {
      f64.resize(m);
      for (size_t r = 0; r < m; ++r) f64[r] = d.f[keep[r]];
      rc = H5Dwrite(ds, H5T_NATIVE_DOUBLE, ms1, fs1, im.xfer(), f64.data());
    } else if (c.type == ColType::i8) {
      i8.resize(m);
      for (size_t r = 0; r < m; ++r) i8[r] = static_cast<int8_t>(d.i[keep[r]]);
      rc = H5Dwrite(ds, H5T_NATIVE_INT8, ms1, fs1, im.xfer(), i8.data());
    } else {
      i64.resize(m);
      for (size_t r = 0; r < m; ++r) i64[r] = d.i[keep[r]];
      rc = H5Dwrite(ds, H5T_NATIVE_INT64, ms1, fs1, im.xfer(), i64.data());
    }
    check(rc, ("writing " + c.name + " to").c_str(), path_);
  }
}

RowBlock H5Results::read(int64_t row0, int64_t n, const std::vector<int>& which) const {
  const Impl& im = *impl_;
  const auto& cs = store_columns();
  if (row0 < 0 || n < 0 || row0 + n > rows()) throw std::out_of_range("rows out of range in " + path_);
  RowBlock b = RowBlock::empty(C_);
  const hsize_t m = static_cast<hsize_t>(n), C = static_cast<hsize_t>(C_);
  b.trial.resize(m);
  if (m == 0) return b;
  hsize_t start[2] = {static_cast<hsize_t>(row0), 0}, count[2] = {m, C};
  Hid fs1 = check(H5Dget_space(im.trial_ds), "dataspace");
  H5Sselect_hyperslab(fs1, H5S_SELECT_SET, start, nullptr, count, nullptr);
  Hid ms1 = check(H5Screate_simple(1, &m, nullptr), "dataspace");
  check(H5Dread(im.trial_ds, H5T_NATIVE_INT64, ms1, fs1, im.xfer(), b.trial.data()), "reading trial from", path_);
  Hid fs2, ms2;
  if (C > 0) {
    hsize_t dims[2] = {static_cast<hsize_t>(rows()), C};
    fs2 = check(H5Screate_simple(2, dims, nullptr), "dataspace");
    H5Sselect_hyperslab(fs2, H5S_SELECT_SET, start, nullptr, count, nullptr);
    ms2 = check(H5Screate_simple(2, count, nullptr), "dataspace");
  }
  Hid strtype = vl_string_type();
  std::vector<int8_t> i8;
  for (size_t k = 0; k < cs.size(); ++k) {
    if (!which.empty() && std::find(which.begin(), which.end(), static_cast<int>(k)) == which.end()) continue;
    const Column& c = cs[k];
    auto& d = b.cols[k];
    hid_t ds = im.ds[k];
    herr_t rc = 0;
    if (c.curve) {
      if (C == 0) continue;
      if (c.type == ColType::f64) {
        d.f.resize(m * C);
        rc = H5Dread(ds, H5T_NATIVE_DOUBLE, ms2, fs2, im.xfer(), d.f.data());
      } else {
        d.i.resize(m * C);
        rc = H5Dread(ds, H5T_NATIVE_INT64, ms2, fs2, im.xfer(), d.i.data());
      }
    } else if (c.type == ColType::str) {
      std::vector<char*> p(m, nullptr);
      rc = H5Dread(ds, strtype, ms1, fs1, im.xfer(), p.data());
      if (rc >= 0) {
        d.s.resize(m);
        for (size_t r = 0; r < m; ++r) d.s[r] = p[r] ? p[r] : "";
        H5Dvlen_reclaim(strtype, ms1, H5P_DEFAULT, p.data());
      }
    } else if (c.type == ColType::f64) {
      d.f.resize(m);
      rc = H5Dread(ds, H5T_NATIVE_DOUBLE, ms1, fs1, im.xfer(), d.f.data());
    } else if (c.type == ColType::i8) {
      i8.resize(m);
      rc = H5Dread(ds, H5T_NATIVE_INT8, ms1, fs1, im.xfer(), i8.data());
      d.i.assign(i8.begin(), i8.end());
    } else {
      d.i.resize(m);
      rc = H5Dread(ds, H5T_NATIVE_INT64, ms1, fs1, im.xfer(), d.i.data());
    }
    if (rc < 0) {
      const std::string d = h5_detail();
      const std::string what = "reading " + c.name + " from " + path_ + " (" + d + ")";
      // A chunk whose checksum fails is a damaged file, bad input like the others.
      if (d.find("Fletcher32") != std::string::npos) throw InputError("", what + ": the file is damaged");
      throw std::runtime_error(what);
    }
  }
  return b;
}

std::vector<int8_t> H5Results::read_status(int64_t row0, int64_t n) const {
  const Impl& im = *impl_;
  std::vector<int8_t> out(static_cast<size_t>(n));
  if (n == 0) return out;
  hsize_t start = static_cast<hsize_t>(row0), cnt = static_cast<hsize_t>(n);
  hid_t ds = im.ds[store_column_index("status")];
  Hid fs = check(H5Dget_space(ds), "dataspace");
  H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, nullptr, &cnt, nullptr);
  Hid ms = check(H5Screate_simple(1, &cnt, nullptr), "dataspace");
  check(H5Dread(ds, H5T_NATIVE_INT8, ms, fs, im.xfer(), out.data()), "reading status from", path_);
  return out;
}

void H5Results::recount() {
  h_.n_pending = h_.n_done = h_.n_diverged = h_.n_failed = 0;
  const int64_t N = rows(), block = 1 << 20;
  for (int64_t r = 0; r < N; r += block) {
    for (int8_t s : read_status(r, std::min(block, N - r))) {
      switch (static_cast<Status>(s)) {
        case Status::done: ++h_.n_done; break;
        case Status::diverged: ++h_.n_diverged; break;
        case Status::failed: ++h_.n_failed; break;
        default: ++h_.n_pending; break;
      }
    }
  }
}

void H5Results::close() {
  if (!impl_) return;
  Impl& im = *impl_;
  // Closing a dataset flushes its chunks: a full disk can fail any of these.
  // Keep the first failure's detail before another HDF5 call clears the stack.
  bool failed = false;
  std::string detail;
  auto note = [&](herr_t rc) {
    if (rc < 0 && !failed) {
      failed = true;
      detail = h5_detail();
    }
  };
  for (auto& d : im.ds) note(d.reset());
  note(im.trial_ds.reset());
  note(im.ckpt_ds.reset());
  if (im.file.valid()) {
    if (im.writable) note(H5Fflush(im.file, H5F_SCOPE_GLOBAL));
    note(im.file.reset());
  }
  const bool writable = im.writable;
  impl_.reset();
  if (failed && writable) throw std::runtime_error("cannot finish writing " + path_ + " (" + detail + ")");
}

// --- journal ------------------------------------------------------------------------
namespace {
constexpr char kJournalMagic[8] = {'S', 'T', 'S', 'W', 'J', 'R', 'N', '1'};
constexpr uint32_t kRecordMagic = 0x52575354;  // "TSWR"

std::string encode_rows(const RowBlock& b, double compute_seconds) {
  if (b.C < 0 || b.C > kMaxCheckpoints)  // decode_rows would refuse the record
    throw std::logic_error("a results record with " + std::to_string(b.C) + " checkpoints (at most " +
                           std::to_string(kMaxCheckpoints) + ")");
  Bytes p;
  const auto& cs = store_columns();
  const uint64_t n = b.rows();
  p.put(compute_seconds);
  p.put(n);
  p.put(static_cast<int32_t>(b.C));
  p.put_n(b.trial.data(), n);
  for (size_t k = 0; k < cs.size(); ++k) {
    const auto& d = b.cols[k];
    const size_t len = cs[k].curve ? n * b.C : n;
    switch (cs[k].type) {
      case ColType::f64: p.put_n(d.f.data(), len); break;
      case ColType::i8:
      case ColType::i64: p.put_n(d.i.data(), len); break;
      case ColType::str:
        for (const auto& s : d.s) {
          p.put(static_cast<uint32_t>(s.size()));
          p.b.append(s);
        }
        break;
    }
  }
  Bytes rec;
  rec.put(kRecordMagic);
  rec.put(uint32_t{0});
  rec.put(static_cast<uint64_t>(p.b.size()));
  rec.put(checksum(p.b.data(), p.b.size()));
  rec.b += p.b;
  return rec.b;
}

RowBlock decode_rows(const std::string& payload, double* compute_seconds) {
  Reader rd{payload.data(), payload.data() + payload.size()};
  const auto& cs = store_columns();
  *compute_seconds = rd.get<double>();
  uint64_t n = rd.get<uint64_t>();
  int32_t C = rd.get<int32_t>();
  if (n > payload.size() || C < 0 || C > kMaxCheckpoints) throw std::runtime_error("bad record");
  RowBlock b = RowBlock::empty(C);
  rd.get_vec(b.trial, n);
  for (size_t k = 0; k < cs.size(); ++k) {
    auto& d = b.cols[k];
    const size_t len = cs[k].curve ? n * C : n;
    switch (cs[k].type) {
      case ColType::f64: rd.get_vec(d.f, len); break;
      case ColType::i8:
      case ColType::i64: rd.get_vec(d.i, len); break;
      case ColType::str:
        rd.need<uint32_t>(n);  // a length per string at least
        d.s.resize(n);
        for (auto& s : d.s) {
          uint32_t l = rd.get<uint32_t>();
          if (l > static_cast<size_t>(rd.end - rd.p)) throw std::runtime_error("bad record");
          s.assign(rd.p, l);
          rd.p += l;
        }
        break;
    }
  }
  return b;
}

struct JournalHeader {
  std::string file_id, sweep_hash, schema;
  int64_t generation = -1;
  // The session appending to it (sessions_json form; null in journals before
  // session 15): a session stopped or killed before its first checkpoint is
  // in no file, and --resume records it from here.
  json session;
};
std::string encode_journal_header(const JournalHeader& h) {
  json j = {{"file_id", h.file_id}, {"sweep_hash", h.sweep_hash}, {"schema", h.schema},
            {"generation", h.generation}};
  if (h.session.is_object()) j["session"] = h.session;
  std::string t = j.dump();
  Bytes b;
  b.put_n(kJournalMagic, 8);
  b.put(static_cast<uint32_t>(t.size()));
  b.b += t;
  b.put(checksum(t.data(), t.size()));
  return b.b;
}

// Reads a journal sequentially: header, then records until the first torn or
// corrupt one. `on_record` gets each valid record. A record whose checksum
// holds but which does not decode is not a torn write: `corrupt` says so, and
// whoever folds the journal must keep it rather than drop what follows.
struct JournalScan {
  bool valid_header = false;
  bool corrupt = false;
  JournalHeader header;
  int64_t records = 0, rows = 0;
  int64_t valid_bytes = 0, file_bytes = 0;
};
template <typename F>
JournalScan scan_journal(int fd, F&& on_record) {
  JournalScan s;
  struct stat st;
  if (::fstat(fd, &st) != 0) return s;
  s.file_bytes = st.st_size;
  auto pread_all = [&](char* p, size_t n, off_t off) {
    size_t got = 0;
    while (got < n) {
      ssize_t r = ::pread(fd, p + got, n - got, off + static_cast<off_t>(got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return false;
      got += static_cast<size_t>(r);
    }
    return true;
  };
  char magic[8];
  uint32_t hl = 0;
  if (!pread_all(magic, 8, 0) || std::memcmp(magic, kJournalMagic, 8) != 0) return s;
  if (!pread_all(reinterpret_cast<char*>(&hl), 4, 8) || hl > (1u << 20)) return s;
  std::string t(hl, '\0');
  uint64_t sum = 0;
  if (!pread_all(t.data(), hl, 12) || !pread_all(reinterpret_cast<char*>(&sum), 8, 12 + hl)) return s;
  if (sum != checksum(t.data(), t.size())) return s;
  json j = json::parse(t, nullptr, false);
  if (!j.is_object()) return s;
  s.header.file_id = j.value("file_id", "");
  s.header.sweep_hash = j.value("sweep_hash", "");
  s.header.schema = j.value("schema", "");
  s.header.generation = j.value("generation", int64_t{-1});
  if (j.contains("session") && j["session"].is_object()) s.header.session = j["session"];
  s.valid_header = true;
  off_t off = 12 + hl + 8;
  s.valid_bytes = off;
  while (true) {
    char head[24];
    if (!pread_all(head, 24, off)) break;
    uint32_t magic2;
    uint64_t len, sum2;
    std::memcpy(&magic2, head, 4);
    std::memcpy(&len, head + 8, 8);
    std::memcpy(&sum2, head + 16, 8);
    if (magic2 != kRecordMagic || len > static_cast<uint64_t>(s.file_bytes)) break;
    std::string payload(len, '\0');
    if (!pread_all(payload.data(), len, off + 24)) break;
    if (checksum(payload.data(), payload.size()) != sum2) break;
    double cs = 0;
    RowBlock b;
    try {
      b = decode_rows(payload, &cs);
    } catch (const std::exception&) {
      s.corrupt = true;
      break;
    }
    ++s.records;
    s.rows += static_cast<int64_t>(b.rows());
    on_record(b, cs);
    off += 24 + static_cast<off_t>(len);
    s.valid_bytes = off;
  }
  return s;
}

std::string journal_path(const std::string& out) { return out + ".journal"; }

}  // namespace

std::string resolve_link(const std::string& path) {
  std::string p = path;
  for (int hop = 0; hop < 40; ++hop) {  // 40: the kernel's own limit (ELOOP)
    struct stat st;
    if (::lstat(p.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return p;
    std::string target(static_cast<size_t>(st.st_size > 0 ? st.st_size : 4096) + 1, '\0');
    const ssize_t n = ::readlink(p.c_str(), target.data(), target.size());
    if (n < 0) return p;
    target.resize(static_cast<size_t>(n));
    p = !target.empty() && target[0] == '/' ? target : dir_of(p) + "/" + target;
  }
  throw InputError("", path + ": too many levels of symbolic links");
}
std::string journal_of(const std::string& path) { return journal_path(resolve_link(path)); }

void check_force_replaces(const std::string& path, const std::string& option) {
  h5_quiet();
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return;  // nothing, or check_output_path's case
  const htri_t h5 = H5Fis_hdf5(path.c_str());
  H5Eclear2(H5E_DEFAULT);
  if (h5 <= 0 && st.st_size > 0)
    throw InputError(option, path + " exists and is not an HDF5 file: --force replaces only results files "
                                    "(remove it yourself if you mean to)");
}

namespace {
std::string tmp_path(const std::string& out) { return out + ".tmp"; }

// Counts of statuses as final runs of ids: ids that need no run.
std::vector<IdRange> final_ranges(const H5Results& f) {
  std::vector<IdRange> out;
  const int64_t N = f.rows(), block = 1 << 20;
  // Rows map to ids range by range.
  int64_t row = 0;
  for (const auto& r : f.header().ranges) {
    for (uint64_t id0 = r.begin; id0 < r.end;) {
      int64_t n = std::min<int64_t>(block, static_cast<int64_t>(r.end - id0));
      auto st = f.read_status(row, n);
      for (int64_t j = 0; j < n; ++j) {
        auto s = static_cast<Status>(st[j]);
        if (s != Status::done && s != Status::diverged) continue;
        uint64_t id = id0 + j;
        if (!out.empty() && out.back().end == id) out.back().end = id + 1;
        else out.push_back({id, id + 1});
      }
      row += n;
      id0 += n;
    }
  }
  (void)N;
  return out;
}
}  // namespace

uint64_t journal_record_checksum(const char* p, size_t n) { return checksum(p, n); }

JournalSummary inspect_journal(const std::string& path) {
  JournalSummary out;
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return out;
  out.exists = true;
  auto s = scan_journal(fd, [](const RowBlock&, double) {});
  ::close(fd);
  out.valid_header = s.valid_header;
  out.corrupt = s.corrupt;
  out.file_id = s.header.file_id;
  out.generation = s.header.generation;
  out.records = s.records;
  out.rows = s.rows;
  out.torn_bytes = s.file_bytes - s.valid_bytes;
  return out;
}

// --- ResultsWriter ----------------------------------------------------------------------
struct ResultsWriter::Impl {
  WriterOptions opt;
  FileHeader h;  // as in OUT.h5 after the last checkpoint
  int fd = -1;   // the journal (locked)
  std::vector<IdRange> final;
  int64_t remaining = 0, resumed = 0;
  std::vector<std::string> notes;
  int curve_chunk = 32;
  // This session.
  std::chrono::steady_clock::time_point t0;
  size_t session = 0;  // index in h.sessions
  double compute = 0;
  double store = 0, store_exposed = 0;  // set_store_seconds
  int64_t trials = 0;
  int64_t journal_rows = 0;  // since the last checkpoint
  std::chrono::steady_clock::time_point last_ckpt;
  std::chrono::steady_clock::time_point last_sync{};  // of the journal (epoch: the first record syncs)
  double ckpt_seconds = 0;
  ResultsWriter::CheckpointHook hook;  // set_checkpoint_hook

  // A checkpoint of the running session, told to the hook before and after.
  void checkpoint_now() {
    const int64_t rows = journal_rows;
    if (hook) hook(true, rows, 0);
    const auto t = std::chrono::steady_clock::now();
    fold(true);
    if (hook) hook(false, rows, std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count());
  }

  // A journal whose finished rows this file will not use (another file's,
  // left when OUT.h5 was moved away, or a damaged one) is copied to
  // OUT.h5.journal.<its file_id> before reset_journal empties it: until
  // session 14 a new run at the old name emptied it without a word. Its rows
  // are whole results (parameters, metrics, curves).
  void keep_journal_aside(const JournalScan& js, const std::string& why) {
    if (js.file_bytes <= 0 || (js.valid_header && js.records == 0)) return;
    const std::string base = journal_path(opt.path) + "." + (js.valid_header ? js.header.file_id : "damaged");
    std::string to = base;
    for (int i = 1; exists(to); ++i) to = base + "." + std::to_string(i);
    copy_file(journal_path(opt.path), to);
    fsync_path(to, false);
    notes.push_back("kept " + journal_path(opt.path) + " (" +
                    (js.valid_header ? std::to_string(js.rows) + " finished trial rows of file " + js.header.file_id
                                     : std::string("a damaged header")) +
                    ", " + why + ") as " + to);
  }

  void reset_journal() {
    JournalHeader jh{h.file_id, h.sweep_hash, store_schema_digest(), h.generation, json()};
    if (session < h.sessions.size()) jh.session = sessions_json({h.sessions[session]})[0];
    std::string b = encode_journal_header(jh);
    if (::ftruncate(fd, 0) != 0)
      throw std::runtime_error("cannot truncate " + journal_path(opt.path) + ": " + errno_text(errno));
    if (::lseek(fd, 0, SEEK_SET) != 0)
      throw std::runtime_error("cannot seek " + journal_path(opt.path) + ": " + errno_text(errno));
    write_all(fd, b.data(), b.size(), journal_path(opt.path));
    if (::fdatasync(fd) != 0)
      throw std::runtime_error("cannot sync " + journal_path(opt.path) + ": " + errno_text(errno));
    journal_rows = 0;
  }

  void update_session() {
    if (session >= h.sessions.size()) return;
    Session& s = h.sessions[session];
    s.end_time = utc_now_iso();
    s.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    s.compute_seconds = compute;
    s.store_seconds = store;
    s.store_exposed_seconds = store_exposed;
    s.trials = trials;
  }

  // Copy OUT.h5, apply the journal's records, sync, rename over OUT.h5.
  // `extra_compute` receives the compute seconds of the records applied.
  void fold(bool count_into_session) {
    auto start = std::chrono::steady_clock::now();
    const std::string tmp = tmp_path(opt.path);
    ::unlink(tmp.c_str());
    try {
      copy_file(opt.path, tmp);
      H5Results f = H5Results::open(tmp, true);
      RowBlock buf = RowBlock::empty(0);
      double cs_sum = 0;
      int64_t nrows = 0;
      auto s = scan_journal(fd, [&](const RowBlock& b, double cs) {
        buf.append(b);
        cs_sum += cs;
        nrows += static_cast<int64_t>(b.rows());
        if (buf.rows() >= kWriteRows) {
          f.write(buf);
          buf = RowBlock::empty(0);
        }
      });
      if (s.valid_header && s.header.file_id != h.file_id)
        throw std::logic_error("journal belongs to another file");
      // Rows this session journaled but this fold could not read back are not
      // dropped: the journal stays as it is (reset_journal is not reached).
      // (Recovery at --resume keeps what reads and runs the rest again.)
      if (count_into_session && (s.corrupt || nrows != journal_rows))
        throw std::runtime_error(journal_path(opt.path) + ": " + std::to_string(nrows) + " of the " +
                                 std::to_string(journal_rows) + " rows journaled since the last checkpoint read back" +
                                 (s.corrupt ? " (a record does not decode)" : "") + "; the journal is kept as it is, " +
                                 opt.path + " holds the last checkpoint");
      f.write(buf);
      f.header() = h;
      f.header().generation = h.generation + 1;
      // What a --resume's stop limit starts from: this checkpoint's duration up
      // to here (the copy and the writes), or the last whole checkpoint's when
      // longer, standing for the close, sync and rename still to come (for a
      // big file they can be most of it).
      f.header().checkpoint_seconds =
          std::max(ckpt_seconds, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      if (!count_into_session) recover_session(f.header().sessions, s.header.session, cs_sum, nrows);
      if (count_into_session) {
        h.sessions = f.header().sessions;
        update_session();
        f.header().sessions = h.sessions;
      }
      f.recount();
      f.write_header();
      FileHeader nh = f.header();
      f.close();
      fsync_path(tmp, false);
      if (::rename(tmp.c_str(), opt.path.c_str()) != 0)
        throw std::runtime_error("cannot rename " + tmp + " to " + opt.path + ": " + errno_text(errno));
      fsync_path(dir_of(opt.path), true);
      h = nh;
    } catch (...) {
      ::unlink(tmp.c_str());
      throw;
    }
    reset_journal();
    last_ckpt = std::chrono::steady_clock::now();
    ckpt_seconds = std::chrono::duration<double>(last_ckpt - start).count();
  }

  // The records of a session that stopped or crashed, folded in by --resume:
  // they go to the session the journal names. One the file has (it made a
  // checkpoint) gets them added; one it has not (stopped or killed before its
  // first checkpoint) is added, ending when the journal was last written.
  // Journals before session 15 name none: the file's last session gets them.
  void recover_session(std::vector<Session>& ss, const json& jsession, double cs_sum, int64_t nrows) {
    const std::string id = jsession.is_object() ? jsession.value("id", "") : "";
    auto it = std::find_if(ss.begin(), ss.end(), [&](const Session& x) { return !id.empty() && x.id == id; });
    if (it == ss.end() && !id.empty()) {
      ss.push_back(sessions_from(json::array({jsession}).dump()).at(0));
      it = ss.end() - 1;
      it->compute_seconds = it->trials = 0;  // as of its start; the records below are its work
    } else if (it == ss.end()) {
      if (ss.empty()) return;
      it = ss.end() - 1;
    }
    it->compute_seconds += cs_sum;
    it->trials += nrows;
    // It ran at least until its last record: the journal's last write.
    struct stat st;
    if (id.empty() || ::fstat(fd, &st) != 0) return;
    const std::time_t mt = st.st_mtime;
    const std::string last = utc_iso(mt);
    if (it->end_time < last) it->end_time = last;  // ISO 8601 UTC orders as text
    if (it->end_time < it->start_time) it->end_time = it->start_time;  // a file server's clock behind ours
    std::tm t0{};
    if (::strptime(it->start_time.c_str(), "%Y-%m-%dT%H:%M:%SZ", &t0))
      it->wall_seconds = std::max(it->wall_seconds, std::difftime(mt, ::timegm(&t0)));
  }

};

void check_output_path(const std::string& path, const std::string& option) {
  if (path.empty()) throw InputError(option, "no output file given");
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode))
      throw InputError(option, path + " is a directory; give a file name such as " + path + "/results.h5");
    // A device, FIFO or socket: --force would rename a new file over it (as
    // root, -o /dev/null --force would replace the system's /dev/null).
    if (!S_ISREG(st.st_mode))
      throw InputError(option, path + " exists and is not a regular file; give the name of a results file");
  }
  std::string dir = dir_of(path);
  if (::stat(dir.c_str(), &st) != 0)
    throw InputError(option, "directory " + dir + " does not exist (" + errno_text(errno) + ")");
  if (!S_ISDIR(st.st_mode)) throw InputError(option, dir + " is not a directory");
  if (::access(dir.c_str(), W_OK) != 0)
    throw InputError(option, "directory " + dir + " is not writable (" + errno_text(errno) + ")");
}

std::unique_ptr<ResultsWriter> ResultsWriter::start(const Sweep& sweep, const WriterOptions& opt_given) {
  h5_quiet();
  WriterOptions opt = opt_given;
  opt.path = resolve_link(opt.path);  // through a link: the target's journal, lock and file
  check_output_path(opt.path);
  const std::string jpath = journal_path(opt.path);
  const bool have = exists(opt.path);
  if (have && !opt.resume && !opt.force)
    throw InputError("-o", opt.path + " exists: continue it with --resume, or overwrite it with --force");
  if (have && !opt.resume) check_force_replaces(opt.path, "-o");

  auto w = std::unique_ptr<ResultsWriter>(new ResultsWriter);
  w->impl_ = std::make_unique<Impl>();
  Impl& im = *w->impl_;
  im.opt = opt;
  im.t0 = im.last_ckpt = std::chrono::steady_clock::now();
  bool created_journal = !exists(jpath);
  im.fd = ::open(jpath.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (im.fd < 0) throw InputError("-o", "cannot create " + jpath + ": " + errno_text(errno));
  if (::flock(im.fd, LOCK_EX | LOCK_NB) != 0)
    throw std::runtime_error("another stsweep process is writing " + opt.path + " (it holds the lock on " +
                             jpath + ")");
  ::unlink(tmp_path(opt.path).c_str());  // a crashed checkpoint's leftover

  Session me;
  me.id = random_id();
  me.start_time = utc_now_iso();
  me.backend = opt.backend;
  me.device = opt.device;
  me.host = host_name();
  me.precision = opt.precision;
  me.engine_version = STSWEEP_VERSION;
  me.git_commit = STSWEEP_GIT_COMMIT;

  const bool fresh = !have || !opt.resume;
  try {
    if (fresh) {
      if (have && opt.force) im.notes.push_back("overwriting " + opt.path + " (--force)");
      if (!have && opt.resume) im.notes.push_back(opt.path + " does not exist yet: starting a new run");
      FileHeader h;
      h.schema = store_schema_digest();
      h.sweep_json = sweep.text();
      h.sweep_hash = sweep.hash();
      h.sweep_name = sweep.name();
      h.sweep_seed = sweep.seed();
      h.sweep_trials = static_cast<int64_t>(sweep.count());
      h.shard = opt.shard;
      h.ranges = {opt.range};
      h.file_id = random_id();
      h.generation = 0;
      h.n_pending = h.rows();
      h.sessions = {me};
      if (opt.range.end > opt.range.begin)
        im.curve_chunk = std::max(1, sweep.trial(opt.range.begin).checkpoints);  // a chunk-width hint only
      const std::string tmp = tmp_path(opt.path);
      try {
        H5Results f = H5Results::create(tmp, h, im.curve_chunk);
        f.close();
        fsync_path(tmp, false);
        if (::rename(tmp.c_str(), opt.path.c_str()) != 0)
          throw std::runtime_error("cannot rename " + tmp + " to " + opt.path + ": " + errno_text(errno));
        fsync_path(dir_of(opt.path), true);
      } catch (...) {
        ::unlink(tmp.c_str());
        throw;
      }
      im.h = h;
      im.session = 0;
      if (!created_journal)
        im.keep_journal_aside(scan_journal(im.fd, [](const RowBlock&, double) {}), "not this new file's");
      im.reset_journal();
      im.remaining = h.rows();
    } else {
      FileHeader h;
      {
        H5Results f = H5Results::open(opt.path, false);
        h = f.header();
      }
      if (h.sweep_hash != sweep.hash())
        throw InputError("--resume", opt.path + " holds sweep '" + h.sweep_name + "' (hash " + h.sweep_hash +
                                         "), but this sweep file has hash " + sweep.hash() +
                                         ": results of different sweeps cannot be mixed. Use another -o, or "
                                         "--force without --resume to overwrite it");
      if (h.shard != opt.shard)
        throw InputError("--shard", opt.path + " holds shard " + h.shard + ", not " + opt.shard +
                                        ": give the same --shard to resume it");
      std::string prec = h.precisions();
      if (!prec.empty() && prec != opt.precision) {
        if (!opt.force)
          throw InputError("--precision", opt.path + " was computed with --precision " + prec +
                                              "; resuming with " + opt.precision +
                                              " would mix precisions in one file (add --force to accept that)");
        im.notes.push_back("mixing precisions " + prec + " and " + opt.precision + " (--force)");
      }
      std::string be = h.backends();
      if (!be.empty() && be.find(opt.backend) == std::string::npos)
        im.notes.push_back("previous rows ran on " + be + ", the rest runs on " + opt.backend +
                           " (results agree to rounding, not bit for bit)");
      im.h = h;
      // Fold in what the journal holds (kept only if it belongs to this file and checkpoint).
      auto js = scan_journal(im.fd, [](const RowBlock&, double) {});
      bool usable = js.valid_header && js.header.file_id == h.file_id && js.header.generation == h.generation &&
                    js.header.schema == h.schema;
      if (js.file_bytes > 0 && !usable && !created_journal) {
        const bool older = js.valid_header && js.header.file_id == h.file_id && js.header.generation < h.generation;
        if (!older) im.keep_journal_aside(js, js.valid_header ? "another file's" : "its header does not read");
        im.notes.push_back(older ? std::string("ignored a journal of an earlier checkpoint (its rows are in the file)")
                                 : std::string("did not use the journal: it belongs to another file or its header "
                                               "is damaged"));
      }
      if (usable && js.records > 0) {
        im.fold(false);
        im.resumed = js.rows;
        im.notes.push_back("recovered " + std::to_string(js.rows) + " trial rows from " + jpath);
      }
      if (usable && js.corrupt)
        im.notes.push_back("dropped a journal record that checksums but does not decode, and what followed it (" +
                           std::to_string(js.file_bytes - js.valid_bytes) + " bytes): their trials run again");
      else if (usable && js.file_bytes > js.valid_bytes)
        im.notes.push_back("dropped an incomplete journal record (" + std::to_string(js.file_bytes - js.valid_bytes) +
                           " bytes): the batch in flight when the run stopped; it runs again");
      H5Results f = H5Results::open(opt.path, false);
      im.final = final_ranges(f);
      int64_t nfinal = 0;
      for (const auto& r : im.final) nfinal += static_cast<int64_t>(r.end - r.begin);
      im.remaining = f.rows() - nfinal;
      im.h = f.header();
      f.close();
      // No fold yet in this session: the file's last checkpoint says what one costs.
      if (im.ckpt_seconds == 0) im.ckpt_seconds = im.h.checkpoint_seconds;
      im.h.sessions.push_back(me);
      im.session = im.h.sessions.size() - 1;
      im.reset_journal();
    }
  } catch (...) {
    if (created_journal) ::unlink(jpath.c_str());
    throw;
  }
  return w;
}

ResultsWriter::~ResultsWriter() {
  if (impl_ && impl_->fd >= 0) ::close(impl_->fd);
}
const FileHeader& ResultsWriter::header() const { return impl_->h; }
int64_t ResultsWriter::remaining() const { return impl_->remaining; }
int64_t ResultsWriter::resumed_rows() const { return impl_->resumed; }
std::vector<std::string> ResultsWriter::notes() const { return impl_->notes; }

bool ResultsWriter::final(int64_t id) const {
  const auto& f = impl_->final;
  auto it = std::upper_bound(f.begin(), f.end(), static_cast<uint64_t>(id),
                             [](uint64_t v, const IdRange& r) { return v < r.begin; });
  if (it == f.begin()) return false;
  --it;
  return static_cast<uint64_t>(id) < it->end;
}

namespace {
constexpr double kJournalSyncSeconds = 0.5;
}  // namespace

void ResultsWriter::append(const RowBlock& rows, double compute_seconds) {
  Impl& im = *impl_;
  std::string rec = encode_rows(rows, compute_seconds);
  if (::lseek(im.fd, 0, SEEK_END) < 0)
    throw std::runtime_error("cannot seek " + journal_path(im.opt.path) + ": " + errno_text(errno));
  write_all(im.fd, rec.data(), rec.size(), journal_path(im.opt.path));
  // Written at once (a killed process loses nothing: the page cache has it),
  // synced when a record comes kJournalSyncSeconds or more after the last
  // sync (and by every checkpoint's fold): an fdatasync per batch made tiny
  // trials wait on the disk (a scale review: 2,363 syncs, half the wall time
  // of a 200k-trial run at the default batch size). An OS crash or power loss
  // can cost the records since the last sync (the kernel writes them back
  // within about 30 s on its own), which --resume runs again (a record that
  // did not reach the disk whole fails its checksum).
  const auto now = std::chrono::steady_clock::now();
  if (std::chrono::duration<double>(now - im.last_sync).count() >= kJournalSyncSeconds) {
    if (::fdatasync(im.fd) != 0)
      throw std::runtime_error("cannot sync " + journal_path(im.opt.path) + ": " + errno_text(errno));
    im.last_sync = now;
  }
  im.compute += compute_seconds;
  im.trials += static_cast<int64_t>(rows.rows());
  im.journal_rows += static_cast<int64_t>(rows.rows());
  double since = std::chrono::duration<double>(std::chrono::steady_clock::now() - im.last_ckpt).count();
  // At least 20x the last checkpoint's time apart: checkpoints cost < 5% of the run.
  if (since >= std::max(im.opt.checkpoint_every, 20 * im.ckpt_seconds)) checkpoint();
}

void ResultsWriter::set_store_seconds(double store, double exposed) {
  impl_->store = store;
  impl_->store_exposed = exposed;
}

void ResultsWriter::checkpoint() { impl_->checkpoint_now(); }

bool ResultsWriter::checkpoint_within(double budget_seconds) {
  Impl& im = *impl_;
  if (im.journal_rows == 0 || im.ckpt_seconds > budget_seconds) return false;
  im.checkpoint_now();
  return true;
}

void ResultsWriter::set_checkpoint_hook(CheckpointHook hook) { impl_->hook = std::move(hook); }

double ResultsWriter::last_checkpoint_seconds() const { return impl_->ckpt_seconds; }
int64_t ResultsWriter::journal_rows() const { return impl_->journal_rows; }
void ResultsWriter::sync_journal() {
  Impl& im = *impl_;
  if (::fdatasync(im.fd) != 0)
    throw std::runtime_error("cannot sync " + journal_path(im.opt.path) + ": " + errno_text(errno));
  im.last_sync = std::chrono::steady_clock::now();
}

void ResultsWriter::finish() {
  Impl& im = *impl_;
  if (im.session > 0 && im.trials == 0 && im.resumed == 0 && im.journal_rows == 0) {
    // A --resume that ran and recovered nothing leaves the file as it was. Its
    // session would add a backend and a precision that made no row (until
    // session 13 a no-op resume with another --precision and --force made the
    // file "f32,f64", which export then refused without --precision).
    im.h.sessions.erase(im.h.sessions.begin() + static_cast<std::ptrdiff_t>(im.session));
    im.session = im.h.sessions.size();  // update_session() then touches nothing
  } else {
    im.checkpoint_now();
  }
  if (im.h.n_pending == 0 && im.h.n_failed == 0) {
    ::unlink(journal_path(im.opt.path).c_str());
  }
}

// --- merge ----------------------------------------------------------------------------
MergeReport merge_results(const std::string& out_given, const std::vector<std::string>& shards_given,
                          bool force) {
  h5_quiet();
  MergeReport rep;
  if (shards_given.empty()) throw InputError("", "merge needs at least one shard file");
  const std::string out = resolve_link(out_given);
  std::vector<std::string> shards;
  for (const auto& s : shards_given) shards.push_back(resolve_link(s));
  check_output_path(out, "OUT");
  // The shard that is `path` (the same file, by inode), if any.
  auto shard_at = [&shards](const std::string& path) -> const std::string* {
    struct stat sp, ss;
    if (::stat(path.c_str(), &sp) != 0) return nullptr;
    for (const auto& s : shards)
      if (::stat(s.c_str(), &ss) == 0 && ss.st_ino == sp.st_ino && ss.st_dev == sp.st_dev) return &s;
    return nullptr;
  };
  // OUT.tmp is where the merge is written (and it is removed first).
  if (const std::string* s = shard_at(tmp_path(out)))
    throw InputError("", *s + " is the merge's temporary file (" + tmp_path(out) + "): rename it or merge into "
                              "another file");
  if (shard_at(out)) throw InputError("", out + " is also one of the shards; write the merge to a new file");
  if (exists(out) && !force) throw InputError("", out + " exists (add --force to overwrite it)");
  check_force_replaces(out, "OUT");
  // A run writing `out` holds the lock on its journal: a merge over it would
  // be overwritten by the run's next checkpoint. Held until the merge is done.
  // The merge takes that lock itself (creating the journal file if need be,
  // and removing it after), so that two merges into one OUT, or a merge and a
  // run, exclude each other: they shared OUT.tmp, and one could rename the
  // other's half-written file (session 14's robustness review).
  struct JournalLock {
    int fd = -1;
    std::string created;  // removed at the end (still locked) when the merge made it
    ~JournalLock() {
      if (fd < 0) return;
      if (!created.empty()) ::unlink(created.c_str());
      ::close(fd);
    }
  } lock;
  const std::string jout = journal_path(out);
  // An empty journal (no header) is a lock file a killed merge left: ours to remove.
  struct stat jst;
  const bool had_journal = ::stat(jout.c_str(), &jst) == 0 && jst.st_size > 0;
  lock.fd = ::open(jout.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock.fd < 0) throw std::runtime_error("cannot create " + jout + ": " + errno_text(errno));
  if (::flock(lock.fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(lock.fd);
    lock.fd = -1;
    throw InputError("", "another stsweep process (a run or a merge) is writing " + out + " (it holds the lock on " +
                             jout + "): merge into another file, or after it");
  }
  if (!had_journal) lock.created = jout;
  // Headers first: refuse before writing anything.
  std::vector<FileHeader> hs;
  std::vector<int> shard_ck;  // each shard's curve width
  for (const auto& s : shards) {
    // An input a run is writing: its file is a checkpoint behind (the run holds
    // its journal's lock; the advice to --resume it would meet that lock).
    if (const int jfd = ::open(journal_path(s).c_str(), O_RDONLY | O_CLOEXEC); jfd >= 0) {
      const bool busy = ::flock(jfd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
      ::close(jfd);
      if (busy)
        throw InputError("", "a stsweep run is writing " + s + " (it holds the lock on " + journal_path(s) +
                                 "): merge it after the run ends");
    }
    H5Results f = H5Results::open(s, false);
    hs.push_back(f.header());
    shard_ck.push_back(f.checkpoints());
    auto js = inspect_journal(journal_path(s));
    if (js.rows_waiting_for(f.header()))
      throw InputError("", s + " has " + std::to_string(js.rows) +
                               " rows in its journal that are not in the file yet: finish it with "
                               "`stsweep run ... --resume` first");
  }
  for (size_t i = 1; i < hs.size(); ++i) {
    if (hs[i].sweep_hash != hs[0].sweep_hash)
      throw InputError("", shards[i] + " belongs to sweep '" + hs[i].sweep_name + "' (hash " + hs[i].sweep_hash +
                               "), " + shards[0] + " to sweep '" + hs[0].sweep_name + "' (hash " +
                               hs[0].sweep_hash + "): only shards of one sweep merge");
    if (hs[i].precisions() != hs[0].precisions() && !force)
      throw InputError("", shards[i] + " was computed with precision " + hs[i].precisions() + ", " + shards[0] +
                               " with " + hs[0].precisions() + " (add --force to merge anyway)");
  }
  // `merge --force s0.h5 s1.h5 s2.h5` (the output's name forgotten) would
  // replace shard 0 with the merge of the others: refuse an output of the same
  // sweep that holds finished trials outside every input (re-merging into an
  // earlier merge of the same shards is fine).
  if (force && exists(out)) {
    std::optional<H5Results> old_out;
    try {
      old_out.emplace(H5Results::open(out, false));
    } catch (const std::exception&) {  // not a readable results file: check_force_replaces had its say
    }
    if (old_out && old_out->header().sweep_hash == hs[0].sweep_hash) {
      std::vector<IdRange> in;
      for (const auto& h : hs) in.insert(in.end(), h.ranges.begin(), h.ranges.end());
      std::sort(in.begin(), in.end(), [](const IdRange& a, const IdRange& b) { return a.begin < b.begin; });
      // Finished ids (ascending ranges) less their overlap with the inputs' ranges.
      uint64_t outside = 0;
      size_t j = 0;
      for (const auto& r : final_ranges(*old_out)) {
        uint64_t inside = 0;
        while (j < in.size() && in[j].end <= r.begin) ++j;
        for (size_t k = j; k < in.size() && in[k].begin < r.end; ++k) {
          const uint64_t lo = std::max(r.begin, in[k].begin), hi = std::min(r.end, in[k].end);
          if (hi > lo) inside += hi - lo;  // overlapping inputs (refused below) must not wrap this
        }
        outside += (r.end - r.begin) - std::min(inside, r.end - r.begin);
      }
      if (outside > 0)
        throw InputError("", out + " holds " + std::to_string(outside) + " finished trials of sweep '" +
                                 hs[0].sweep_name + "' that none of the inputs holds: did you forget the output's "
                                 "name (stsweep merge OUT.h5 SHARD.h5...)? Remove it yourself to replace it");
    }
  }
  // Ranges: sorted, disjoint.
  struct Piece {
    IdRange r;
    size_t shard;
    int64_t row0;
  };
  std::vector<Piece> pieces;
  for (size_t i = 0; i < hs.size(); ++i) {
    int64_t row = 0;
    for (const auto& r : hs[i].ranges) {
      if (r.end > r.begin) pieces.push_back({r, i, row});
      row += static_cast<int64_t>(r.end - r.begin);
    }
  }
  std::sort(pieces.begin(), pieces.end(), [](const Piece& a, const Piece& b) { return a.r.begin < b.r.begin; });
  for (size_t i = 1; i < pieces.size(); ++i)
    if (pieces[i].r.begin < pieces[i - 1].r.end)
      throw InputError("", shards[pieces[i].shard] + " and " + shards[pieces[i - 1].shard] +
                               " both hold trials " + std::to_string(pieces[i].r.begin) + ".." +
                               std::to_string(std::min(pieces[i].r.end, pieces[i - 1].r.end) - 1) +
                               ": shards must not overlap");
  FileHeader h = hs[0];
  h.ranges.clear();
  // A checkpoint of the merged file copies all the shards' rows: their
  // checkpoints' sum is the estimate a --resume's stop goes by.
  h.checkpoint_seconds = 0;
  for (const auto& x : hs) h.checkpoint_seconds += x.checkpoint_seconds;
  for (const auto& p : pieces) {
    if (!h.ranges.empty() && h.ranges.back().end == p.r.begin) h.ranges.back().end = p.r.end;
    else h.ranges.push_back(p.r);
  }
  std::vector<std::string> shard_names;
  h.sessions.clear();
  int maxC = 0;
  for (size_t i = 0; i < hs.size(); ++i) {
    shard_names.push_back(hs[i].shard);
    h.sessions.insert(h.sessions.end(), hs[i].sessions.begin(), hs[i].sessions.end());
  }
  std::sort(h.sessions.begin(), h.sessions.end(),
            [](const Session& a, const Session& b) { return a.start_time < b.start_time; });
  bool whole = h.ranges.size() == 1 && h.ranges[0].begin == 0 &&
               static_cast<int64_t>(h.ranges[0].end) == h.sweep_trials;
  std::string joined;
  for (const auto& s : shard_names) joined += (joined.empty() ? "" : ",") + s;
  h.shard = whole ? "0/1" : "merged:" + joined;
  h.file_id = random_id();
  h.generation = 0;
  if (!whole) rep.notes.push_back("the shards do not cover the whole sweep (" + std::to_string(h.rows()) + " of " +
                                  std::to_string(h.sweep_trials) + " trials)");

  const std::string tmp = tmp_path(out);
  ::unlink(tmp.c_str());
  try {
    for (int c : shard_ck) maxC = std::max(maxC, c);
    H5Results f = H5Results::create(tmp, h, std::max(1, maxC));
    // One input open at a time: each open file holds HDF5's chunk caches
    // (10-70 MB), and a merge of 100 shards kept all of them open (949 MB;
    // about 1020 shards met the open-file limit). Pieces run in id order: a
    // shard is opened once per run of its pieces (once for a plain shard,
    // whose ids are one range).
    std::optional<H5Results> in;
    size_t in_shard = shards.size();
    const int64_t block = 4096;
    for (const auto& p : pieces) {
      if (p.shard != in_shard) {
        in.reset();
        in.emplace(H5Results::open(shards[p.shard], false));
        in_shard = p.shard;
      }
      const int64_t n = static_cast<int64_t>(p.r.end - p.r.begin);
      for (int64_t r = 0; r < n; r += block) {
        RowBlock b = in->read(p.row0 + r, std::min(block, n - r));
        f.write(b);
        rep.rows += static_cast<int64_t>(b.rows());
      }
    }
    in.reset();
    f.recount();
    f.write_header();
    for (size_t i = 0; i < hs.size(); ++i)
      if (hs[i].n_pending > 0)
        rep.notes.push_back(shards[i] + " has " + std::to_string(hs[i].n_pending) + " pending trials");
    f.close();
    fsync_path(tmp, false);
    if (::rename(tmp.c_str(), out.c_str()) != 0)
      throw std::runtime_error("cannot rename " + tmp + " to " + out + ": " + errno_text(errno));
    fsync_path(dir_of(out), true);
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  return rep;
}

// --- H5ArrayFile ---------------------------------------------------------------------
struct H5ArrayFile::Impl {
  Hid file;
};

H5ArrayFile::~H5ArrayFile() {
  if (impl_) {
    try { close(); } catch (...) {}
  }
}
H5ArrayFile::H5ArrayFile(H5ArrayFile&&) noexcept = default;
H5ArrayFile& H5ArrayFile::operator=(H5ArrayFile&&) noexcept = default;

H5ArrayFile H5ArrayFile::create(const std::string& path) {
  h5_quiet();
  H5ArrayFile out;
  out.impl_ = std::make_unique<Impl>();
  out.path_ = path;
  out.impl_->file = check(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), "cannot create " + path);
  return out;
}

void H5ArrayFile::attr(const std::string& name, const std::string& v) { attr_str(impl_->file, name.c_str(), v); }
void H5ArrayFile::attr(const std::string& name, double v) { attr_f64(impl_->file, name.c_str(), v); }
void H5ArrayFile::attr(const std::string& name, int64_t v) { attr_i64(impl_->file, name.c_str(), v); }
void H5ArrayFile::attr(const std::string& name, const std::vector<int64_t>& v) {
  attr_num<int64_t>(impl_->file, name.c_str(), H5T_STD_I64LE, H5T_NATIVE_INT64, v, false);
}

namespace {
// One dataset (intermediate groups created as needed) with its long_name.
void write_array(hid_t file, const std::string& path, const std::string& name, const std::vector<uint64_t>& dims,
                 hid_t ftype, hid_t mtype, const void* v, const std::string& doc) {
  Hid lcpl = check(H5Pcreate(H5P_LINK_CREATE), "property list");
  check(H5Pset_create_intermediate_group(lcpl, 1), "intermediate groups", path);
  std::vector<hsize_t> d(dims.begin(), dims.end());
  Hid sp = check(d.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(static_cast<int>(d.size()), d.data(), nullptr),
                 "dataspace");
  Hid ds = check(H5Dcreate2(file, name.c_str(), ftype, sp, lcpl, H5P_DEFAULT, H5P_DEFAULT),
                 "cannot create dataset " + name + " in " + path);
  hsize_t n = 1;
  for (hsize_t x : d) n *= x;
  if (n > 0) check(H5Dwrite(ds, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, v), ("writing " + name + " to").c_str(), path);
  if (!doc.empty()) attr_str(ds, "long_name", doc);
}
}  // namespace

void H5ArrayFile::f64(const std::string& name, const std::vector<uint64_t>& dims, const double* v,
                      const std::string& doc) {
  write_array(impl_->file, path_, name, dims, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, v, doc);
}
void H5ArrayFile::i64(const std::string& name, const std::vector<uint64_t>& dims, const int64_t* v,
                      const std::string& doc) {
  write_array(impl_->file, path_, name, dims, H5T_STD_I64LE, H5T_NATIVE_INT64, v, doc);
}

void H5ArrayFile::close() {
  if (!impl_ || !impl_->file.valid()) return;
  if (H5Fflush(impl_->file, H5F_SCOPE_LOCAL) < 0) h5_fail("cannot write " + path_);
  if (impl_->file.reset() < 0) h5_fail("cannot close " + path_);
}

std::string utc_now_iso() { return utc_iso(std::time(nullptr)); }

std::string utc_iso(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string host_name() {
  char buf[256] = {0};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

}  // namespace stsweep
