// MultiBackend: one batch over several backends (see multi_backend.hpp).
#include "multi_backend.hpp"

#include <cmath>
#include <exception>
#include <set>
#include <stdexcept>
#include <thread>

#include "params.hpp"

namespace stsweep {

MultiBackend::MultiBackend(std::vector<std::unique_ptr<Backend>> parts, std::vector<std::string> labels,
                           std::vector<double> weights)
    : parts_(std::move(parts)), labels_(std::move(labels)) {
  if (parts_.empty()) throw std::invalid_argument("MultiBackend: no backends");
  for (const auto& p : parts_)
    if (!p) throw std::invalid_argument("MultiBackend: a null backend");
  if (!labels_.empty() && labels_.size() != parts_.size())
    throw std::invalid_argument("MultiBackend: " + std::to_string(labels_.size()) + " labels for " +
                                std::to_string(parts_.size()) + " backends");
  if (weights.empty()) weights.assign(parts_.size(), 1.0);
  if (weights.size() != parts_.size())
    throw std::invalid_argument("MultiBackend: " + std::to_string(weights.size()) + " weights for " +
                                std::to_string(parts_.size()) + " backends");
  double total = 0;
  for (double w : weights) {
    if (!(w > 0) || !std::isfinite(w)) throw std::invalid_argument("MultiBackend: weights must be positive");
    total += w;
  }
  cumulative_.push_back(0);
  double acc = 0;
  for (double w : weights) cumulative_.push_back((acc += w) / total);
  cumulative_.back() = 1;
}

std::string MultiBackend::name() const {
  std::string out;
  std::set<std::string> seen;
  for (const auto& p : parts_) {
    std::string n = p->name();
    if (seen.insert(n).second) out += (out.empty() ? "" : "+") + n;
  }
  return out;
}

std::string MultiBackend::device() const {
  if (parts_.size() == 1) return parts_[0]->device();
  std::string out = std::to_string(parts_.size()) + " devices: ";
  for (size_t i = 0; i < parts_.size(); ++i) {
    if (i > 0) out += "; ";
    if (!labels_.empty()) out += labels_[i] + ": ";
    out += parts_[i]->device();
  }
  return out;
}

std::string MultiBackend::time_report() const {
  if (parts_.size() == 1) return parts_[0]->time_report();
  std::string out;
  for (size_t i = 0; i < parts_.size(); ++i) {
    const std::string r = parts_[i]->time_report();
    if (r.empty()) continue;
    if (!out.empty()) out += " | ";
    out += (labels_.empty() ? std::to_string(i) : labels_[i]) + ": " + r;
  }
  return out;
}

std::vector<size_t> MultiBackend::split(size_t n) const {
  const size_t k = parts_.size();
  std::vector<size_t> off(k + 1, 0);
  for (size_t i = 1; i < k; ++i) {
    // Rounded, so equal weights give parts that differ by at most one trial.
    off[i] = static_cast<size_t>(std::llround(static_cast<double>(n) * cumulative_[i]));
    if (off[i] > n) off[i] = n;
    if (off[i] < off[i - 1]) off[i] = off[i - 1];
  }
  off[k] = n;
  return off;
}

std::vector<TrialResult> MultiBackend::run(const Batch& batch, const RunOptions& opt) {
  const size_t n = batch.trials.size();
  if (parts_.size() == 1) return parts_[0]->run(batch, opt);
  const std::vector<size_t> off = split(n);

  // The parts as batches of their own. A batch without ids numbers its trials
  // by index (as the backends do), so the parts keep the whole batch's ids.
  const size_t k = parts_.size();
  std::vector<Batch> sub(k);
  for (size_t p = 0; p < k; ++p) {
    sub[p].trials.assign(batch.trials.begin() + off[p], batch.trials.begin() + off[p + 1]);
    sub[p].ids.reserve(off[p + 1] - off[p]);
    for (size_t i = off[p]; i < off[p + 1]; ++i)
      sub[p].ids.push_back(i < batch.ids.size() ? batch.ids[i] : static_cast<int64_t>(i));
  }

  std::vector<std::vector<TrialResult>> res(k);
  std::vector<std::exception_ptr> err(k);
  auto work = [&](size_t p) {
    try {
      res[p] = parts_[p]->run(sub[p], opt);
      if (res[p].size() != sub[p].trials.size())
        throw std::logic_error("backend " + parts_[p]->name() + " returned " + std::to_string(res[p].size()) +
                               " results for " + std::to_string(sub[p].trials.size()) + " trials");
    } catch (...) {
      err[p] = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  threads.reserve(k);
  try {
    for (size_t p = 0; p < k; ++p)
      if (off[p + 1] > off[p]) threads.emplace_back(work, p);
  } catch (...) {  // could not start a thread: let the started ones finish first
    for (auto& t : threads) t.join();
    throw;
  }
  for (auto& t : threads) t.join();
  for (const auto& e : err)
    if (e) std::rethrow_exception(e);

  std::vector<TrialResult> out;
  out.reserve(n);
  for (size_t p = 0; p < k; ++p)
    for (auto& r : res[p]) out.push_back(std::move(r));
  return out;
}

DeviceList parse_device_list(const std::string& text) {
  const std::string expected = "expected all or a comma list of CUDA device ordinals such as 0,1,3";
  if (text == "all") return DeviceList{true, {}};
  if (text.empty()) throw InputError("--devices", "empty; " + expected);
  auto quoted = [&](const std::string& item) {
    return "\"" + item + "\"" + (item == text ? "" : " in \"" + text + "\"");
  };
  DeviceList d;
  std::set<int> seen;
  size_t start = 0;
  for (;;) {
    const size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (item.size() > 1 && item[0] == '-' && item.find_first_not_of("0123456789", 1) == std::string::npos)
      throw InputError("--devices", quoted(item) + ": device ordinals are 0 or more");
    if (item.empty() || item.size() > 9 || item.find_first_not_of("0123456789") != std::string::npos)
      throw InputError("--devices", quoted(item) + " is not a device ordinal; " + expected);
    const int ordinal = std::stoi(item);
    if (!seen.insert(ordinal).second)
      throw InputError("--devices", "device " + std::to_string(ordinal) + " is listed twice in \"" + text + "\"");
    d.ordinals.push_back(ordinal);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return d;
}

}  // namespace stsweep
