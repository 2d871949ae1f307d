#!/usr/bin/env bash
# Builds the lab's guest from Debian's packages: a kernel with rxe (the one
# `linux-image-amd64` of SUITE depends on) and a busybox initramfs with
# bookworm's perftest, ibverbs-utils, rdma-core and iproute2 copied from
# this host. Prints the kernel and initramfs paths.
#
#   build-guest.sh CACHE_DIR [SUITE]     SUITE: trixie-backports (default) or bookworm
#
# Downloads and the built initramfs stay in CACHE_DIR; a rerun with the
# same kernel version reuses them.
set -euo pipefail
cache=$(realpath -m "$1")
suite=${2:-trixie-backports}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$cache/apt-$suite/lists/partial" "$cache/apt-$suite/archives/partial" "$cache/debs"

case $suite in
    bookworm) release=bookworm ;;
    *) release=${suite%%-*} ;;
esac
sources="$cache/apt-$suite/sources.list"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" > "$sources"
apt_opts=(-o "Dir::Etc::sourcelist=$sources" -o Dir::Etc::sourceparts=- \
    -o "Dir::State::Lists=$cache/apt-$suite/lists" -o "Dir::Cache=$cache/apt-$suite" \
    -o Dir::State::status=/dev/null -o APT::Get::List-Cleanup=0 -o Debug::NoLocking=1 \
    -o APT::Sandbox::User=root)
# The package lists are refreshed at most once a day.
stamp="$cache/apt-$suite/updated"
if [ -z "$(find "$stamp" -mmin -1440 2>/dev/null)" ]; then
    apt-get -q "${apt_opts[@]}" update >&2
    touch "$stamp"
fi

# The kernel the suite's metapackage points at (linux-image-VERSION-amd64).
image=$(apt-cache "${apt_opts[@]}" depends linux-image-amd64 2>/dev/null |
    sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)
[ -n "$image" ] || { echo "build-guest: no linux-image-amd64 in $suite" >&2; exit 1; }
version=${image#linux-image-}
initrd="$cache/guest-$version.cpio.gz"
kernel="$cache/vmlinuz-$version"
if [ -s "$initrd" ] && [ -s "$kernel" ] && [ "$initrd" -nt "$here/guest-init" ] \
    && [ "$initrd" -nt "$0" ]; then
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
for f in /usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav*.so; do
    copy_with_libs "$f" /usr/lib/x86_64-linux-gnu/libibverbs/
done
cp /etc/libibverbs.d/rxe.driver "$root/etc/libibverbs.d/"
for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] && continue
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
cp "$here/guest-init" "$root/init"
chmod +x "$root/init"
cp "$vmlinuz" "$kernel.tmp" && mv "$kernel.tmp" "$kernel"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$initrd.tmp"
mv "$initrd.tmp" "$initrd"
echo "$kernel $initrd $version"
