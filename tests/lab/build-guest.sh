#!/usr/bin/env bash
# Builds the lab's guest from Debian's packages: a kernel with rxe (the one
# `linux-image-amd64` of SUITE depends on) and a busybox initramfs with
# bookworm's perftest, ibverbs-utils, rdma-core and iproute2 copied from
# this host. Prints the kernel and initramfs paths.
#
#   build-guest.sh CACHE_DIR [SUITE [PERFTEST]]
#
# SUITE: trixie-backports (default) or bookworm, for the kernel. PERFTEST:
# bookworm (default: perftest 4.5 from this host) or trixie (perftest
# 25.01 and its rdma-core from trixie, unpacked into /trixie and started
# through trixie's own loader; bookworm's rxe.driver is left out so that
# only trixie's librxe is loaded).
#
# Downloads and the built initramfs stay in CACHE_DIR; a rerun with the
# same kernel version reuses them.
set -euo pipefail
# Under pipefail a reader that stops early (head, awk's exit) can fail the
# pipeline with the writer's SIGPIPE, and set -e then ends the script
# without a word (ldconfig -p | awk '... exit' did, 2 in 200 tries): the
# pipelines below read their input to the end.
cache=$(realpath -m "$1")
suite=${2:-trixie-backports}
perftest=${3:-bookworm}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$cache/debs"

# The Debian archive this host's apt uses (the first main-archive URI of
# its sources), so that the other suites come from the same mirror.
debian_mirror() {
    local uri
    uri=$(grep -hs -E '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources \
        /etc/apt/sources.list.d/*.list 2>/dev/null \
        | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' \
        | awk '{print $1}' | grep -v -- '-security' | sed -n 1p)
    [ -n "$uri" ] || { echo "build-guest.sh: no Debian archive in this host's apt sources" >&2; exit 2; }
    echo "$uri"
}

# Sets apt_opts to use SUITE from a private state folder (the system's apt
# configuration stays untouched); refreshes its lists at most once a day.
use_suite() {
    local s=$1
    mkdir -p "$cache/apt-$s/lists/partial" "$cache/apt-$s/archives/partial"
    local sources="$cache/apt-$s/sources.list"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(debian_mirror) $s main" > "$sources"
    apt_opts=(-o "Dir::Etc::sourcelist=$sources" -o Dir::Etc::sourceparts=- \
        -o "Dir::State::Lists=$cache/apt-$s/lists" -o "Dir::Cache=$cache/apt-$s" \
        -o Dir::State::status=/dev/null -o APT::Get::List-Cleanup=0 -o Debug::NoLocking=1 \
        -o APT::Sandbox::User=root)
    local stamp="$cache/apt-$s/updated"
    if [ -z "$(find "$stamp" -mmin -1440 2>/dev/null)" ]; then
        apt-get -q "${apt_opts[@]}" update >&2
        touch "$stamp"
    fi
}
use_suite "$suite"

# The kernel the suite's metapackage points at (linux-image-VERSION-amd64).
image=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | sed -n 1p)
[ -n "$image" ] || { echo "build-guest: no linux-image-amd64 in $suite" >&2; exit 1; }
version=${image#linux-image-}
initrd="$cache/guest-$version-perftest-$perftest.cpio.gz"
kernel="$cache/vmlinuz-$version"
if [ -s "$initrd" ] && [ -s "$kernel" ] && [ "$initrd" -nt "$here/guest-init" ] \
    && [ "$initrd" -nt "$0" ] && [ "$initrd" -nt "$here/rc_check.c" ]; then
    echo "$kernel $initrd $version"
    exit 0
fi

# The image package itself, or (newer trees) the packages it depends on
# that hold vmlinuz and the modules.
pkgs=$(apt-cache "${apt_opts[@]}" depends "$image" 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-\(binary\|modules\)-[^ ]*\)$/\1/p' | sort -u)
pkgs="$image $pkgs"
unpacked="$cache/kernel-$version"
if [ ! -d "$unpacked/lib/modules/$version" ] && [ ! -d "$unpacked/usr/lib/modules/$version" ]; then
    rm -rf "$unpacked" && mkdir -p "$unpacked"
    (cd "$cache/debs" && apt-get -q "${apt_opts[@]}" download $pkgs >&2)
    for p in $pkgs; do
        for deb in "$cache/debs/${p}_"*.deb; do dpkg-deb -x "$deb" "$unpacked"; done
    done
fi
moddir=$unpacked/lib/modules/$version
[ -d "$moddir" ] || moddir=$unpacked/usr/lib/modules/$version
vmlinuz=$(ls "$unpacked/boot/vmlinuz-$version" "$moddir/vmlinuz" 2>/dev/null | head -n1 || true)
[ -n "$vmlinuz" ] || { echo "build-guest: no vmlinuz-$version in $pkgs" >&2; exit 1; }

root=$(mktemp -d "$cache/root.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,lib/modules,lib64,etc/libibverbs.d,usr/lib/x86_64-linux-gnu/libibverbs}

# Modules rdma_rxe and virtio_net need, in load order, decompressed
# (busybox insmod reads plain .ko only).
depmod_root=$(mktemp -d "$cache/depmod.XXXXXX")
mkdir -p "$depmod_root/lib/modules"
cp -r "$moddir" "$depmod_root/lib/modules/"
depmod -b "$depmod_root" "$version"
order=()
for m in virtio_pci virtio_net crc32_generic ib_uverbs rdma_rxe; do
    while read -r kind path _; do
        [ "$kind" = insmod ] || continue
        name=$(basename "$path")
        case " ${order[*]-} " in *" $name "*) continue ;; esac
        order+=("$name")
        case $path in
            *.xz) xz -dc "$path" > "$root/lib/modules/${name%.xz}" ;;
            *.zst) zstd -qdc "$path" > "$root/lib/modules/${name%.zst}" ;;
            *) cp "$path" "$root/lib/modules/$name" ;;
        esac
    done < <(modprobe -d "$depmod_root" -S "$version" --show-depends "$m" 2>/dev/null || true)
