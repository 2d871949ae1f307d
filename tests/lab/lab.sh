#!/usr/bin/env bash
# The rxe lab, one command (as root):
#
#   bash tests/lab/lab.sh [--full] [--suite trixie-backports|bookworm] [--perftest bookworm|trixie]
#                         [--only TEXT] [--no-rdma-core]
#
# Installs what it needs with apt, builds the project's tools, builds the
# guest from Debian's packages (kernel from SUITE, default trixie-backports;
# bookworm's perftest 4.5 and rdma-core from this host, or with --perftest
# trixie, trixie's perftest 25.01 and rdma-core), creates the network
# namespace `rxelab` with bridge labbr0 (198.18.0.0/24, fd00:4791::/64),
# boots the guest with qemu TCG on it and runs the interop cases both ways,
# each captured with tcpdump and checked with roce-dump --check. Without
# --full it runs the subset (every tool once in each direction). Prints the
# pass/fail table; exits non-zero if any case failed.
#
# The rdma-core cases (labels `rdma-core: `) need the provider's `rdma-core`
# feature and the examples' `rdma-core` feature: lab.sh builds the backend's
# test executable (provider/tests/rdma_core.rs), libodp_preload.so and the
# tools with that feature in target/rdma-core, pushes them into the guest,
# runs the tests there on rxe0 and the tools against ours on the host. If
# they do not build, lab.sh stops; --no-rdma-core leaves these cases out.
# With --perftest trixie they are left out (that guest has only trixie's
# librxe, and the binaries are built against this host's rdma-core).
#
# Downloads and the
# initramfs are cached in $LAB_CACHE (default target/lab); outputs go to
# target/lab/runs/<time>.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
suite=trixie-backports
perftest=bookworm
rdma_core=1
runner_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --suite) suite=$2; shift 2 ;;
        --perftest) perftest=$2; shift 2 ;;
        --full) runner_args+=(--full); shift ;;
        --only) runner_args+=(--only "$2"); shift 2 ;;
        --no-rdma-core) rdma_core=0; shift ;;
        *) echo "lab.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
source tests/lab/common.sh
lab_require_root lab.sh

# Builds the rdma-core cases' binaries in their own target folder TARGET
# (the normal build stays untouched); sets rc_tests to the test executable.
build_rdma_core() {
    local target=$1 json
    json=$(mktemp)
    # The failure message, whichever build fails.
    local why="lab.sh: the rdma-core cases cannot be built (cargo's errors above: the provider's
  or the examples' feature rdma-core, or odp/preload); run lab.sh --no-rdma-core to leave them out"
    if ! CARGO_TARGET_DIR=$target nice -n 10 cargo test --release -q -p provider --features rdma-core \
        --test rdma_core --no-run --message-format=json > "$json"; then
        jq -r 'select(.reason == "compiler-message") | .message.rendered' "$json" >&2 || true
        rm -f "$json"
        echo "$why" >&2
        exit 2
    fi
    rc_tests=$(jq -r 'select(.reason == "compiler-artifact" and .target.name == "rdma_core"
        and .profile.test == true) | .executable // empty' "$json" | tail -n1)
    rm -f "$json"
    [ -x "$rc_tests" ] || { echo "lab.sh: no rdma_core test executable in cargo's output" >&2; exit 2; }
    CARGO_TARGET_DIR=$target nice -n 10 cargo build --release -q -p odp-preload \
        || { echo "$why" >&2; exit 2; }
    CARGO_TARGET_DIR=$target nice -n 10 cargo build --release -q -p examples --features rdma-core --bins \
        || { echo "$why" >&2; exit 2; }
}
cache=${LAB_CACHE:-$repo/target/lab}
lab_install_needs

nice -n 10 cargo build --release -q -p examples -p integration-tests -p srxe-ibverbs --bins
nice -n 10 cargo build --release -q -p srxe-ibverbs --lib
if [ "$perftest" = trixie ] && [ $rdma_core = 1 ]; then
    echo "lab.sh: --perftest trixie: the rdma-core cases are left out (the guest has only trixie's librxe)" >&2
    rdma_core=0
fi
if [ $rdma_core = 1 ]; then
    build_rdma_core "$repo/target/rdma-core"
    runner_args+=(--rdma-core-tests "$rc_tests" --rdma-core-tools "$repo/target/rdma-core/release"
        --odp-preload "$repo/target/rdma-core/release/libodp_preload.so")
fi
lab_build_guest "$cache" "$suite" "$perftest"
kernel=$lab_kernel initrd=$lab_initrd version=$lab_version
case $suite in bookworm) runner_args+=(--no-kernel-odp) ;; esac

ns=rxelab
lab_claim_netns "$ns" lab.sh
out=$cache/runs/$(date +%Y%m%d-%H%M%S)-$version-perftest-$perftest
echo "lab.sh: kernel $version, outputs in $out" >&2
ip netns exec "$ns" "$repo/target/release/rxe-lab" cases --kernel "$kernel" --initrd "$initrd" \
    --ifup "$repo/tests/lab/ifup" --tools "$repo/target/release" --out "$out" "${runner_args[@]}"
