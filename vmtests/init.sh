#!/bin/sh
# /init of the initramfs that vmtests/kernel.sh builds (busybox sh).
#
# Debian builds 9p and virtio as modules, but vmtest's kernel mode boots
# straight into the host's root shared over 9p (tag /dev/root). So: load
# those modules, mount the 9p root, bind this kernel's extracted modules
# (@MODULES@, filled in by kernel.sh) onto its /lib/modules so modprobe and
# the kernel's module autoloading find veth, sch_ingress, cls_bpf and the
# rest, and hand over to vmtest's init (the init= kernel argument).
set -eu

mount -t proc proc /proc
mount -t devtmpfs dev /dev
while read -r ko; do
  insmod "/lib/modules/$ko"
done </lib/modules/order

init=
read -r cmdline </proc/cmdline
for arg in $cmdline; do
  case $arg in
  init=*) init=${arg#init=} ;;
  esac
done
[ -n "$init" ] || {
  echo "initramfs: no init= on the kernel command line" >/dev/console
  exit 1
}

mount -t 9p -o trans=virtio,cache=mmap,msize=1048576,rw /dev/root /newroot
mount --bind "/newroot@MODULES@" /newroot/lib/modules
mount --move /dev /newroot/dev
umount /proc
exec switch_root /newroot "$init"