done
rm -rf "$depmod_root"
for name in "${order[@]}"; do
    name=${name%.xz}; name=${name%.zst}
    echo "$name"
done > "$root/etc/modules-order"

# Userland from this host, with every library ldd names.
bins="busybox socat rdma ibv_devinfo ibv_devices ibv_rc_pingpong ib_write_bw ib_read_bw ib_send_bw
      ib_atomic_bw ib_write_lat ib_read_lat ib_send_lat"
copy_with_libs() {
    local file=$1 dest=$2
    cp -L "$file" "$root$dest"
    { ldd "$file" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -Ln "$lib" "$root$lib" 2>/dev/null || true
    done
}
for b in $bins; do
    path=$(command -v "$b") || { echo "build-guest: $b is not installed" >&2; exit 1; }
    copy_with_libs "$path" /bin/
done
# What this workspace's Rust binaries link beyond the tools above, for the
# files pushed into the guest (guest-exec.sh, the rdma-core cases):
# libgcc_s (unwinding) and libm; libibverbs and its libnl come with
# ibv_devinfo.
for lib in libgcc_s.so.1 libm.so.6; do
    path=$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ && !found { print $NF; found = 1 }')
    [ -n "$path" ] || { echo "build-guest: $lib not found on this host" >&2; exit 1; }
    mkdir -p "$root$(dirname "$path")"
    cp -L "$path" "$root$path"
done
# The lab's own data-checked peer.
gcc -O2 -Wall -o "$cache/rc_check" "$here/rc_check.c" -libverbs
copy_with_libs "$cache/rc_check" /bin/
for f in /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so; do
    copy_with_libs "$f" /usr/lib/x86_64-linux-gnu/libibverbs/
done
cp /etc/libibverbs.d/rxe.driver "$root/etc/libibverbs.d/"
for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
if [ "$perftest" = trixie ]; then
    use_suite trixie
    tdebs="$cache/debs/trixie"
    mkdir -p "$tdebs" "$root/trixie"
    tpkgs="perftest libibverbs1 ibverbs-providers librdmacm1t64 libibumad3 libc6 libnl-3-200
           libnl-route-3-200 libpci3 libudev1 zlib1g libcap2 libgcc-s1"
    (cd "$tdebs" && apt-get -q "${apt_opts[@]}" download $tpkgs >&2)
    for deb in "$tdebs"/*.deb; do dpkg-deb -x "$deb" "$root/trixie"; done
    rm "$root/etc/libibverbs.d/rxe.driver"
    for tool in ib_write_bw ib_read_bw ib_send_bw ib_atomic_bw ib_write_lat ib_read_lat ib_send_lat; do
        rm -f "$root/bin/$tool"
        cat > "$root/bin/$tool" <<WRAP
#!/bin/sh
t=/trixie
export RDMAV_DRIVERS=\$t/usr/lib/x86_64-linux-gnu/libibverbs/librxe
exec \$t/usr/lib64/ld-linux-x86-64.so.2 --library-path \$t/usr/lib/x86_64-linux-gnu \$t/usr/bin/$tool "\$@"
WRAP
        chmod +x "$root/bin/$tool"
    done
    # rc_check (built against this host's rdma-core) runs on trixie's
    # libibverbs and librxe too: the only provider left in this guest.
    mv "$root/bin/rc_check" "$root/bin/rc_check.bin"
    cat > "$root/bin/rc_check" <<'WRAP'
#!/bin/sh
t=/trixie
export RDMAV_DRIVERS=$t/usr/lib/x86_64-linux-gnu/libibverbs/librxe
exec $t/usr/lib64/ld-linux-x86-64.so.2 --library-path $t/usr/lib/x86_64-linux-gnu /bin/rc_check.bin "$@"
WRAP
    chmod +x "$root/bin/rc_check"
fi
cp "$here/guest-init" "$root/init"
chmod +x "$root/init"
cp "$vmlinuz" "$kernel.tmp" && mv "$kernel.tmp" "$kernel"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd.tmp"
mv "$initrd.tmp" "$initrd"
echo "$kernel $initrd $version"
