#!/usr/bin/env bash
# The lab's developer loop (as root): boots the lab's guest (kernel rxe0 on
# eth0, 198.18.0.2), copies files into it, runs one command there, prints
# its output and exits with its status; then powers off and tears the
# namespace down.
#
#   bash tests/lab/guest-exec.sh [--suite trixie-backports|bookworm] [--perftest bookworm|trixie]
#        [--push FILE]... [--host 'HOST COMMAND'] [--timeout SECS] -- COMMAND...
#
# Each FILE lands in /tmp/push/<its name> (executable, size and SHA-256
# checked); COMMAND runs with `sh -c` in /tmp/push, which is first on its
# PATH, bounded by --timeout (default 600 s). COMMAND's words are joined
# with spaces, as ssh does: quote a pipeline as one word. --host runs a
# shell command on the host side of the lab's bridge (198.18.0.1, device
# srxe-labbr0) while COMMAND runs, started first; it may run on for 30 s
# after COMMAND ended. Exit status: COMMAND's, or when that is 0 the host
# command's; 124 when COMMAND was cut off, 125 when the lab itself failed
# (boot, push), 3 when another lab run holds the namespace `rxelab`.
# Example:
#
#   bash tests/lab/guest-exec.sh --push target/release/write_bw -- write_bw --help
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$(pwd)
suite=trixie-backports
perftest=bookworm
args=()
usage() {
    echo "usage:" >&2
    sed -n '7,8p' "$0" | sed 's/^#//' >&2
    exit 2
}
while [ $# -gt 0 ]; do
    case $1 in
        --suite) suite=$2; shift 2 ;;
        --perftest) perftest=$2; shift 2 ;;
        --push)
            [ -f "$2" ] || { echo "guest-exec.sh: --push $2: no such file" >&2; exit 2; }
            args+=(--push "$(realpath "$2")"); shift 2 ;;
        --host) args+=(--host "$2"); shift 2 ;;
        --timeout) args+=(--timeout "$2"); shift 2 ;;
        --) shift; break ;;
        *) echo "guest-exec.sh: unknown argument $1" >&2; usage ;;
    esac
done
[ $# -gt 0 ] || usage
source tests/lab/common.sh
lab_require_root guest-exec.sh
cache=${LAB_CACHE:-$repo/target/lab}
lab_install_needs
nice -n 10 cargo build --release -q -p integration-tests --bin rxe-lab
lab_build_guest "$cache" "$suite" "$perftest"
lab_claim_netns rxelab guest-exec.sh
out=$cache/exec/$(date +%Y%m%d-%H%M%S)-$lab_version
echo "guest-exec.sh: kernel $lab_version, console in $out/console.log" >&2
status=0
ip netns exec rxelab "$repo/target/release/rxe-lab" exec --kernel "$lab_kernel" --initrd "$lab_initrd" \
    --ifup "$repo/tests/lab/ifup" --out "$out" "${args[@]}" -- "$@" || status=$?
exit "$status"
