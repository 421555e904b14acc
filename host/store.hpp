// The results file (docs/RESULTS.md): one HDF5 file per run, one row per trial.
//
// Columns: every trial parameter (param_specs()), every scalar metric
// (scalar_metric_names(), `status` as int8 flags), the curves curve_<name> and
// `step` as (trial, checkpoint). `trial` and `checkpoint` are dimension scales,
// so xarray.open_dataset(path, engine="h5netcdf") opens it with no options.
//
// Crash safety: OUT.h5 is only ever replaced whole, by rename of a finished,
// fsynced copy (a "checkpoint"). Between checkpoints each finished batch is
// appended to OUT.h5.journal (checksummed records, fdatasync per batch). After
// kill -9 at any moment OUT.h5 is the last checkpoint (it opens) and the journal
// holds everything since; `--resume` folds the journal in and continues.
#pragma once

#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend.hpp"
#include "params.hpp"
#include "result.hpp"
#include "sweep.hpp"

namespace stsweep {

// --- columns ------------------------------------------------------------------
enum class ColType : char { i8 = 'b', i64 = 'i', f64 = 'f', str = 's' };
struct Column {
  std::string name;  // dataset name
  ColType type;
  bool curve;        // 2-D (trial, checkpoint)
  std::string doc;
  std::string key;   // dotted sweep key for parameters, "" for metrics
};
// Parameters (param_specs order), then `status` and the scalar metrics, then
// `step` and the curves. The layout of every file this engine writes.
const std::vector<Column>& store_columns();
int store_column_index(const std::string& name);  // -1 when absent
// An integer metric (steps_run, best_step, baseline_best_step, zero_loss): -1
// there means "no value" (a row not run, or no twin). The file says so with a CF
// `missing_value` attribute, so xarray reads these as floats with NaN, and
// summary leaves such rows out as it does NaN.
bool int_column_has_missing(const Column& c);
// A digest of the column names and types (files and journals carry it).
std::string store_schema_digest();

// Rows in column form: what batches, journal records, merges and reads move.
struct RowBlock {
  std::vector<int64_t> trial;  // ids, one per row
  int C = 0;                   // curve width (checkpoints) of this block
  // One per store_columns() entry: ints (i8 and i64) in i, floats in f,
  // strings in s. Curves hold rows * C values, row-major, padded with NaN (-1 for step).
  struct Data {
    std::vector<int64_t> i;
    std::vector<double> f;
    std::vector<std::string> s;
  };
  std::vector<Data> cols;

  size_t rows() const { return trial.size(); }
  // An empty block with storage for every column (or only `which`, by index).
  static RowBlock empty(int C);
  // Rows of one finished batch.
  static RowBlock from_batch(const Batch& b, const std::vector<TrialResult>& r);
  void append(const RowBlock& o);  // widens curves when o.C > C
  void widen(int newC);
};

// --- root attributes ----------------------------------------------------------
struct Session {  // one `run` invocation that wrote into the file
  std::string start_time, end_time, backend, device, host, precision, engine_version, git_commit;
  std::string id;  // random per session (since session 15): a journal names the session that wrote it
  double wall_seconds = 0, compute_seconds = 0;
  // Time in the results store (opening, journal writes, folds) and the part
  // of it not overlapped with training, as the run loop measured them up to
  // the file's last update (a session's final fold is not in its own file).
  double store_seconds = 0, store_exposed_seconds = 0;
  int64_t trials = 0;  // rows it finished
};
struct FileHeader {
  std::string format = "stsweep-results 1";
  std::string schema;  // store_schema_digest()
  std::string sweep_json, sweep_hash, sweep_name;
  uint64_t sweep_seed = 0;
  int64_t sweep_trials = 0;          // trials in the whole sweep
  std::string shard;                 // "I/N", or "merged: 0/3,1/3,2/3"
  std::vector<IdRange> ranges;       // trial ids held, ascending, disjoint
  std::string file_id;               // random, new per created file (journals carry it)
  int64_t generation = 0;            // +1 per checkpoint
  double checkpoint_seconds = 0;     // how long the last checkpoint took (0: none yet, or a file before session 15)
  std::vector<Session> sessions;
  // Counts by status (kept current at each checkpoint).
  int64_t n_pending = 0, n_done = 0, n_diverged = 0, n_failed = 0;

