#!/bin/busybox sh
# Stage 1 of the cgroup v2 check VM, run as /init from the initramfs that
# cgroup2-check.sh builds (busybox, the virtio/9p modules, /vm.env).
#
# Loads virtio + 9p, mounts the host's root file system read-only (9p tag "hostroot")
# and the writable results folder (tag "out") at the same path as on the host, moves
# /proc, /sys and /dev over and switches root to guest.sh, which runs the tests.
# Nothing here mounts a cgroup hierarchy: guest.sh mounts only cgroup2.

/bin/busybox mkdir -p /bin /proc /sys /dev /newroot
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

die() {
    echo "vm: stage 1: $*"
    # No result file: the host reports that the VM did not finish.
    poweroff -f
}

# A boot probe (is this accelerator able to run the kernel?) ends here.
if grep -q sluice_vm_probe /proc/cmdline; then
    echo "vm: probe: the kernel is up"
    poweroff -f
fi

# SLUICE_VM_* (repo, tests to run) and the host's PATH/HOME/...; the results folder
# comes on the kernel command line.
. /vm.env
SLUICE_VM_OUT=$(sed -n 's/.*sluice_vm_out=\([^ ]*\).*/\1/p' /proc/cmdline)
export SLUICE_VM_OUT
[ -n "$SLUICE_VM_OUT" ] || die "no sluice_vm_out= on the kernel command line"

# virtio_pci, 9pnet_virtio and 9p, less those built into this kernel.
for module in $(cat /modules); do
    modprobe "$module" || die "modprobe $module failed"
done

opts=trans=virtio,version=9p2000.L,msize=524288
# Read-only and unchanging while the VM runs, so the guest may cache it all.
mount -t 9p -o "$opts,cache=loose,ro" hostroot /newroot || die "mounting the host's root over 9p failed"
mount -t 9p -o "$opts" out "/newroot$SLUICE_VM_OUT" || die "mounting the results folder over 9p failed"
for fs in proc sys dev; do
    mount --move "/$fs" "/newroot/$fs" || die "moving /$fs failed"
done

exec switch_root /newroot /bin/bash "$SLUICE_VM_REPO/scripts/vm/guest.sh"
