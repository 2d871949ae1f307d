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
[ "$(id -u)" = 0 ] || { echo "lab.sh: run as root (network namespace, tap, tcpdump)" >&2; exit 2; }
cache=${LAB_CACHE:-$repo/target/lab}

need=()
for pair in qemu-system-x86_64:qemu-system-x86 tcpdump:tcpdump ip:iproute2 ib_write_bw:perftest \
    ibv_devinfo:ibverbs-utils rdma:iproute2 busybox:busybox-static cpio:cpio \
    depmod:kmod socat:socat xz:xz-utils gcc:gcc; do
    command -v "${pair%%:*}" > /dev/null || need+=("${pair#*:}")
done
[ -e /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav34.so ] || need+=(ibverbs-providers)
[ -e /usr/include/infiniband/verbs.h ] || need+=(libibverbs-dev)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" rdma-core ibverbs-providers
fi

nice -n 10 cargo build --release -q -p examples -p integration-tests -p srxe-ibverbs --bins
nice -n 10 cargo build --release -q -p srxe-ibverbs --lib
read -r kernel initrd version < <(bash tests/lab/build-guest.sh "$cache" "$suite" "$perftest" | tail -n1)
[ -s "$kernel" ] && [ -s "$initrd" ] || { echo "lab.sh: guest build failed" >&2; exit 2; }
case $suite in bookworm) runner_args+=(--no-kernel-odp) ;; esac

ns=rxelab
bash tests/lab/netns.sh up "$ns"
trap 'bash tests/lab/netns.sh down "$ns"' EXIT
out=$cache/runs/$(date +%Y%m%d-%H%M%S)-$version-perftest-$perftest
echo "lab.sh: kernel $version, outputs in $out" >&2
ip netns exec "$ns" "$repo/target/release/rxe-lab" --kernel "$kernel" --initrd "$initrd" \
    --ifup "$repo/tests/lab/ifup" --tools "$repo/target/release" --out "$out" "${runner_args[@]}"
