// Batches of equal shape from a sweep, lazily.
#include <gtest/gtest.h>

#include <set>

#include "batching.hpp"

using namespace stsweep;

namespace {

// Shapes alternate id by id (n_train is the fastest axis), so grouping matters.
const char* kSweep = R"({"grid": {"seed": {"range": [0, 10]}, "lambda": [0, 1], "n_train": [8, 16, 32]}})";

struct Drained {
  std::vector<Batch> batches;
  std::set<int64_t> ids;
};

Drained drain(const Sweep& s, IdRange r, Batcher::Skip skip, size_t max_batch, size_t chunk = 0) {
  Batcher b(s, r, std::move(skip), max_batch, chunk);
  Drained d;
  Batch batch;
  while (b.next(batch)) {
    for (int64_t id : batch.ids) EXPECT_TRUE(d.ids.insert(id).second) << "id " << id << " twice";
    d.batches.push_back(std::move(batch));
  }
  return d;
}

}  // namespace

TEST(Batching, EveryIdOnceInBatchesOfOneShape) {
  Sweep s = Sweep::from_text(kSweep);
  ASSERT_EQ(s.count(), 60u);
  Drained d = drain(s, {0, s.count()}, nullptr, 4);
  EXPECT_EQ(d.ids.size(), 60u);
  for (const auto& b : d.batches) {
    ASSERT_FALSE(b.ids.empty());
    ASSERT_LE(b.ids.size(), 4u);
    ASSERT_EQ(b.ids.size(), b.trials.size());
    for (size_t i = 0; i < b.ids.size(); ++i) {
      EXPECT_EQ(shape_key(b.trials[i]), shape_key(b.trials[0]));
      EXPECT_EQ(to_json(b.trials[i]), to_json(s.trial(static_cast<uint64_t>(b.ids[i]))));
      if (i) EXPECT_LT(b.ids[i - 1], b.ids[i]);
    }
  }
  // A chunk of 16 ids holds 5-6 of each of 3 shapes; the remainders wait for
  // the next chunk (since session 14), so each shape's 20 trials are 5 full
  // batches. Until then every chunk left a partial batch per shape (21+ here;
  // a scale review: 10,003 batches for 160k trials, twice the time).
  EXPECT_EQ(d.batches.size(), 15u);
  for (const auto& b : d.batches) EXPECT_EQ(b.ids.size(), 4u);
}

// 16 shapes varying fastest (more than the 4 batches of a chunk hold): every
// batch is still full, as when the shape axis varies slowest.
TEST(Batching, ManyInterleavedShapesGiveFullBatches) {
  Sweep s = Sweep::from_text(R"({"grid": {"seed": {"range": [0, 32]}, "n_train": {"range": [8, 24]}}})");
  ASSERT_EQ(s.count(), 512u);
  Drained d = drain(s, {0, s.count()}, nullptr, 8);
  EXPECT_EQ(d.ids.size(), 512u);
  EXPECT_EQ(d.batches.size(), 64u);
  for (const auto& b : d.batches) EXPECT_EQ(b.ids.size(), 8u);
}

TEST(Batching, ChunksBoundTheLookAhead) {
  Sweep s = Sweep::from_text(kSweep);
  // Partial batches wait while they hold at most max(chunk, shapes x batch)
  // trials (capped at 2^18): with chunk 6 and batches of 100, the 3 shapes'
  // 60 trials never pass 300, so they leave at the end, one batch a shape.
  Drained d = drain(s, {0, s.count()}, nullptr, 100, 6);
  ASSERT_EQ(d.batches.size(), 3u);
  for (const auto& b : d.batches) ASSERT_EQ(b.ids.size(), 20u);
  // With batches of 2 the partials (at most one trial a shape) never pass the
  // chunk: each chunk's full batches leave at once, in order of their ids.
  Drained small = drain(s, {0, s.count()}, nullptr, 2, 6);
  ASSERT_EQ(small.batches.size(), 30u);
  for (size_t i = 0; i < small.batches.size(); ++i) {
    ASSERT_EQ(small.batches[i].ids.size(), 2u);
    EXPECT_EQ(small.batches[i].ids[1] - small.batches[i].ids[0], 3);
  }
}

// A stop predicate ends a chunk's decoding within 4096 ids: a chunk of a
// million trials takes seconds, and until session 13 a SIGTERM waited for it
// (a review measured 13-17 s at --batch-size 1000000).
TEST(Batching, StopEndsTheDecodingOfAChunk) {
  Sweep s = Sweep::from_text(R"({"grid": {"seed": {"range": [0, 100000000]}}})");
  Batcher b(s, {0, s.count()}, nullptr, 1000000);
  int asked = 0;
  b.set_stop([&] { return ++asked >= 3; });
  Batch batch;
  EXPECT_FALSE(b.next(batch));
  EXPECT_TRUE(b.stopped());
  EXPECT_EQ(asked, 3);
  EXPECT_LE(b.position(), 3u * 4096) << "ids read before the stop was seen";
  EXPECT_TRUE(batch.ids.empty());
}

