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

  if (hooks.stop_requested) batcher.set_stop(hooks.stop_requested);
  std::future<Outcome> fut;
  // An exception of the writer or the batcher with a batch training: on_error
  // may end the process without waiting for the batch.
  auto failed = [&] {
    const std::exception_ptr e = std::current_exception();
    if (hooks.on_error && fut.valid() && fut.wait_for(std::chrono::seconds(0)) != std::future_status::ready)
      hooks.on_error(e);
    std::rethrow_exception(e);
  };

  auto cur = std::make_shared<Batch>();
  bool have = batcher.next(*cur);
  if (!have && batcher.stopped()) {
    halt(0, nullptr);
    return st;
  }
  if (have) fut = launch(cur);
  // The last store, while it ran beside the batch in `fut`: its overlap with
  // training is known once that batch has finished.
  std::optional<StoreSpan> beside;
  while (have) {
    auto nxt = std::make_shared<Batch>();
    bool have_next = false;
    try {
      have_next = batcher.next(*nxt);  // decode the next batch while the backend works
    } catch (...) {
      failed();
    }
    if (!have_next && batcher.stopped()) {
      halt(static_cast<int64_t>(cur->ids.size()), &fut);
      return st;
    }
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
    // Counted (and shown) before the store: a checkpoint the append makes
    // shows the bar with this batch in it.
    st.compute += o.seconds;
    for (const auto& r : o.results) {
      ++st.total;
      if (r.status == Status::done) {
        ++st.done;
        st.unstable.add(r.loss_rise, r.baseline_loss_rise);
      }
      else if (r.status == Status::diverged) ++st.diverged;
      else {
        ++st.failed;
        if (hooks.on_failed) hooks.on_failed(r);
      }
    }
    if (hooks.progress) hooks.progress(st.total);
    StoreSpan span;
    span.begin = Clock::now();
    writer.set_store_seconds(st.store, st.store_exposed);  // recorded with the session at the next update
    try {
      writer.append(block, o.seconds);
      if (opt.fold_while_training && have_next && fut.wait_for(std::chrono::seconds(0)) != std::future_status::ready)
        writer.checkpoint_within(0.5 * o.seconds);
    } catch (...) {
      failed();
    }
    span.end = Clock::now();
    st.store += seconds(span.end - span.begin);
    if (have_next) beside = span;
    else st.store_exposed += seconds(span.end - span.begin);
    // After the last batch is stored, a stop changes nothing: finish() folds the
    // journal as a stop's checkpoint would, and the run is complete (until
    // session 13 it said "interrupted", exit 1, and kept the journal).
    if (have_next && stop()) {
      halt(static_cast<int64_t>(nxt->ids.size()), &fut);
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
