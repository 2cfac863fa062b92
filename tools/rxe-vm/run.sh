#!/usr/bin/env bash
# tools/rxe-vm/run.sh -- run one shell command inside a throw-away QEMU guest with soft-RoCE.
#
# The guest boots Debian's stock kernel (which ships rdma_rxe; the host kernel may not) under TCG,
# mounts the host's root filesystem read-only over 9p, loads rdma_rxe/ib_uverbs, creates the
# soft-RoCE device `rxe0` on `lo`, and runs COMMAND with bash in the repository directory (shared
# read-write, same path as on the host). The command's exit status is the script's exit status.
#
#   usage: tools/rxe-vm/run.sh 'COMMAND'
#          tools/rxe-vm/run.sh --prepare      # fetch and unpack the kernel, build the initramfs; no boot
#
# Exit status 125 means the VM itself failed (did not boot, hung past the time limit, panicked):
# an infrastructure failure, not a test failure.
#
# Host packages (tools/setup.sh installs them): qemu-system-x86 busybox-static kmod rdma-core
# ibverbs-providers ibverbs-utils perftest iproute2. The kernel .deb is fetched once with
# `apt-get download` (linux-image-amd64's current ABI) and unpacked into the cache directory.
#
# Environment:
#   RXE_VM_DIR      cache directory (default: <repo>/target/rxe-vm)
#   RXE_VM_DEB      a linux-image .deb to use instead of downloading one
#   RXE_VM_MEM      guest memory (default 3G)        RXE_VM_SMP  guest vCPUs (default: nproc)
#   RXE_VM_TIMEOUT  wall-clock limit in seconds for the whole boot + command (default 900)
#   RXE_VM_ACCEL    tcg (default) or kvm
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)"
[ $# -ge 1 ] || { echo "usage: $0 'command' | --prepare" >&2; exit 2; }
vmdir=${RXE_VM_DIR:-$repo/target/rxe-vm}
mem=${RXE_VM_MEM:-3G}
smp=${RXE_VM_SMP:-$(nproc)}
limit=${RXE_VM_TIMEOUT:-900}
accel=${RXE_VM_ACCEL:-tcg}
infra() { echo "rxe-vm: INFRASTRUCTURE FAILURE: $*" >&2; exit 125; }

for tool in qemu-system-x86_64 busybox modprobe depmod dpkg-deb; do
  command -v "$tool" >/dev/null || infra "$tool not found (run tools/setup.sh)"
done
mkdir -p "$vmdir"
exec 9>"$vmdir/.lock"
flock 9 # the one-time preparation below must not run twice at once

# 1. The guest kernel: Debian's linux-image .deb, unpacked once, with its module index.
kdir=$vmdir/kernel
if [ ! -f "$kdir/.complete" ]; then
  rm -rf "$kdir" && mkdir -p "$kdir"
  deb=${RXE_VM_DEB:-}
  if [ -z "$deb" ]; then
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [ -n "$pkg" ] || infra "apt-cache knows no linux-image-amd64 (apt-get update?)"
    echo "rxe-vm: downloading $pkg" >&2
    (cd "$vmdir" && timeout 600 apt-get -q -o APT::Sandbox::User=root download "$pkg" >/dev/null) ||
      infra "apt-get download $pkg failed"
    deb=$(ls "$vmdir/${pkg}"_*.deb | head -1)
  fi
  dpkg-deb -x "$deb" "$kdir" || infra "cannot unpack $deb"
  kver=$(ls "$kdir/lib/modules" | head -1)
  depmod -b "$kdir" "$kver"
  [ -n "${RXE_VM_DEB:-}" ] || rm -f "$deb"
  touch "$kdir/.complete"
fi
kver=$(ls "$kdir/lib/modules" | head -1)
kernel=$kdir/boot/vmlinuz-$kver

# 2. The initramfs: static busybox and the modules to mount a 9p root (virtio-pci transport).
initrd=$vmdir/initrd-$kver.gz
if [ ! -f "$initrd" ]; then
  stage=$(mktemp -d "$vmdir/initrd.XXXXXX")
  mkdir -p "$stage"/{bin,dev,proc,sys,newroot,mods}
  cp "$(command -v busybox)" "$stage/bin/busybox"
  mods=""
  for f in $(for m in virtio_pci 9pnet_virtio 9p; do modprobe -d "$kdir" -S "$kver" --show-depends "$m"; done |
    awk '$1 == "insmod" && !seen[$2]++ {print $2}'); do
    name=$(basename "$f"); name=${name%.xz}; name=${name%.zst}
    case $f in
      *.xz) xz -dc "$f" ;;
      *.zst) zstd -dc "$f" ;;
      *) cat "$f" ;;
    esac >"$stage/mods/$name"
    mods="$mods $name"
  done
  cat >"$stage/init" <<INIT
