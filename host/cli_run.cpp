// stsweep run FILE -o OUT.h5: sweep -> batches -> backend -> results file.
//
// The main thread owns the sweep, the batcher and the results file (HDF5 is
// not thread-safe here); the loop itself (one worker thread runs the backend
// on a batch while the main thread stores the previous one and prepares the
// next) is run_pipeline (pipeline.hpp). This file adds the options, the
// backend choice, signals and the closing report.
#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>

#include "backend.hpp"
#include "batching.hpp"
#include "cli.hpp"
#include "multi_backend.hpp"
#include "pipeline.hpp"
#include "problem.hpp"
#include "progress.hpp"
#include "store.hpp"
#include "sweep.hpp"

namespace stsweep::cli {
namespace {

// The default of --stop-checkpoint-limit, in seconds (the resume command repeats any other).
constexpr double kStopCheckpointLimit = 10;

struct RunArgs {
  std::string file, out, backend = "auto", shard = "0/1", precision = "f32", progress = "auto";
  std::string devices;  // --devices LIST, when devices_given (else one GPU, device 0)
  bool devices_given = false;
  bool resume = false, force = false;
  int threads = 0;
  size_t batch_size = 0;
  double checkpoint_every = 30;
  double stop_checkpoint_limit = kStopCheckpointLimit;
  double teacher_cache_mb = kTeacherCacheDefaultMb;
  double setup_cache_mb = kSetupCacheDefaultMb;
};

volatile std::sig_atomic_t g_signal = 0;
std::atomic<long long> g_signal_ns{0};  // when the first came (lock-free: safe in a handler)
static_assert(std::atomic<long long>::is_always_lock_free);
constexpr long long kSameSignalNs = 1'000'000'000;
long long monotonic_ns() {  // clock_gettime is async-signal-safe
  timespec t{};
  ::clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<long long>(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
}
extern "C" void on_signal(int sig) {
  const long long now = monotonic_ns();
  // One request often arrives twice: GNU timeout signals the child and then
  // its process group, srun and SLURM each forward one (a scale review: 1 of
  // 10 `timeout` runs skipped the checkpoint). Within a second it is the same.
  if (g_signal != 0 && now - g_signal_ns.load() < kSameSignalNs) return;
  if (g_signal != 0) {  // a second signal: leave now (the journal is safe)
    const char msg[] = "\nstsweep: second signal, exiting now; finish with --resume\n";
    ssize_t rc = ::write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)rc;
    ::_exit(kExitFailure);
  }
  g_signal_ns.store(now);
  g_signal = sig;
}
const char* signal_name(int sig) { return sig == SIGINT ? "SIGINT" : sig == SIGUSR1 ? "SIGUSR1" : "SIGTERM"; }

// SIGINT, SIGTERM and SIGUSR1 stop the run the same way (checkpoint, exit 1,
// the resume command): SIGUSR1 is what `#SBATCH --signal=USR1@N` sends before a
// job's time limit (without the B: that tools/slurm-sweep uses, every process
// of the job gets it; its default action killed stsweep without a
// checkpoint). SIGPIPE is ignored: a closed stderr pipe (`2>&1 | head`) makes
// progress writes fail instead of killing the run between checkpoints.
void install_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGUSR1, &sa, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

// A word for a shell command line: quoted when it holds anything but
// [A-Za-z0-9_./:=,+-] (a path with a space must paste as one word).
std::string shell_word(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./:=,+-") ==
                        std::string::npos)
    return s;
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string resume_command(const RunArgs& a) {
  std::string c = "stsweep run " + shell_word(a.file) + " -o " + shell_word(a.out);
  if (a.shard != "0/1") c += " --shard " + a.shard;
  if (a.precision != "f32") c += " --precision " + a.precision;
  if (a.stop_checkpoint_limit != kStopCheckpointLimit) c += " --stop-checkpoint-limit " + shortest_text(a.stop_checkpoint_limit);
  return c + " --resume";
}

// The backend for `--devices LIST` (not with --backend cpu): one CUDA backend
// per listed device, several as a MultiBackend. No GPU at all with --backend
// auto: the CPU backend, `why` set. A listed device that does not exist or
// cannot be used is a failure (exit 1), as a missing GPU is for --backend cuda:
// the same command may work on another machine.
std::unique_ptr<Backend> make_device_backends(const RunArgs& a, const RunOptions& ro, const DeviceList& list,
                                              std::string* why, size_t* n_devices) {
  const int count = cuda_device_count();
  if (count == 0) {
    // No GPU: a device-0 attempt says why ("built without CUDA", the driver's error).
    if (make_cuda_backend(ro, why, 0) != nullptr || why->empty()) *why = "no CUDA device";
    if (a.backend == "cuda")
      throw std::runtime_error("--backend cuda --devices " + a.devices + ": no usable GPU (" + *why + ")");
    *n_devices = 1;
    return make_cpu_backend(ro);
  }
  std::vector<int> ordinals = list.ordinals;
  if (list.all)
    for (int d = 0; d < count; ++d) ordinals.push_back(d);
  for (int d : ordinals)
    if (d >= count)
      throw std::runtime_error("--devices " + a.devices + ": CUDA device " + std::to_string(d) +
                               " does not exist (this machine has " + std::to_string(count) + " device" +
                               (count == 1 ? "" : "s") + ": 0.." + std::to_string(count - 1) + ")");
  // Host threads (set-up) are shared among the devices when --threads is 0.
  RunOptions per = ro;
  if (ordinals.size() > 1 && per.threads == 0) {
    per.threads = std::max(1, usable_cores() / static_cast<int>(ordinals.size()));
  }
  std::vector<std::unique_ptr<Backend>> parts;
  std::vector<std::string> labels;
  for (int d : ordinals) {
    std::string w;
    auto b = make_cuda_backend(ordinals.size() > 1 ? per : ro, &w, d);
    if (!b) throw std::runtime_error("--devices " + a.devices + ": CUDA device " + std::to_string(d) + ": " + w);
    parts.push_back(std::move(b));
    labels.push_back(std::to_string(d));
  }
  why->clear();
  *n_devices = parts.size();
  if (parts.size() == 1) return std::move(parts[0]);
  return std::make_unique<MultiBackend>(std::move(parts), std::move(labels));
}

int run_main(const RunArgs& a) {
  // From the start: SLURM may preempt (SIGTERM) a job that is still starting.
  install_handlers();
  Sweep sweep = Sweep::from_file(a.file);
  for (const auto& u : sweep.unmatched_exclude())
    std::cerr << "stsweep: warning: " << u.path << " (" << u.entry << ") drops no trial of "
              << (u.subgrid.empty() ? std::string() : u.subgrid + " of ") << a.file << " (a misspelt value, or a combination the grid never makes)\n";
  {  // --force would replace the sweep file with the results
    std::error_code ec;
    if (std::filesystem::exists(a.out, ec) && std::filesystem::equivalent(a.file, a.out, ec))
      throw InputError("-o", a.out + " is the sweep file; give the results another name");
  }
  // STSWEEP_PROGRESS_INTERVAL, read now: a malformed value is exit 2 before any file.
  const double progress_every = progress_interval(kProgressInterval);
  Shard shard = parse_shard(a.shard);
  IdRange range = shard_range(sweep.count(), shard);
  // Values that do not combine are bad input: say so before a file exists.
  check_trials(sweep, range);

  RunOptions ro;
  ro.sweep_seed = sweep.seed();
  ro.precision = a.precision == "f64" ? Precision::f64 : Precision::f32;
  ro.threads = a.threads;
  reset_teacher_cache(static_cast<size_t>(std::min(a.teacher_cache_mb * 1048576.0, 0x1p62)));
  reset_setup_cache(static_cast<size_t>(std::min(a.setup_cache_mb * 1048576.0, 0x1p62)));

  // The backend first: a missing GPU must not leave a results file behind.
  std::unique_ptr<Backend> backend;
  std::string why;
  size_t n_devices = 1;
  if (a.devices_given) {
    if (a.backend == "cpu")
      throw InputError("--devices", "selects CUDA devices; it cannot be used with --backend cpu");
    const DeviceList list = parse_device_list(a.devices);
    backend = make_device_backends(a, ro, list, &why, &n_devices);
  } else {
    backend = choose_backend(a.backend, ro, &why);
  }
  std::cerr << "stsweep: backend " << backend->name() << ": " << backend->device();
  if (a.backend == "auto" && backend->name() == "cpu" && !why.empty()) {
    std::cerr << " (no GPU: " << why;
    if (a.devices_given) std::cerr << "; --devices " << a.devices << " ignored";
    std::cerr << ")";
  }
  std::cerr << "\n";

  WriterOptions wo;
  wo.path = a.out;
  wo.resume = a.resume;
  wo.force = a.force;
  wo.shard = std::to_string(shard.index) + "/" + std::to_string(shard.count);
  wo.range = range;
  wo.backend = backend->name();
  wo.device = backend->device();
  wo.precision = a.precision;
  wo.checkpoint_every = a.checkpoint_every;
  if (g_signal) {  // nothing written yet
    std::fprintf(stderr, "stsweep: interrupted by %s before the run started; nothing was written\n",
                 signal_name(g_signal));
    return kExitFailure;
  }
  const auto open_t = std::chrono::steady_clock::now();
  auto writer = ResultsWriter::start(sweep, wo);
  const double open_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - open_t).count();
  for (const auto& n : writer->notes()) std::cerr << "stsweep: " << n << "\n";

