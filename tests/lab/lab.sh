#!/usr/bin/env bash
# The rxe lab, one command (as root):
#
#   bash tests/lab/lab.sh [--full] [--suite trixie-backports|bookworm] [--perftest bookworm|trixie]
#                         [--only TEXT]
#
# Installs what it needs with apt, builds the project's tools, builds the
# guest from Debian's packages (kernel from SUITE, default trixie-backports;
# bookworm's perftest 4.5 and rdma-core from this host, or with --perftest
# trixie, trixie's perftest 25.01 and rdma-core), creates the network
# namespace `rxelab` with bridge labbr0 (198.18.0.0/24, fd00:4791::/64),
# boots the guest with qemu TCG on it and runs the interop cases both ways,
# each captured with tcpdump and checked with roce-dump --check. Without
# --full it runs the subset (every tool once in each direction). Prints the
# pass/fail table; exits non-zero if any case failed. Downloads and the
# initramfs are cached in $LAB_CACHE (default target/lab); outputs go to
# target/lab/runs/<time>.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
suite=trixie-backports
perftest=bookworm
runner_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --suite) suite=$2; shift 2 ;;
        --perftest) perftest=$2; shift 2 ;;
        --full) runner_args+=(--full); shift ;;
        --only) runner_args+=(--only "$2"); shift 2 ;;
        *) echo "lab.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
source tests/lab/common.sh
lab_require_root lab.sh
cache=${LAB_CACHE:-$repo/target/lab}
lab_install_needs

nice -n 10 cargo build --release -q -p examples -p integration-tests -p srxe-ibverbs --bins
nice -n 10 cargo build --release -q -p srxe-ibverbs --lib
lab_build_guest "$cache" "$suite" "$perftest"
kernel=$lab_kernel initrd=$lab_initrd version=$lab_version
case $suite in bookworm) runner_args+=(--no-kernel-odp) ;; esac

ns=rxelab
lab_claim_netns "$ns" lab.sh
out=$cache/runs/$(date +%Y%m%d-%H%M%S)-$version-perftest-$perftest
echo "lab.sh: kernel $version, outputs in $out" >&2
ip netns exec "$ns" "$repo/target/release/rxe-lab" cases --kernel "$kernel" --initrd "$initrd" \
    --ifup "$repo/tests/lab/ifup" --tools "$repo/target/release" --out "$out" "${runner_args[@]}"
