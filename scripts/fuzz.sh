#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/*.rs) for a bounded time.
#
#   scripts/fuzz.sh SECONDS [TARGET...]
#
# SECONDS per target (default 60) is passed to libFuzzer as -max_total_time.
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Each target starts from its committed seeds (fuzz/seeds/<target>/, read
# only) plus a working corpus in fuzz/target/corpus-work/<target>/ (ignored
# by git; it grows across runs), so the committed seeds stay small.
# Crashes are written to fuzz/artifacts/<target>/ by cargo-fuzz. Prints one
# line per target (executions, seconds, result) and exits non-zero if any
# target crashed. Set FUZZ_NICE=1 to run libFuzzer under `nice -n 19`, and
# FUZZ_RUNS=N to also stop a target after N executions (whichever comes first).
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
extra=()
if [ -n "${FUZZ_RUNS:-}" ]; then
  extra=(-runs="$FUZZ_RUNS")
fi
nice_cmd=()
if [ "${FUZZ_NICE:-0}" = 1 ]; then
  nice_cmd=(nice -n 19)
fi

# One build for all targets (same flags as `cargo fuzz run`).
"${nice_cmd[@]}" cargo +nightly fuzz build

mkdir -p fuzz/target/logs
failed=()
summary=()
for t in "${targets[@]}"; do
  work="fuzz/target/corpus-work/$t"
  log="fuzz/target/logs/$t.log"
  mkdir -p "$work"
  echo "== fuzz $t for ${secs}s (log: $log)"
  status=0
  "${nice_cmd[@]}" cargo +nightly fuzz run "$t" "$work" "fuzz/seeds/$t" -- \
    -max_total_time="$secs" -timeout=30 -print_final_stats=1 "${extra[@]}" >"$log" 2>&1 || status=$?
  if [ "$t" = checkpoint_load ]; then
    # Its temporary checkpoint directory (never dropped: libFuzzer exits).
    rm -rf /dev/shm/moe-fuzz-ckpt* 2>/dev/null || true
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  took=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -n 1)
  if [ "$status" -eq 0 ]; then
    result=ok
  else
    result="CRASH (exit $status)"
    failed+=("$t")
    grep -E "panicked|ERROR: libFuzzer|SUMMARY|Test unit written" "$log" | head -n 8 || true
  fi
  summary+=("$(printf '%-16s %12s execs %6s s  %s' "$t" "${execs:-?}" "${took:-?}" "$result")")
done

echo "== fuzz summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
