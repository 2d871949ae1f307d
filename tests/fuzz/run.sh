#!/usr/bin/env bash
# Runs every fuzz target (cargo-fuzz, libFuzzer, nightly toolchain) for a
# while on its committed corpus, and fails if any target finds a crash, a
# hang (an input running over 10 s), or a leak past 2 GiB.
#
#   tests/fuzz/run.sh [SECONDS [TARGET...]]
#
# SECONDS per target, 10 by default; TARGET among wire, device, capture,
# exchange (all by default). New inputs go to a scratch directory, not
# into the committed corpora; crash inputs are kept in
# target/fuzz-run/<target>/artifacts and named in the output. Installs
# cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

# The fuzz crates have target directories of their own (fuzz/target), and
# cargo-fuzz sets the flags it needs.
unset CARGO_TARGET_DIR RUSTFLAGS

seconds=${1:-10}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(wire device capture exchange)

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

# The crate (directory holding fuzz/) of each target.
crate_of() {
    case $1 in
        wire | device) echo provider ;;
        capture | exchange) echo examples ;;
        *) echo "unknown fuzz target: $1" >&2; return 1 ;;
    esac
}

failed=()
for target in "${targets[@]}"; do
    crate=$(crate_of "$target")
    scratch=$root/target/fuzz-run/$target
    rm -rf "$scratch"
    mkdir -p "$scratch/corpus" "$scratch/artifacts"
    echo "== $target: $seconds s on $crate/fuzz/corpus/$target"
    # The build is bounded by the outer timeout too (no input can make it
    # run longer; a first build takes about a minute per fuzz crate).
    if ! (cd "$crate" && timeout $((seconds + 600)) cargo +nightly fuzz run "$target" \
        "$scratch/corpus" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$scratch/artifacts/" -print_final_stats=1) \
        >"$scratch/log" 2>&1; then
        failed+=("$target")
        tail -n 40 "$scratch/log"
        echo "== $target FAILED: inputs in $scratch/artifacts, log in $scratch/log"
    else
        grep -E '^(#[0-9]+.*DONE|Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$scratch/log" || true
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz targets that failed: ${failed[*]}"
    exit 1
fi
echo "fuzz targets clean: ${targets[*]}"
