// Trials of a sweep grouped into batches of equal shape, lazily.
//
// The batcher reads ids in order, a chunk at a time (chunk = 4 x max_batch
// kept ids by default, fewer batches when that passes 2^20 ids, at least
// one), groups each chunk by
// ShapeKey and hands out batches of at most max_batch trials. Memory is
// bounded by the chunk, whatever the sweep size. A stop predicate, polled
// every 4096 ids read, ends a chunk's decoding early (a chunk of a million
// trials takes seconds: a SIGTERM must not wait for it). Within a chunk, groups come out in the order of their first id and ids
// ascend inside a batch; so a sweep whose shape never changes gives batches of
// consecutive ids.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <random>
#include <vector>

#include "backend.hpp"
#include "sweep.hpp"

namespace stsweep {

class Batcher {
 public:
  using Skip = std::function<bool(uint64_t id)>;  // true: leave this trial out (e.g. done already)
  using Stop = std::function<bool()>;             // true: stop decoding (next() returns false)

  // `sweep` must outlive the batcher. `range` is clipped to the sweep; max_batch >= 1
  // (0 counts as 1); chunk 0 means 4 batches, or as many whole batches as
  // 2^20 ids hold (at least one).
  Batcher(const Sweep& sweep, IdRange range, Skip skip, size_t max_batch, size_t chunk = 0);

  // The next batch; false when every id of the range has been handed out, or
  // when `stop` said so (then stopped() is true and the chunk being read is
  // dropped). Throws InputError for a trial whose parameters do not combine.
  bool next(Batch& out);
  void set_stop(Stop stop) { stop_ = std::move(stop); }
  bool stopped() const { return stopped_; }

  uint64_t position() const { return next_id_; }  // first id not yet read

 private:
  void fill();

  const Sweep& sweep_;
  IdRange range_;
  Skip skip_;
  Stop stop_;
  bool stopped_ = false;
  size_t max_batch_, chunk_;
  uint64_t next_id_;
  std::deque<Batch> ready_;
  std::vector<Batch> carried_;  // partial batches waiting for more of their shape (fill)
};

// One id at random in each of `b` equal slices of `r` (every id when `r` holds
// no more than b), in increasing order: `estimate`'s sample of a sweep, even
// over its subgrids and axes without aliasing a grid's period.
std::vector<uint64_t> stratified_sample(IdRange r, uint64_t b, std::mt19937_64& rng);

// The ids a Batcher reads at a time when not told (see above): 4 batches, or
// as many whole batches as 2^20 ids hold, at least one.
size_t default_chunk(size_t max_batch);

// `run`'s batch size when --batch-size is not given: 4096 trials for each GPU
// (`devices` of them) on CUDA; on the CPU 16 a thread (`threads` > 0), at
// least 64. A CPU batch ends when its slowest thread does and is stored on its
// own, so fewer trials a thread cost throughput (docs/PERFORMANCE.md, "Batch
// size on the CPU").
size_t default_batch_size(bool cuda, int threads, int devices);

}  // namespace stsweep
