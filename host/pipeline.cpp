#include "pipeline.hpp"

#include <algorithm>
#include <chrono>
#include <future>
#include <memory>
#include <optional>

namespace stsweep {
namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

struct Outcome {
  std::vector<TrialResult> results;
  double seconds = 0;
  Clock::time_point end;  // when the backend returned
};

// A store's span on the clock.
struct StoreSpan {
  Clock::time_point begin, end;
};

}  // namespace

PipelineStats run_pipeline(Batcher& batcher, Backend& backend, const RunOptions& ro, ResultsWriter& writer,
                           const PipelineHooks& hooks, const PipelineOptions& opt) {
  PipelineStats st;
  st.store = st.store_exposed = opt.open_seconds;
  auto stop = [&] { return hooks.stop_requested && hooks.stop_requested(); };
  auto launch = [&backend, &ro](std::shared_ptr<Batch> b) {
    return std::async(std::launch::async, [&backend, &ro, b] {
      const auto t = Clock::now();
      Outcome o;
      o.results = backend.run(*b, ro);
      o.end = Clock::now();
      o.seconds = seconds(o.end - t);
      return o;
    });
  };
  // Stops the run: tells on_stop, then waits for the batch in flight (dropped).
  auto halt = [&](int64_t in_flight, std::future<Outcome>* fut) {
    if (hooks.on_stop) hooks.on_stop(in_flight);
    if (fut && fut->valid()) fut->wait();  // the batch is dropped, not stored
    st.stopped = true;
    st.dropped = in_flight;
  };

  auto cur = std::make_shared<Batch>();
  bool have = batcher.next(*cur);
  std::future<Outcome> fut;
  if (have) fut = launch(cur);
  // The last store, while it ran beside the batch in `fut`: its overlap with
  // training is known once that batch has finished.
  std::optional<StoreSpan> beside;
  while (have) {
    auto nxt = std::make_shared<Batch>();
    const bool have_next = batcher.next(*nxt);  // decode the next batch while the backend works
    while (fut.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready) {
      if (stop()) {
        halt(static_cast<int64_t>(cur->ids.size()), &fut);
        return st;
      }
      if (hooks.tick) hooks.tick();
    }
    Outcome o = fut.get();
    if (beside) {  // the part of the last store after this batch finished had no training beside it
      st.store_exposed += seconds(std::max(Clock::duration::zero(), beside->end - std::max(beside->begin, o.end)));
      beside.reset();
    }
    if (have_next) fut = launch(nxt);
    const RowBlock block = RowBlock::from_batch(*cur, o.results);
    StoreSpan span;
    span.begin = Clock::now();
    writer.set_store_seconds(st.store, st.store_exposed);  // recorded with the session at the next update
    writer.append(block, o.seconds);
    if (opt.fold_while_training && have_next && fut.wait_for(std::chrono::seconds(0)) != std::future_status::ready)
      writer.checkpoint_within(0.5 * o.seconds);
    span.end = Clock::now();
    st.store += seconds(span.end - span.begin);
    if (have_next) beside = span;
    else st.store_exposed += seconds(span.end - span.begin);
    st.compute += o.seconds;
    for (const auto& r : o.results) {
      ++st.total;
      if (r.status == Status::done) ++st.done;
      else if (r.status == Status::diverged) ++st.diverged;
      else {
        ++st.failed;
        if (hooks.on_failed) hooks.on_failed(r);
      }
    }
    if (hooks.progress) hooks.progress(st.total);
    if (stop()) {
      halt(have_next ? static_cast<int64_t>(nxt->ids.size()) : 0, have_next ? &fut : nullptr);
      return st;
    }
    cur = nxt;
    have = have_next;
  }
  const auto t = Clock::now();
  writer.set_store_seconds(st.store, st.store_exposed);
  writer.finish();
  const double f = seconds(Clock::now() - t);
  st.store += f;
  st.store_exposed += f;
  return st;
}

}  // namespace stsweep