  const int64_t rows = writer->header().rows();
  const int64_t todo = writer->remaining();
  if (todo == 0) {
    writer->finish();
    std::cout << "nothing to do: all " << rows << " trials of shard " << wo.shard << " in " << a.out
              << " are finished\n";
    return kExitOk;
  }
  // Default: 4096 trials for each GPU, which then gets its share and trains it
  // in waves of 1024, setting up the next while the device trains one; on the
  // CPU, 16 trials a thread.
  const size_t batch_size =
      a.batch_size > 0 ? a.batch_size
                       : default_batch_size(backend->name() == "cuda", thread_count(a.threads),
                                            static_cast<int>(n_devices));
  std::cerr << "stsweep: sweep '" << sweep.name() << "': " << todo << " of " << rows << " trials to run (shard "
            << wo.shard << ", ids "
            << (range.end > range.begin ? std::to_string(range.begin) + ".." + std::to_string(range.end - 1)
                                        : std::string("none: the shard is empty"))
            << "), batches of up to " << batch_size << " trials" << (a.batch_size > 0 ? "" : " (the default; --batch-size)")
            << "\n";
  Batcher batcher(sweep, range, [&](uint64_t id) { return writer->final(static_cast<int64_t>(id)); }, batch_size);
  Progress progress(progress_mode(a.progress), todo, rows - todo, progress_every);
  writer->set_checkpoint_hook([&progress](bool begin, int64_t journaled, double seconds) {
    if (begin) progress.checkpoint_begins();
    else progress.checkpoint_ends(journaled, seconds);
  });

