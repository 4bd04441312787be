#!/usr/bin/env bash
# Fetches the kernel that Debian's SUITE currently ships (linux-image-amd64
# and the linux-{image,binary,modules}-* packages it depends on) with apt and
# a private apt configuration, and lays it out for vmtest under
# CACHE/kernels/NAME:
#
#   vmlinuz             the kernel
#   config              its build configuration
#   release             `uname -r` of the kernel
#   package             package name and version (what makes a refetch)
#   root/lib/modules/   its modules, depmod'ed; the guest bind-mounts this
#                       directory onto /lib/modules (see init.sh)
#   initramfs.cpio.gz   busybox, the 9p/virtio modules and init.sh
#
# Idempotent: nothing is downloaded while the suite's index is less than a
# day old and the laid-out package is the suite's current one. If the index
# cannot be refreshed, an existing layout is kept and used.
#
# Usage: vmtests/kernel.sh NAME SUITE   (CACHE: $SW_VMTEST_CACHE)
set -euo pipefail

name=$1
suite=$2
here=$(cd "$(dirname "$0")" && pwd)
cache=${SW_VMTEST_CACHE:?SW_VMTEST_CACHE is not set}
kdir=$cache/kernels/$name
aptdir=$cache/apt/$suite
export APT_CONFIG=$aptdir/apt.conf

log() { echo "kernel.sh [$name]: $*" >&2; }

# A private apt: its own sources list (one suite), state, cache and an
# empty configuration directory, so the host's apt setup is neither used
# nor changed.
mkdir -p "$aptdir"/{empty,state/lists/partial,cache/archives/partial,debs}
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" \
  >"$aptdir/sources.list"
touch "$aptdir/state/status"
cat >"$APT_CONFIG" <<EOF
Dir::Etc::SourceList "$aptdir/sources.list";
Dir::Etc::SourceParts "$aptdir/empty";
Dir::Etc::Parts "$aptdir/empty";
Dir::Etc::Preferences "$aptdir/empty/preferences";
Dir::Etc::PreferencesParts "$aptdir/empty";
Dir::State "$aptdir/state";
Dir::State::status "$aptdir/state/status";
Dir::Cache "$aptdir/cache";
Acquire::Languages "none";
APT::Sandbox::User "root";
EOF

if [[ -z $(find "$aptdir/updated" -mmin -1440 2>/dev/null) ]]; then
  if timeout 600 apt-get update -qq >"$aptdir/update.log" 2>&1; then
    touch "$aptdir/updated"
  elif [[ -f $kdir/package ]]; then
    log "apt-get update failed (see $aptdir/update.log); using the cached $(cat "$kdir/package")"
    exit 0
  else
    cat "$aptdir/update.log" >&2
    log "apt-get update for $suite failed"
    exit 1
  fi
fi

# The kernel packages: linux-image-amd64's dependencies, recursively, that
# carry the kernel, its modules or their index files (6.1/6.12: one
# linux-image-VER package; 7.x: linux-image-VER depending on
# linux-binary-VER, linux-modules-VER and linux-base-VER).
kernel_deps() {
  apt-cache depends --important "$1" | awk '$1 ~ /Depends:$/ {print $2}' |
    grep -E '^linux-(image|binary|modules|base)-' || true
}
packages=()
queue=(linux-image-amd64)
while ((${#queue[@]})); do
  p=${queue[0]}
  queue=("${queue[@]:1}")
  [[ " ${packages[*]} " == *" $p "* ]] && continue
  packages+=("$p")
  mapfile -t -O "${#queue[@]}" queue < <(kernel_deps "$p")
done
main=
for p in "${packages[@]:1}"; do
  if [[ -z $main && $p == linux-image-* ]]; then
    main=$p
  fi
done
[[ -n $main ]] || {
  log "linux-image-amd64 depends on no linux-image-VER package in $suite"
  exit 1
}
want="$main $(apt-cache show --no-all-versions "$main" | awk '/^Version:/ {print $2}')"

if [[ -f $kdir/package && $(cat "$kdir/package") == "$want" && -f $kdir/initramfs.cpio.gz ]]; then
  exit 0
fi

log "fetching $want from $suite"
rm -f "$aptdir"/debs/*.deb
(cd "$aptdir/debs" && timeout 1200 apt-get download -qq "${packages[@]:1}")
new=$kdir.new
rm -rf "$new"
mkdir -p "$new/x" "$new/root/lib/modules"
for deb in "$aptdir"/debs/*.deb; do
  dpkg-deb -x "$deb" "$new/x"
done
rm -f "$aptdir"/debs/*.deb

# 6.1/6.12 ship boot/vmlinuz-VER and lib/modules/VER; 7.x ships
# usr/lib/modules/VER/vmlinuz.
shopt -s nullglob
moddirs=("$new"/x/lib/modules/* "$new"/x/usr/lib/modules/*)
shopt -u nullglob
((${#moddirs[@]} == 1)) || {
  log "expected one module directory in $want, found: ${moddirs[*]}"
  exit 1
}
release=$(basename "${moddirs[0]}")
for f in "$new/x/boot/vmlinuz-$release" "${moddirs[0]}/vmlinuz"; do
  [[ -f $f ]] && mv "$f" "$new/vmlinuz"
done
for f in "$new/x/boot/config-$release" "${moddirs[0]}/config"; do
  [[ -f $f ]] && mv "$f" "$new/config"
done
[[ -f $new/vmlinuz ]] || {
  log "no vmlinuz in $want"
  exit 1
}
mv "${moddirs[0]}" "$new/root/lib/modules/$release"
rm -rf "$new/x"
depmod -b "$new/root" "$release"
echo "$release" >"$new/release"

# The initramfs: busybox, the modules that mounting vmtest's 9p root needs
# (decompressed, in dependency order; the built-in ones are skipped) and
# init.sh as /init.
ird=$new/initramfs
mkdir -p "$ird"/{bin,dev,proc,newroot,lib/modules}
cp /bin/busybox "$ird/bin/busybox"
for tool in sh mount umount insmod switch_root; do
  ln -s busybox "$ird/bin/$tool"
done
mknod -m 600 "$ird/dev/console" c 5 1
sed "s|@MODULES@|$kdir/root/lib/modules|" "$here/init.sh" >"$ird/init"
chmod 755 "$ird/init"
for m in 9p 9pnet_virtio virtio_pci virtio_console; do
  modprobe -d "$new/root" -S "$release" --show-depends "$m"
done | awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++' |
  while read -r ko; do
    base=$(basename "$ko")
    base=${base%.xz}
    base=${base%.zst}
    case $ko in
    *.xz) xz -dc "$ko" ;;
    *.zst) zstd -qdc "$ko" ;;
    *) cat "$ko" ;;
    esac >"$ird/lib/modules/$base"
    echo "$base" >>"$ird/lib/modules/order"
  done
(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) >"$new/initramfs.cpio.gz"
rm -rf "$ird"

echo "$want" >"$new/package"
rm -rf "$kdir"
mv "$new" "$kdir"
log "ready: $release ($want)"
