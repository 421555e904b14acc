// The run loop of `stsweep run`: batches -> backend -> results writer, with
// the store overlapped with training.
//
// One worker thread runs the backend on batch i+1 while the calling thread
// (which owns the writer: HDF5 is not thread-safe here) stores batch i and
// decodes batch i+2. The store therefore costs wall time only where it is not
// hidden behind training: `store_exposed` measures exactly that part, and is
// what the store's "share of wall" means (issue 4).
#pragma once

#include <cstdint>
#include <exception>
#include <functional>

#include "backend.hpp"
#include "batching.hpp"
#include "result.hpp"
#include "store.hpp"

namespace stsweep {

struct PipelineStats {
  int64_t total = 0, done = 0, diverged = 0, failed = 0;  // trials run, by status
  double compute = 0;        // seconds inside backend.run, summed over batches
  double store = 0;          // seconds the calling thread spent in the writer (open, append, finish)
  double store_exposed = 0;  // of `store`, seconds with no batch running on the backend
  bool stopped = false;      // `stop_requested` ended the run early
  int64_t dropped = 0;       // trials in flight when it stopped (not stored)
  // Done trials whose training loss rose (loss_rise or the twin's above
  // kUnstableRise): unstable gradient descent that did not diverge.
  RiseTally unstable;
};

struct PipelineOptions {
  // After storing a batch, while the next one is still training, also fold the
  // journal into the file when the last fold took at most half the last
  // batch's training time (ResultsWriter::checkpoint_within). finish() then
  // has about one batch left to fold. Worth it when training does not use the
  // host's cores (a GPU); on the CPU backend the fold would take a core from
  // training, so `run` leaves it off there.
  bool fold_while_training = false;
  // Store time spent before the loop (opening the file: ResultsWriter::start),
  // with no training beside it: counted as store and as exposed.
  double open_seconds = 0;
};

struct PipelineHooks {
  // Polled about every 100 ms while a batch runs and after each stored batch.
  // When it returns true the run stops: `stopped` calls `on_stop` with the
  // trials in flight (it may exit the process; if it returns, the pipeline
  // waits for the batch in flight, drops it and returns).
  std::function<bool()> stop_requested;
  std::function<void(int64_t in_flight)> on_stop;
  std::function<void()> tick;                          // about every 100 ms while waiting
  std::function<void(int64_t trials_run)> progress;    // after each stored batch
  std::function<void(const TrialResult&)> on_failed;  // each failed trial
  // An exception from the writer or the batcher while a batch is training: it
  // may exit the process (run checkpoints, reports and exits without waiting
  // for the batch, which would take a whole batch's training); if it returns,
  // or is not set, the exception propagates once the batch has finished.
  std::function<void(std::exception_ptr)> on_error;
};

// Runs every batch the batcher hands out and stores each in `writer`; calls
// writer.finish() at the end (timed into `store` and `store_exposed`).
// Exceptions from the backend, batcher or writer propagate (the caller
// checkpoints what is finished); see on_error. `stop_requested` is also the
// batcher's stop (Batcher::set_stop), so a long decode ends promptly. A stop
// asked for while the last batch is stored does not undo the finished run.
PipelineStats run_pipeline(Batcher& batcher, Backend& backend, const RunOptions& ro, ResultsWriter& writer,
                           const PipelineHooks& hooks = {}, const PipelineOptions& opt = {});

}  // namespace stsweep