  auto interrupted = [&](int64_t in_flight) {
    progress.stopping();  // the bar stays away (the stop's messages follow); jsonl logs the stop's checkpoint
    const char* sig = signal_name(g_signal);
    std::string err;
    // A checkpoint copies the whole file: at 10^8 rows that can outlast a
    // SLURM grace period, and a SIGKILL mid-copy wastes it. When the last one
    // took longer than the limit, only sync the journal (as safe: --resume folds it).
    const double last = writer->last_checkpoint_seconds();
    const int64_t journaled = writer->journal_rows();
    const bool fold = journaled > 0 && a.stop_checkpoint_limit > 0 && last <= a.stop_checkpoint_limit;
    try {
      if (fold) writer->checkpoint();
      else if (journaled > 0) writer->sync_journal();
    } catch (const std::exception& e) {
      err = std::string(fold ? "the checkpoint failed: " : "syncing the journal failed: ") + e.what();
    }
    const FileHeader& h = writer->header();
    std::string waiting;
    if (!fold && err.empty() && journaled > 0) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.3g", last);
      waiting = " and " + std::to_string(journaled) + " more trial rows in " + journal_of(a.out) + " (not folded in: " +
                (a.stop_checkpoint_limit > 0 ? "the last checkpoint took " + std::string(buf) +
                                                   " s, more than --stop-checkpoint-limit " +
                                                   shortest_text(a.stop_checkpoint_limit) + " s"
                                             : std::string("--stop-checkpoint-limit 0")) +
                "; --resume folds them in; info counts them)";
    }
    std::fprintf(stderr,
                 "stsweep: interrupted by %s: %lld of %lld trials are finished in %s%s%s%s; %lld in flight were "
                 "dropped.\nstsweep: continue with: %s\n",
                 sig, (long long)(h.n_done + h.n_diverged), (long long)rows, a.out.c_str(), waiting.c_str(),
                 err.empty() ? "" : " (", err.empty() ? "" : (err + "; --resume recovers what the journal holds)").c_str(),
                 (long long)in_flight, resume_command(a).c_str());
    std::fflush(stderr);
    std::fflush(stdout);
    std::_Exit(kExitFailure);  // the worker may still be computing: do not wait for it
  };
  if (g_signal) interrupted(0);  // a signal while the file was being opened

