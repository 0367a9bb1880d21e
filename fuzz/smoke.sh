#!/usr/bin/env bash
# Smoke-run every libFuzzer target for a few seconds each (CI's fuzz step; docs/fuzzing.md).
# Works on the stable toolchain: `-s none` (sanitizers need nightly; all Ward code is
# #![forbid(unsafe_code)], so the properties and panics are what is being hunted, not memory
# errors). Each run starts from the committed seeds and every saved crash in regressions/, so a
# regression of a fixed crash fails this step at once. New corpus entries go to fuzz/corpus/
# (gitignored). Crashes land in fuzz/artifacts/<target>/ and fail the step.
#   FUZZ_SECONDS   per target (default 10)
#   FUZZ_TARGETS   space-separated subset (default: all)
set -euo pipefail
cd "$(dirname "$0")"
secs="${FUZZ_SECONDS:-10}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"
cargo fuzz build -s none
# The logs go here even when CARGO_TARGET_DIR puts the build elsewhere.
mkdir -p target
for t in $targets; do
  mkdir -p "corpus/$t"
  dirs=("corpus/$t")
  for d in "seeds/$t" "regressions/$t"; do [ -d "$d" ] && dirs+=("$d"); done
  printf '%-18s ' "$t"
  if ! cargo fuzz run -s none "$t" "${dirs[@]}" -- -max_total_time="$secs" -print_final_stats=1 \
      >"target/smoke-$t.log" 2>&1; then
    echo "FAILED"
    tail -n 60 "target/smoke-$t.log" >&2
    echo "fuzz target $t failed; the crashing input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units' "target/smoke-$t.log" | awk '{print $2 " runs"}'
done
