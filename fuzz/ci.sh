#!/usr/bin/env bash
# CI for the fuzz targets: build every target, then run each for a short while
# from its committed seeds. Fails on a crash (including a regression seed that
# crashes again). Skips with a message when no nightly toolchain is present.
#
#   fuzz/ci.sh                 # 45 s per target
#   FUZZ_SECONDS=60 fuzz/ci.sh
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-45}"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "SKIPPED: fuzz: no nightly toolchain (cargo +nightly --version failed)"
    exit 0
fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (takes about 5 minutes)"
    cargo install cargo-fuzz --locked
fi

cargo +nightly fuzz build

# Each run writes new inputs to a scratch corpus, never into fuzz/seeds.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

targets="$(cargo +nightly fuzz list)"
for target in $targets; do
    echo "fuzz: $target for ${seconds}s"
    mkdir -p "$scratch/$target" "fuzz/seeds/$target"
    log="$scratch/$target.log"
    if ! cargo +nightly fuzz run "$target" "$scratch/$target" "fuzz/seeds/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        grep -E -A4 'panicked|==ERROR|SUMMARY' "$log" >&2 || tail -n 40 "$log" >&2
        echo "fuzz: $target FAILED; the crashing input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E 'DONE|stat::number_of_executed_units|stat::average_exec_per_sec' "$log" || true
done
echo "fuzz: all targets ran clean"