  int64_t rows() const;
  // The ids held as text, "0..9, 20..29" ("none" for an empty shard).
  std::string ids_text() const;
  // A merge of only some shards ("merged:...") is never complete: the sweep
  // has trials it does not hold (until session 13 such a file said complete).
  bool partial_merge() const { return shard.rfind("merged:", 0) == 0; }
  bool complete() const { return n_pending == 0 && n_failed == 0 && rows() > 0 && !partial_merge(); }
  // Joined over sessions ("cpu", "cpu,cuda"), first start / last end, sums.
  std::string backends() const, devices() const, hosts() const, precisions() const;
  std::string start_time() const, end_time() const;
  double wall_seconds() const, compute_seconds() const, store_seconds() const, store_exposed_seconds() const;
};

// --- the HDF5 file --------------------------------------------------------------
// Not thread-safe (Debian's libhdf5 is not): use from one thread.
class H5Results {
 public:
  ~H5Results();
  H5Results(H5Results&&) noexcept;
  H5Results& operator=(H5Results&&) noexcept;

  // A new file with all rows of `h.ranges` pending. Written to `path`
  // directly; callers that need atomicity write a temporary and rename.
  static H5Results create(const std::string& path, const FileHeader& h, int curve_chunk = 32);
  static H5Results open(const std::string& path, bool writable);

  const FileHeader& header() const { return h_; }
  FileHeader& header() { return h_; }
  int64_t rows() const { return h_.rows(); }
  int checkpoints() const { return C_; }  // current width of the curves
  // Row index of a trial id (-1 when the file does not hold it).
  int64_t row_of(int64_t id) const;

  // Writes the rows (any order, ids within ranges); widens curves as needed.
  void write(const RowBlock& b);
  // Reads rows [row0, row0 + n). `which` = column indices (empty: all).
  RowBlock read(int64_t row0, int64_t n, const std::vector<int>& which = {}) const;
  std::vector<int8_t> read_status(int64_t row0, int64_t n) const;
  // Recount statuses from the file (streams the status column).
  void recount();
  // Writes the header attributes (counts, sessions, generation ...).
  void write_header();
  void close();  // flushes and closes; throws on failure (disk full)

 private:
  H5Results() = default;
  void read_and_check_structure();  // open(): header and datasets, or an InputError naming what is wrong
  struct Impl;
  std::unique_ptr<Impl> impl_;
  FileHeader h_;
  int C_ = 0;
  std::string path_;
};

// Refuses an output path that cannot work, before anything is written
// (InputError naming -o): empty, a directory, an existing file that is not a
// regular file (a device or FIFO --force would replace), a directory that is
// missing or not writable. run, merge and export check -o with it.
void check_output_path(const std::string& path, const std::string& option = "-o");

// --force replaces an existing file only when it is an HDF5 file (a results
// file or a trial export): a sweep JSON or notes given as the output by
// mistake are refused (InputError naming `option`) and kept.
void check_force_replaces(const std::string& path, const std::string& option);

// `path` with symbolic links in its last component followed (a dangling link
// gives its target's path): a results file reached through a link is written,
// journaled and locked at its target (OUT.journal, OUT.tmp and the rename of a
// checkpoint are the target's), so a link and its target are one file.
std::string resolve_link(const std::string& path);
// The journal of the results file at `path` (through links): PATH.journal.
std::string journal_of(const std::string& path);

// --- the run-time writer: journal + checkpoints ----------------------------------
struct WriterOptions {
  std::string path;                // OUT.h5
  bool resume = false, force = false;
  std::string shard;               // "I/N"
  IdRange range;
  std::string backend, device, precision;
  double checkpoint_every = 30;    // seconds between checkpoints (at least)
};

class ResultsWriter {
 public:
  // Creates OUT.h5 (all rows pending), or resumes it: checks that it belongs
  // to this sweep and shard (InputError otherwise), folds the journal in.
  // Takes an exclusive lock on OUT.h5.journal (a second writer fails).
  static std::unique_ptr<ResultsWriter> start(const Sweep& sweep, const WriterOptions& opt);
  ~ResultsWriter();

  const FileHeader& header() const;
  // True when trial `id` needs no run (done or diverged). Fast, no I/O.
  bool final(int64_t id) const;
  int64_t remaining() const;     // rows still to run at start
  int64_t resumed_rows() const;  // rows folded in from a previous journal
  std::vector<std::string> notes() const;  // what start() did, for the user

