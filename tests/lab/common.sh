# Shared by lab.sh and guest-exec.sh (sourced, from the repository's root):
# the host packages the lab needs, the guest image, and the claim on the
# lab's network namespace.

# Exits unless running as root; $1 names the caller in the message.
lab_require_root() {
    [ "$(id -u)" = 0 ] || { echo "$1: run as root (network namespace, tap, tcpdump)" >&2; exit 2; }
}

# Installs with apt whatever the lab needs and this host lacks.
lab_install_needs() {
    local need=() pair
    for pair in qemu-system-x86_64:qemu-system-x86 tcpdump:tcpdump ip:iproute2 ib_write_bw:perftest \
        ibv_devinfo:ibverbs-utils rdma:iproute2 busybox:busybox-static cpio:cpio \
        depmod:kmod socat:socat xz:xz-utils gcc:gcc flock:util-linux sha256sum:coreutils jq:jq; do
        command -v "${pair%%:*}" > /dev/null || need+=("${pair#*:}")
    done
    [ -e /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav34.so ] || need+=(ibverbs-providers)
    [ -e /usr/include/infiniband/verbs.h ] || need+=(libibverbs-dev)
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" rdma-core ibverbs-providers
    fi
}

# Builds (or reuses) the guest for SUITE and PERFTEST into CACHE; sets
# lab_kernel, lab_initrd and lab_version.
lab_build_guest() {
    # A failed build prints nothing: read finds no line (and must not end
    # the script unexplained under set -e).
    read -r lab_kernel lab_initrd lab_version < <(bash tests/lab/build-guest.sh "$1" "$2" "$3" | tail -n1) || true
    [ -s "$lab_kernel" ] && [ -s "$lab_initrd" ] || { echo "lab: guest build failed" >&2; exit 2; }
}

# Claims the lab's namespace NS for this process and its children (an
# flock on /run/lock/NS.lock, released when the last of them ends), sets it
# up, and tears it down on exit. A second lab run meanwhile stops here with
# a message instead of deleting the namespace under the first one. $2
# names the caller.
lab_claim_netns() {
    local ns=$1 lock=/run/lock/$1.lock
    mkdir -p /run/lock
    exec {lab_lock_fd}> "$lock"
    if ! flock -n "$lab_lock_fd"; then
        echo "$2: the lab's namespace $ns is in use by another lab run (lock $lock held;" \
            "processes in $ns: $(ip netns pids "$ns" 2> /dev/null | tr '\n' ' ')); wait for it to end" >&2
        exit 3
    fi
    bash tests/lab/netns.sh up "$ns" || exit 3
    trap 'bash tests/lab/netns.sh down '"$ns" EXIT
}