  PipelineHooks hooks;
  hooks.stop_requested = [] { return g_signal != 0; };
  hooks.on_stop = interrupted;
  hooks.tick = [&progress] { progress.tick(); };
  hooks.progress = [&progress](int64_t n) { progress.update(n); };
  // Keeps what is finished: folds the journal into the file, or says where it is.
  auto keep_finished = [&] {
    progress.stopping();
    try {
      writer->checkpoint();
    } catch (const std::exception& x) {
      std::cerr << "stsweep: could not update " << a.out << " (" << x.what() << "); " << a.out
                << ".journal keeps the finished trials for --resume\n";
    }
  };
  // A store error (disk full, a file-size limit) or a trial the sweep check did
  // not sample failing to combine, with a batch training: checkpoint, report
  // and exit now, as a signal does, instead of waiting for the batch (which
  // would be dropped) in the future's destructor.
  hooks.on_error = [&](std::exception_ptr e) {
    keep_finished();
    const int code = report_error(e);
    if (code == kExitBadInput)  // a trial that does not combine: --resume would meet it again
      std::cerr << "stsweep: a batch in flight was dropped; fix the sweep file (or exclude that trial), then "
                   "finish the other trials with: "
                << resume_command(a) << "\n";
    else
      std::cerr << "stsweep: a batch in flight was dropped; continue with: " << resume_command(a) << "\n";
    std::fflush(stderr);
    std::fflush(stdout);
    std::_Exit(code);  // the worker may still be computing: do not wait for it
  };
  hooks.on_failed = [&](const TrialResult& r) {
    progress.clear();
    std::cerr << "stsweep: trial " << r.trial << " failed" << (r.message.empty() ? "" : ": " + r.message) << "\n";
  };
  PipelineOptions po;
  po.fold_while_training = backend->name() != "cpu";  // a GPU leaves the host's cores free
  po.open_seconds = open_s;  // opening the file ran before anything was training: all of it exposed
  PipelineStats ps;
  try {
    ps = run_pipeline(batcher, *backend, ro, *writer, hooks, po);
    writer->set_checkpoint_hook(nullptr);  // no fold is left to show
  } catch (...) {
    keep_finished();  // then main reports
    throw;
  }
  progress.finish();
  const FileHeader& h = writer->header();
  // Wall time from the opening of the file, which the store's time includes
  // (without it a run of a few seconds could show a store share above 100%).
  const double wall = progress.elapsed() + po.open_seconds;
  const double store = ps.store, exposed = ps.store_exposed;  // with opening the file (po.open_seconds)
  std::printf("stsweep: %lld trials on %s (%s), %s: %lld done, %lld diverged, %lld failed in %.1f s "
              "(%.1f trials/s; backend %.1f s; store %.3f s, %.3f s of it not overlapped with training = "
              "%.1f%% of wall)\n",
              (long long)ps.total, backend->name().c_str(), backend->device().c_str(), a.precision.c_str(),
              (long long)ps.done, (long long)ps.diverged, (long long)ps.failed, wall,
              wall > 0 ? ps.total / wall : 0.0, ps.compute, store, exposed, wall > 0 ? 100.0 * exposed / wall : 0.0);
  std::printf("results: %s (shard %s: %lld done, %lld diverged, %lld failed, %lld pending of %lld)\n", a.out.c_str(),
              h.shard.c_str(), (long long)h.n_done, (long long)h.n_diverged, (long long)h.n_failed,
              (long long)h.n_pending, (long long)h.rows());
  if (ps.unstable.count > 0)  // done rows, but not the monotone descent a reader assumes (a review found 14 of 256 unseen)
    std::printf("stsweep: note: %lld of the %lld done trials this run finished had a training loss that rose (loss_rise or "
                "baseline_loss_rise above %g, up to %.3g): unstable gradient descent that did not diverge; a "
                "smaller lr fixes it, or filter on those columns (docs/RESULTS.md; info counts the whole file)\n",
                (long long)ps.unstable.count, (long long)ps.done, kUnstableRise, ps.unstable.worst);
  if (const std::string tr = backend->time_report(); !tr.empty())
    std::printf("stsweep: %s time: %s\n", backend->name().c_str(), tr.c_str());
  const TeacherCacheStats tc = teacher_cache_stats();
  if (tc.trained + tc.reused + tc.elsewhere > 0) {
    // Host core-seconds: against the backend's time (x its threads on the
    // CPU), how much of the run the teachers took.
    std::printf("stsweep: trained teachers: %lld trained (%.1f s of host core time)", tc.trained, tc.train_seconds);
    if (tc.elsewhere > 0) std::printf(", %lld on the device", tc.elsewhere);
    std::printf(", %lld reused", tc.reused);
    if (tc.evicted > 0)
      std::printf("; %lld dropped for the --teacher-cache-mb budget (%g MB; more would reuse more)", tc.evicted,
                  a.teacher_cache_mb);
    std::printf("\n");
  }
  const SetupCacheStats sc = setup_cache_stats();
  if (sc.reused > 0 || sc.evicted > 0) {
    // Trials that differ only in what training reads share one set-up.
    std::printf("stsweep: set-up: %lld problems built, %lld trials copied a batch-mate's (they differ only in %s)",
                sc.built, sc.reused, setup_ignores_text().c_str());
    if (sc.moments_reused > 0)
      std::printf(", %lld of them its moments too (moment path)", sc.moments_reused);
    if (sc.evicted > 0)
      std::printf("; %lld dropped for the --setup-cache-mb budget (%g MB; more would reuse more)", sc.evicted,
                  a.setup_cache_mb);
    std::printf("\n");
  }
  if (h.n_failed > 0) {
    std::fprintf(stderr, "stsweep: %lld trials failed; rerun them with: %s\n", (long long)h.n_failed,
                 resume_command(a).c_str());
    return kExitFailure;
  }
  return kExitOk;
}

}  // namespace