#!/bin/busybox sh
bb=/bin/busybox
\$bb mount -t proc proc /proc
\$bb mount -t sysfs sysfs /sys
\$bb mount -t devtmpfs devtmpfs /dev
for m in $mods; do \$bb insmod /mods/\$m || echo "initramfs: insmod \$m failed"; done
opts=trans=virtio,version=9p2000.L,msize=512000
\$bb mount -t 9p -o \$opts,ro,cache=loose hostroot /newroot || { echo "initramfs: cannot mount the host root"; \$bb poweroff -f; }
\$bb mount -t tmpfs -o mode=755 tmpfs /newroot/run
\$bb mkdir -p /newroot/run/ctl
\$bb mount -t 9p -o \$opts,cache=none ctl /newroot/run/ctl
for d in dev proc sys; do \$bb mount --move /\$d /newroot/\$d; done
exec \$bb switch_root /newroot /bin/bash /run/ctl/guest-init.sh
INIT
  chmod +x "$stage/init"
  (cd "$stage" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 >"$initrd.partial")
  mv "$initrd.partial" "$initrd"
  rm -rf "$stage"
fi
exec 9>&-
[ "$1" != "--prepare" ] || { echo "rxe-vm: kernel $kver and initramfs ready in $vmdir"; exit 0; }

# 3. The per-run control directory: the command, the guest's init script, the exit status.
ctl=$(mktemp -d "$vmdir/run.XXXXXX")
trap 'rm -rf "$ctl"' EXIT
printf '%s\n' "$*" >"$ctl/cmd.sh"
# The guest sees the host's environment (PATH with cargo, RUST_*, SWARM_* ...), minus shell state.
export -p | grep -v -E '^declare -x (PWD|OLDPWD|SHLVL|HOSTNAME|TERM|SHELLOPTS|BASHOPTS|UID|EUID|PPID|BASH_[A-Z_]*)(=|$)' >"$ctl/env.sh"
cat >"$ctl/guest-init.sh" <<GUEST
#!/bin/bash
# PID 1 of the guest: the host's bash on the host's read-only root.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8
exec </dev/null >/dev/console 2>&1
report() { echo "\$1" >/run/ctl/status; sync; echo o >/proc/sysrq-trigger; sleep 10; }
trap 'echo "rxe-vm guest: setup failed at line \$LINENO"; report 125' ERR
set -e
# Modules come from the unpacked kernel, not the host's /lib/modules: point modprobe (ours and the
# kernel's request_module helper) at it through a small wrapper.
mkdir -p /run/kernel /run/bin
mount --bind "$kdir" /run/kernel
printf '#!/bin/sh\nexec /sbin/modprobe -d /run/kernel "\$@"\n' >/run/bin/modprobe
chmod +x /run/bin/modprobe
echo /run/bin/modprobe >/proc/sys/kernel/modprobe
export PATH=/run/bin:\$PATH
for d in /tmp /var/tmp /var/log; do [ -d \$d ] && mount -t tmpfs tmpfs \$d; done
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# The checkout may live under a directory just covered by a tmpfs (a clone in /tmp): recreate it.
mkdir -p "$repo"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=mmap repo "$repo"
hostname rxe-vm
ip link set lo up
modprobe rdma_rxe
modprobe ib_uverbs
modprobe rdma_ucm
modprobe veth
rdma link add rxe0 type rxe netdev lo
trap - ERR
set +e
source /run/ctl/env.sh
export PATH=/run/bin:\$PATH
ulimit -l unlimited
cd "$repo"
echo "rxe-vm guest: rxe0 ready after \$(cut -d' ' -f1 /proc/uptime) s; running the command"
bash -e /run/ctl/cmd.sh
rc=\$?
echo "rxe-vm guest: command exited with \$rc"
[ \$rc = 0 ] || { echo "rxe-vm guest: last kernel messages:"; dmesg | tail -30; }
report \$rc
GUEST

# 4. Boot. The host root is shared read-only; the repository read-write at the same path.
case $accel in
  kvm) acc=(-accel kvm -cpu host) ;;
  *) acc=(-accel tcg,thread=multi -cpu max) ;;
esac
set +e
timeout --foreground -k 5 "$limit" qemu-system-x86_64 "${acc[@]}" -smp "$smp" -m "$mem" \
  -machine q35 -nodefaults -no-user-config -display none -no-reboot -serial stdio \
  -kernel "$kernel" -initrd "$initrd" \
  -append "console=ttyS0 quiet loglevel=1 panic=-1 oops=panic rdinit=/init tsc=reliable no_timer_check" \
  -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
  -fsdev local,id=ctl,path="$ctl",security_model=none \
  -device virtio-9p-pci,fsdev=ctl,mount_tag=ctl \
  -fsdev local,id=repo,path="$repo",security_model=passthrough,multidevs=remap \
  -device virtio-9p-pci,fsdev=repo,mount_tag=repo \
  </dev/null | sed -u 's/\r$//'
qemu_rc=${PIPESTATUS[0]}
set -e
[ -f "$ctl/status" ] && exit "$(cat "$ctl/status")"
infra "the guest reported no exit status (qemu exit $qemu_rc; 124 = timed out after ${limit}s)"
