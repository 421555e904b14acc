// libFuzzer target for the results journal's reader (tools/fuzz journal;
// ctest `fuzz_journal_reader`). The fuzzer's bytes become the payload of one
// record with intact framing and checksum, behind a valid journal header, so
// every input reaches the record decoder (the checksum would stop random
// damage long before). The contract: `inspect_journal` (what `--resume` and
// `merge` run first) reads any payload without a crash, undefined behaviour
// (ASan, UBSan) or a large allocation (tools/fuzz passes -malloc_limit_mb):
// a record it cannot decode ends the journal, as a torn one does.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "store.hpp"

using namespace stsweep;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = "fuzz_journal.journal";  // in the fuzzer's working folder
  std::string j("STSWJRN1", 8);
  auto put = [&](const auto& v) { j.append(reinterpret_cast<const char*>(&v), sizeof v); };
  const std::string head = R"({"file_id":"f","sweep_hash":"h","schema":"s","generation":0})";
  put(static_cast<uint32_t>(head.size()));
  j += head;
  put(journal_record_checksum(head.data(), head.size()));
  const std::string payload(reinterpret_cast<const char*>(data), size);
  put(uint32_t{0x52575354});  // "TSWR"
  put(uint32_t{0});
  put(static_cast<uint64_t>(payload.size()));
  put(journal_record_checksum(payload.data(), payload.size()));
  j += payload;
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << j;
  }
  const JournalSummary s = inspect_journal(path);
  if (!s.valid_header || s.records > 1) {
    std::fprintf(stderr, "fuzz_journal: header %d, %lld records\n", s.valid_header ? 1 : 0,
                 static_cast<long long>(s.records));
    std::abort();
  }
  return 0;
}