std::unique_ptr<Backend> choose_backend(const std::string& backend, const RunOptions& ro, std::string* why) {
  if (backend == "cpu") return make_cpu_backend(ro);
  auto b = make_cuda_backend(ro, why);
  if (b) return b;
  if (backend == "cuda") throw std::runtime_error("--backend cuda: no usable GPU (" + *why + ")");
  return make_cpu_backend(ro);
}

void add_run_command(CLI::App& app, Registry& r) {
  auto a = std::make_shared<RunArgs>();
  CLI::App* sub = app.add_subcommand("run", "run a sweep's trials and write one HDF5 results file");
  sub->add_option("file", a->file, "sweep file (JSON)")->required();
  sub->add_option("-o,--output", a->out, "results file (HDF5), e.g. results/demo.h5")->required();
  sub->add_option("--backend", a->backend, "auto (CUDA when a GPU is usable, else CPU), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  sub->add_option("--shard", a->shard, "run shard I of N (0-based), e.g. 2/8");
  sub->add_flag("--resume", a->resume, "continue OUT.h5: run only the trials not finished (starts it if absent)");
  sub->add_flag("--force", a->force,
                "overwrite an existing OUT.h5 (without --resume); with --resume, accept a different --precision");
  sub->add_option("--threads", a->threads, "CPU threads (0: every core this process may run on, by its CPU affinity)")->check(count_check(0, 4096));
  sub->add_option("--precision", a->precision, "f32 or f64")->check(CLI::IsMember({"f32", "f64"}));
  CLI::Option* devices = sub->add_option("--devices", a->devices,
                  "CUDA devices: a comma list of ordinals (e.g. 0,1,3) or all; the trials of each batch are "
                  "shared among them (default: 0, one GPU; not with --backend cpu)");
  sub->add_option("--batch-size", a->batch_size,
                  "trials per batch (default: 16 per CPU thread and at least 64 on CPU, 4096 per device on CUDA)")
      ->check(kPositiveCount);
  sub->add_option("--progress", a->progress, "auto (bar on a terminal, else JSON lines), bar, jsonl or none; both show each checkpoint (a bar note; a jsonl \"checkpoint\" line with its seconds)")
      ->check(CLI::IsMember({"auto", "bar", "jsonl", "none"}));
  sub->add_option("--checkpoint-every", a->checkpoint_every,
                  "seconds between updates of OUT.h5 (at least; finished batches are journaled at once)")
      ->check(kFiniteNonNegative);
  sub->add_option("--stop-checkpoint-limit", a->stop_checkpoint_limit,
                  "on SIGTERM/SIGINT/SIGUSR1, fold the journal into OUT.h5 only when the last checkpoint took at "
                  "most this many seconds (default " + shortest_text(kStopCheckpointLimit) + "; 0: never), else leave it in OUT.h5.journal for --resume: "
                  "a checkpoint copies the whole file, which for a huge file can outlast a SLURM grace period")
      ->check(kFiniteNonNegative);
  sub->add_option("--setup-cache-mb", a->setup_cache_mb,
                  "memory for set-up problems kept for reuse: trials that differ only in " + setup_ignores_text() +
                      " share one set-up, copied (0: set up every trial afresh)")
      ->check(kFiniteNonNegative);
  sub->add_option("--teacher-cache-mb", a->teacher_cache_mb,
                  "memory for trained teachers kept for reuse: trials whose teacher training reads the same "
                  "inputs (seeds, data, widths, activation, label_noise, teacher.n_train/steps/lr) share one (0: "
                  "train every trial's own)")
      ->check(kFiniteNonNegative);
  r.add(sub, [a, devices] {
    a->devices_given = devices->count() > 0;
    return run_main(*a);
  });
}

}  // namespace stsweep::cli