  // Appends one finished batch to the journal (fdatasync'd), then checkpoints
  // when one is due. `compute_seconds` is the backend's time for it.
  void append(const RowBlock& rows, double compute_seconds);
  // The session's store time so far (run_pipeline's measure; written with
  // the session at the next update of the file).
  void set_store_seconds(double store, double exposed);
  void checkpoint();  // folds the journal into OUT.h5 (atomic replace)
  // Checkpoints when the journal holds rows and the last checkpoint took at
  // most `budget_seconds` (the first one is always tried); true when it did.
  // For folding in the shadow of a GPU batch, so that finish() has little left.
  bool checkpoint_within(double budget_seconds);
  // Final checkpoint; removes the journal when every row is final.
  void finish();
  // How long the last checkpoint took (0 before the first): a stop skips its
  // checkpoint when this is over the run's --stop-checkpoint-limit.
  double last_checkpoint_seconds() const;
  // fdatasync of the journal: what a stop does instead of a checkpoint.
  void sync_journal();
  int64_t journal_rows() const;  // rows journaled since the last checkpoint
  // Called before each fold of append, checkpoint, checkpoint_within and
  // finish (begin = true, `rows` journaled, seconds 0) and after it (begin =
  // false, the seconds it took), not when it throws: run's progress bar says
  // a checkpoint is being written (it copies the whole file: about 2 s per
  // 10^6 rows) and --progress jsonl logs one "checkpoint" line per fold.
  using CheckpointHook = std::function<void(bool begin, int64_t rows, double seconds)>;
  void set_checkpoint_hook(CheckpointHook hook);

  struct Impl;
 private:
  std::unique_ptr<Impl> impl_;
};

// Reads the valid records of a journal (for `info`): rows and file id.
struct JournalSummary {
  bool exists = false, valid_header = false;
  bool corrupt = false;  // a record that checksums but does not decode (not a torn write)
  std::string file_id;
  int64_t generation = -1;  // the file's checkpoint the journal continues (only that one's rows count)
  int64_t records = 0, rows = 0, torn_bytes = 0;
  // Finished rows that belong to `h`'s file at its current checkpoint and are
  // not in it yet (a run is going on, or --resume would fold them in).
  bool rows_waiting_for(const FileHeader& h) const {
    return exists && valid_header && file_id == h.file_id && generation == h.generation && rows > 0;
  }
};
JournalSummary inspect_journal(const std::string& journal_path);
// The checksum a journal record carries over its payload (tests craft records with it).
uint64_t journal_record_checksum(const char* p, size_t n);

// --- merge -------------------------------------------------------------------------
// Combines shard files of one sweep into `out` (rows sorted by trial id).
// InputError for different sweeps, schemas or overlapping trials.
struct MergeReport {
  int64_t rows = 0;
  std::vector<std::string> notes;
};
MergeReport merge_results(const std::string& out, const std::vector<std::string>& shards,
                          bool force);

// --- a plain file of named arrays (`stsweep export`) -------------------------------
// An HDF5 file of contiguous, uncompressed datasets and root attributes, written
// in one go. A name with '/' puts the dataset in a group (created on demand).
// Values are row-major; `dims` = {} is a scalar, {n} a vector, {rows, cols} a matrix.
class H5ArrayFile {
 public:
  static H5ArrayFile create(const std::string& path);  // truncates an existing file
  ~H5ArrayFile();
  H5ArrayFile(H5ArrayFile&&) noexcept;
  H5ArrayFile& operator=(H5ArrayFile&&) noexcept;

  void attr(const std::string& name, const std::string& v);
  void attr(const std::string& name, double v);
  void attr(const std::string& name, int64_t v);
  void attr(const std::string& name, const std::vector<int64_t>& v);
  // A float64 / int64 dataset; `doc` becomes its `long_name` attribute.
  void f64(const std::string& name, const std::vector<uint64_t>& dims, const double* v,
           const std::string& doc);
  void i64(const std::string& name, const std::vector<uint64_t>& dims, const int64_t* v,
           const std::string& doc);
  void close();  // flushes and closes; throws on failure (disk full)

 private:
  H5ArrayFile() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
};

// Time stamps and small helpers shared with the CLI.
std::string utc_now_iso();
std::string utc_iso(std::time_t t);  // "2026-12-03T12:15:25Z"
std::string host_name();

}  // namespace stsweep
