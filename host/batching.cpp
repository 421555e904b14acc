// Lazy batching by shape (batching.hpp).
#include "batching.hpp"

#include <algorithm>
#include <map>

namespace stsweep {

size_t default_batch_size(bool cuda, int threads, int devices) {
  if (cuda) return size_t{4096} * static_cast<size_t>(std::max(devices, 1));
  return std::max<size_t>(64, size_t{16} * static_cast<size_t>(std::max(threads, 1)));
}

size_t default_chunk(size_t max_batch) {
  max_batch = std::max<size_t>(max_batch, 1);
  return max_batch * std::clamp<size_t>((size_t{1} << 20) / max_batch, 1, 4);
}

Batcher::Batcher(const Sweep& sweep, IdRange range, Skip skip, size_t max_batch, size_t chunk)
    : sweep_(sweep),
      range_{std::min(range.begin, sweep.count()), std::min(range.end, sweep.count())},
      skip_(std::move(skip)),
      max_batch_(std::max<size_t>(max_batch, 1)),
      // Four batches' worth at a time, fewer when that passes 2^20 ids (a
      // chunk is decoded trials in memory, about 500 bytes each), at least one:
      // a whole number of batches, so a one-shape sweep gives full batches. No
      // product that could wrap (4 x 2^62 wrapped to 0, and a chunk of 0 took
      // no trial and next() spun forever).
      chunk_(chunk ? chunk : default_chunk(max_batch_)),
      next_id_(range_.begin) {}

void Batcher::fill() {
  // Groups in the order of their first id: the partial batches carried over
  // from the last chunk first, then this chunk's trials. Only full batches
  // leave, until the carried trials pass a chunk's worth or the range ends:
  // a shape axis varying fastest split every chunk into as many small batches
  // as there are shapes (a scale review: 10,003 batches and 40 s for 160k
  // tiny trials, against 2,514 and 21 s with the axis first).
  std::map<ShapeKey, size_t> where;
  std::vector<Batch> groups;
  for (Batch& c : carried_) {
    where.emplace(shape_key(c.trials.front()), groups.size());
    groups.push_back(std::move(c));
  }
  carried_.clear();
  size_t taken = 0, read = 0;
  while (taken < chunk_ && next_id_ < range_.end) {
    if ((++read & 4095) == 0 && stop_ && stop_()) {
      stopped_ = true;
      return;  // the chunk's groups are dropped: the run is stopping
    }
    uint64_t id = next_id_++;
    if (skip_ && skip_(id)) continue;
    TrialParams p = sweep_.trial(id);
    auto [it, fresh] = where.try_emplace(shape_key(p), groups.size());
    if (fresh) groups.emplace_back();
    Batch& g = groups[it->second];
    g.ids.push_back(static_cast<int64_t>(id));
    g.trials.push_back(std::move(p));
    ++taken;
  }
  // Partial batches leave when the range ends or when the waiting trials pass
  // what each shape's partial batch may hold (shapes x batch), at least a
  // chunk and at most 2^18 trials (about 130 MB of decoded trials): with a
  // chunk's worth alone, more than about 8 interleaved shapes still split
  // into small batches (the session's diff review simulated 64 shapes: 20,032
  // batches of about 8 trials for an ideal 2,500).
  size_t partial = 0;  // trials in the groups' last, partial batches
  for (const auto& g : groups) partial += g.ids.size() % max_batch_;
  const size_t hold = std::max(chunk_, std::min(groups.size() * max_batch_, size_t{1} << 18));
  const bool flush = next_id_ >= range_.end || partial > hold;
  for (auto& g : groups) {
    for (size_t s = 0; s < g.ids.size(); s += max_batch_) {
      size_t e = std::min(g.ids.size(), s + max_batch_);
      Batch b;
      b.ids.assign(g.ids.begin() + s, g.ids.begin() + e);
      b.trials.assign(std::make_move_iterator(g.trials.begin() + s), std::make_move_iterator(g.trials.begin() + e));
      if (e - s < max_batch_ && !flush)
        carried_.push_back(std::move(b));
      else
        ready_.push_back(std::move(b));
    }
  }
}

bool Batcher::next(Batch& out) {
  while (ready_.empty() && (next_id_ < range_.end || !carried_.empty()) && !stopped_) fill();
  if (ready_.empty()) return false;
  out = std::move(ready_.front());
  ready_.pop_front();
  return true;
}

std::vector<uint64_t> stratified_sample(IdRange r, uint64_t b, std::mt19937_64& rng) {
  const uint64_t n = r.end > r.begin ? r.end - r.begin : 0;
  std::vector<uint64_t> ids;
  if (n <= b) {
    for (uint64_t i = r.begin; i < r.end; ++i) ids.push_back(i);
    return ids;
  }
  ids.reserve(b);
  for (uint64_t j = 0; j < b; ++j) {
    // Slice j: [j n / b, (j + 1) n / b), not empty since n > b.
    const auto lo = static_cast<uint64_t>((static_cast<unsigned __int128>(j) * n) / b);
    const auto hi = static_cast<uint64_t>((static_cast<unsigned __int128>(j + 1) * n) / b);
    ids.push_back(r.begin + lo + std::uniform_int_distribution<uint64_t>(0, hi - lo - 1)(rng));
  }
  return ids;
}

}  // namespace stsweep