// Whole batches, so a one-shape sweep gives full ones: 4 of them, fewer past
// 2^20 ids, at least one, never a product that wraps.
TEST(Batching, DefaultChunkIsWholeBatches) {
  EXPECT_EQ(default_chunk(64), 256u);
  EXPECT_EQ(default_chunk(0), 4u);
  EXPECT_EQ(default_chunk(size_t{1} << 18), size_t{1} << 20);
  EXPECT_EQ(default_chunk(300000), 900000u);    // 3 batches (4 would pass 2^20)
  EXPECT_EQ(default_chunk(1000000), 1000000u);  // one (a cap of 2^20 gave 1000000 + 48576)
  EXPECT_EQ(default_chunk(size_t{1} << 62), size_t{1} << 62);
  EXPECT_EQ(default_chunk(SIZE_MAX), SIZE_MAX);
  for (size_t b : {size_t{1}, size_t{7}, size_t{100000}, size_t{262145}, size_t{524289}, size_t{3000000}})
    EXPECT_EQ(default_chunk(b) % b, 0u) << b;
}

TEST(Batching, RangeAndSkip) {
  Sweep s = Sweep::from_text(kSweep);
  IdRange r = shard_range(s.count(), Shard{1, 3});  // [20, 40)
  Drained d = drain(s, r, [](uint64_t id) { return id % 2 == 0; }, 5);
  std::set<int64_t> expect;
  for (int64_t id = 20; id < 40; ++id)
    if (id % 2) expect.insert(id);
  EXPECT_EQ(d.ids, expect);
  // Everything skipped: no batches at all.
  EXPECT_TRUE(drain(s, {0, s.count()}, [](uint64_t) { return true; }, 5).batches.empty());
  // A range past the end is clipped.
  EXPECT_EQ(drain(s, {55, 1000}, nullptr, 5).ids.size(), 5u);
  // A batch size past SIZE_MAX / 4 (--batch-size 2^62): every trial, one batch
  // per shape (four times it wrapped to a chunk of 0, and next() spun forever).
  Drained huge = drain(s, {0, s.count()}, nullptr, size_t{1} << 62);
  EXPECT_EQ(huge.ids.size(), s.count());
  EXPECT_EQ(huge.batches.size(), 3u);
}

TEST(Batching, ShardsTogetherAreTheSweep) {
  Sweep s = Sweep::from_text(kSweep);
  std::set<int64_t> all;
  for (uint64_t i = 0; i < 7; ++i)
    for (int64_t id : drain(s, shard_range(s.count(), Shard{i, 7}), nullptr, 3).ids) EXPECT_TRUE(all.insert(id).second);
  EXPECT_EQ(all.size(), s.count());
}

// run's default batch: 16 trials a CPU thread and at least 64 (fewer a thread
// cost throughput: docs/PERFORMANCE.md), 4096 a GPU.
TEST(Batching, DefaultBatchSize) {
  EXPECT_EQ(stsweep::default_batch_size(false, 1, 1), 64u);
  EXPECT_EQ(stsweep::default_batch_size(false, 2, 1), 64u);
  EXPECT_EQ(stsweep::default_batch_size(false, 4, 1), 64u);
  EXPECT_EQ(stsweep::default_batch_size(false, 16, 1), 256u);
  EXPECT_EQ(stsweep::default_batch_size(false, 64, 1), 1024u);
  EXPECT_EQ(stsweep::default_batch_size(false, 0, 1), 64u);
  EXPECT_EQ(stsweep::default_batch_size(true, 16, 1), 4096u);
  EXPECT_EQ(stsweep::default_batch_size(true, 16, 2), 8192u);
}

// estimate's sample: one id in each of b equal slices, in order, inside the
// range; every id of a slice can be drawn (no aliasing with a grid's period);
// the same generator state gives the same ids; a range of at most b ids is
// taken whole.
TEST(Batching, StratifiedSampleOnePerSlice) {
  using stsweep::IdRange;
  std::mt19937_64 rng(7);
  const IdRange r{100, 1100};  // 1000 ids, slices of 1000 / 64 = 15 or 16
  std::vector<std::set<uint64_t>> seen(64);
  for (int round = 0; round < 400; ++round) {
    const auto ids = stsweep::stratified_sample(r, 64, rng);
    ASSERT_EQ(ids.size(), 64u);
    for (uint64_t j = 0; j < 64; ++j) {
      const uint64_t lo = r.begin + j * 1000 / 64, hi = r.begin + (j + 1) * 1000 / 64;
      ASSERT_GE(ids[j], lo) << j;
      ASSERT_LT(ids[j], hi) << j;
      seen[j].insert(ids[j]);
    }
  }
  for (uint64_t j = 0; j < 64; ++j)  // 400 draws of 15-16 values: each value drawn (miss chance ~1e-11)
    EXPECT_EQ(seen[j].size(), (r.begin + (j + 1) * 1000 / 64) - (r.begin + j * 1000 / 64)) << j;
  std::mt19937_64 a(3), b(3), c(4);
  EXPECT_EQ(stsweep::stratified_sample(r, 10, a), stratified_sample(r, 10, b));
  EXPECT_NE(stsweep::stratified_sample(r, 10, a), stratified_sample(r, 10, c));
  const auto all = stsweep::stratified_sample(IdRange{5, 9}, 4, rng);
  EXPECT_EQ(all, (std::vector<uint64_t>{5, 6, 7, 8}));
  EXPECT_TRUE(stsweep::stratified_sample(IdRange{5, 5}, 4, rng).empty());
  // Huge ranges: no overflow in j * n.
  const IdRange big{0, uint64_t{1} << 62};
  const auto ids = stsweep::stratified_sample(big, 1000, rng);
  ASSERT_EQ(ids.size(), 1000u);
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  EXPECT_LT(ids.back(), big.end);
  EXPECT_GE(ids.back(), big.end / 1000 * 999);
}
