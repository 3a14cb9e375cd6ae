#!/usr/bin/env bash
# Proves the gateway's cgroup v2 path on a real kernel.
#
# The development machines mount memory and pids as cgroup v1, so the v2 path of
# gateway/src/sandbox/cgroup/ (memory.max, pids.max, memory.events, pids.events,
# cpu.stat, cgroup.kill, delegating controllers) is otherwise only unit-tested against a
# fake directory. This script boots small virtual machines (Debian's kernel, a busybox
# initramfs, the host's root file system shared read-only over virtio-9p) whose only
# cgroup hierarchy is cgroup2 with +cpu +memory +pids enabled, and runs there `sluice
# doctor` and the test binaries (the gateway's unit tests and the jail, limits,
# isolation and sandbox suites by default) in two layouts, one after the other:
#   a. the test process in the root cgroup;
#   b. the test process in a service-like cgroup (/sys/fs/cgroup/sluice.service), where
#      the gateway must move itself into a leaf to delegate controllers.
# It then checks the limits came from cgroup v2 and not from the rlimit fallback: the
# doctor's lines, the kernel's log of OOM kills and refused forks in execution cgroups,
# no skipped test, every test gateway's start-up line (guest.sh does the checking).
#
# Usage (as root, from anywhere in the repository):
#   scripts/vm/cgroup2-check.sh            # the default test binaries
#   scripts/vm/cgroup2-check.sh sandbox    # only these (test binaries, or modules of e2e)
#   scripts/vm/cgroup2-check.sh all        # every test binary of the workspace
# Installs qemu-system-x86 and busybox-static with apt when missing, downloads a Debian
# kernel into target/vm/kernel (not into /boot; cached) and builds the tests with
# `cargo test --workspace --no-run`. Prints the guests' summaries and exits non-zero if a
# test or a check fails. Full logs: target/vm/run/.
#
# KVM: used when /dev/kvm boots the kernel. Where it does not (no /dev/kvm, or a PVM
# hypervisor such as this workplace's, which boots only PVM-enabled guest kernels), the
# VM runs under TCG emulation: the same kernel and checks, ~30x slower per instruction
# (about 6 minutes for the default tests; with KVM it should be a minute or two, but
# that was never run here: this workplace has PVM). Environment:
#   SLUICE_VM_ACCEL=auto|kvm|tcg  kvm: print one "skipped" line and exit 0 without a
#                                 usable KVM, as a CI job would want; default auto.
#   SLUICE_VM_KERNEL=PACKAGE      another Debian kernel, e.g. linux-image-6.12.100+deb12-amd64
#                                 (default: the one linux-image-amd64 depends on).
#   SLUICE_VM_TEST_THREADS=N      tests at a time in each binary (default 1: see guest.sh).
#   SLUICE_VM_TIMEOUT=SECONDS     for the VM (default 900).
#   SLUICE_VM_COMMAND='...'       run this in the VM (cgroup2 set up, from the repository)
#                                 instead of the check, for looking around.
set -euo pipefail

say() { echo "cgroup2-check: $*"; }
skip() {
    say "skipped: $*"
    exit 0
}
die() {
    say "error: $*" >&2
    exit 1
}

repo=$(cd "$(dirname "$0")/../.." && pwd)
vm=$repo/target/vm
out=$vm/run
case $out in *[[:space:]]*) die "the VM cannot use a path with spaces: $out" ;; esac
# The VM mounts its own file systems over these: a repository there would be hidden.
case $repo/ in /tmp/* | /var/tmp/* | /run/* | /dev/* | /proc/* | /sys/*)
    die "the repository must not be under /tmp, /var/tmp, /run, /dev, /proc or /sys: the VM mounts its own there" ;;
esac
timeout_s=${SLUICE_VM_TIMEOUT:-900}
default_tests=(sluice_gateway jail limits isolation sandbox)

# --- Accelerator -------------------------------------------------------------------------
# auto: KVM when it can boot the kernel, else TCG emulation (slower); kvm: KVM or skip.
accel=${SLUICE_VM_ACCEL:-auto}
case $accel in auto | kvm | tcg) ;; *) die "SLUICE_VM_ACCEL must be auto, kvm or tcg, not $accel" ;; esac
[ "$(id -u)" -eq 0 ] || die "run as root (apt-get, and the VM shares / read-only as root)"
no_kvm=""
if [ "$accel" != tcg ]; then
    if ! [ -e /dev/kvm ]; then
        no_kvm="/dev/kvm does not exist (no hardware virtualisation here)"
    elif ! (exec 3<>/dev/kvm) 2>/dev/null; then
        no_kvm="/dev/kvm cannot be opened for reading and writing"
    fi
    [ -z "$no_kvm" ] || [ "$accel" != kvm ] || skip "$no_kvm"
fi

# --- Tools -----------------------------------------------------------------------------
# The initramfs needs the static busybox (busybox-static replaces a dynamic one).
if ! command -v qemu-system-x86_64 >/dev/null || ! [ -x /bin/busybox ] ||
    ldd /bin/busybox >/dev/null 2>&1; then
    say "installing qemu-system-x86 and busybox-static"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        qemu-system-x86 busybox-static >/dev/null
fi
busybox=/bin/busybox

# --- Kernel (cached in target/vm/kernel/<package>, never installed) ---------------------
# SLUICE_VM_KERNEL names the package (e.g. linux-image-6.12.100+deb12-amd64); by default,
# the one linux-image-amd64 depends on.
newest_kernel() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
package=${SLUICE_VM_KERNEL:-$(newest_kernel)}
if [ -z "$package" ]; then
    cached=$(ls -d "$vm"/kernel/linux-image-*/ready 2>/dev/null | sort -V | tail -1 || true)
    if [ -n "$cached" ]; then
        package=$(basename "$(dirname "$cached")")
    else
        apt-get update -q >/dev/null
        package=$(newest_kernel)
    fi
fi
[ -n "$package" ] || die "apt knows no linux-image-amd64 kernel"
kernel_dir=$vm/kernel/$package
if ! [ -e "$kernel_dir/ready" ]; then
    say "downloading $package into $kernel_dir"
    rm -rf "$kernel_dir"
    mkdir -p "$kernel_dir"
    (cd "$kernel_dir" && apt-get download -qq "$package" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
    ls "$kernel_dir"/*.deb >/dev/null 2>&1 || die "apt-get download $package failed"
    dpkg -x "$kernel_dir"/*.deb "$kernel_dir/root"
    rm "$kernel_dir"/*.deb
    version=$(ls "$kernel_dir/root/lib/modules")
    "$busybox" depmod -b "$kernel_dir/root" "$version"
    touch "$kernel_dir/ready"
fi
version=$(ls "$kernel_dir/root/lib/modules")
vmlinuz=$kernel_dir/root/boot/vmlinuz-$version

# --- Test binaries ---------------------------------------------------------------------
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=("${default_tests[@]}")
say "building the tests (cargo test --workspace --no-run)"
mkdir -p "$vm"
(cd "$repo" && cargo test --workspace --no-run --message-format=json-render-diagnostics) \
    >"$vm/cargo.json" || die "the build failed"
# name|package directory|executable[|filter], for each test binary (or e2e module) asked for.
tests=$(python3 - "$vm/cargo.json" "${wanted[@]}" <<'EOF'
import json, os, sys
path, wanted = sys.argv[1], sys.argv[2:]
found = {}
for line in open(path):
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["profile"]["test"]:
        name = msg["target"]["name"]
        found[name] = f'{name}|{os.path.dirname(msg["manifest_path"])}|{msg["executable"]}'
# The end-to-end tests are one binary, e2e, of one module per former test file: a name
# that is no binary runs that module of e2e (its name as the filter `NAME::`).
names = sorted(found) if wanted == ["all"] else wanted
missing = [n for n in names if n not in found and "e2e" not in found]
if missing:
    sys.exit(f"no test binary named {', '.join(missing)}; there are: {', '.join(sorted(found))}")
print(" ".join(found[n] if n in found else f'{n}|{found["e2e"].split("|", 1)[1]}|{n}::' for n in names))
EOF
) || die "test binaries not found"
# target/debug (or $CARGO_TARGET_DIR/debug): above deps/, where the binaries are.
first_exe=${tests%% *}
target_debug=$(dirname "$(dirname "${first_exe##*|}")")
for binary in sluice sluice-jail; do
    [ -x "$target_debug/$binary" ] || die "$target_debug/$binary was not built"
done

# --- Initramfs: busybox, the modules for virtio + 9p, stage 1 ---------------------------
rm -rf "$vm/initramfs" "$out"
mkdir -p "$vm/initramfs/bin" "$out"
cp "$busybox" "$vm/initramfs/bin/busybox"
cp "$repo/scripts/vm/initramfs-init.sh" "$vm/initramfs/init"
chmod +x "$vm/initramfs/init"
modules=lib/modules/$version
mkdir -p "$vm/initramfs/$modules"
# virtio-pci and 9p, those of them the kernel has as modules (/modules: what stage 1
# loads). modules.dep lists each module's whole dependency closure. Compressed modules
# are unpacked (busybox's modprobe may not read them).
dep=$kernel_dir/root/$modules/modules.dep
: >"$vm/initramfs/modules"
for module in drivers/virtio/virtio_pci net/9p/9pnet_virtio fs/9p/9p; do
    grep -q "^kernel/$module\.ko" "$kernel_dir/root/$modules/modules.builtin" ||
        basename "$module" >>"$vm/initramfs/modules"
done
needed=$(grep -E "^kernel/.*/($(paste -sd'|' "$vm/initramfs/modules"))\.ko(\.[a-z]+)?:" "$dep" |
    tr -d ':' | tr ' ' '\n' | sort -u || true)
for module in $needed; do
    mkdir -p "$vm/initramfs/$modules/$(dirname "$module")"
    case $module in
    *.ko) cp "$kernel_dir/root/$modules/$module" "$vm/initramfs/$modules/$module" ;;
    *.xz) xz -dc "$kernel_dir/root/$modules/$module" >"$vm/initramfs/$modules/${module%.xz}" ;;
    *.zst) zstd -qdc "$kernel_dir/root/$modules/$module" >"$vm/initramfs/$modules/${module%.zst}" ;;
    *.gz) gzip -dc "$kernel_dir/root/$modules/$module" >"$vm/initramfs/$modules/${module%.gz}" ;;
    *) die "cannot unpack the module $module" ;;
    esac
done
{ grep -E "^($(echo "$needed" | paste -sd'|')):" "$dep" || true; } |
    sed -E 's/\.ko\.(xz|zst|gz)/.ko/g' >"$vm/initramfs/$modules/modules.dep"
{
    for var in PATH HOME LANG PYENV_ROOT RUST_BACKTRACE; do
        [ -z "${!var:-}" ] || printf 'export %s=%q\n' "$var" "${!var}"
    done
    printf 'export SLUICE_VM_%s=%q\n' REPO "$repo" TARGET "$target_debug" TESTS "$tests" \
        COMMAND "${SLUICE_VM_COMMAND:-}" TEST_THREADS "${SLUICE_VM_TEST_THREADS:-1}"
} >"$vm/initramfs/vm.env"
(cd "$vm/initramfs" && find . | "$busybox" cpio -o -H newc 2>/dev/null | gzip -1) >"$vm/initramfs.cpio.gz"

# --- Boot --------------------------------------------------------------------------------
# qemu with the host's / read-only and the results folder $4 writable (the guest mounts it
# at the same path), both over virtio-9p; the console (serial) on stdout, \r and terminal
# escapes taken out.
boot() { # accelerator, kernel command line extras, seconds, results folder
    local cpu=host
    [ "$1" = kvm ] || cpu=${SLUICE_VM_CPU:-max}
    timeout --foreground "$3" qemu-system-x86_64 \
        -accel "$1" -cpu "$cpu" -m 4G -smp 2 -nographic -no-reboot -nodefaults \
        -serial stdio -nic none \
        -kernel "$vmlinuz" -initrd "$vm/initramfs.cpio.gz" \
        -append "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init sluice_vm_out=$4 $2" \
        -fsdev local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap \
        -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
        -fsdev local,id=out,path="$4",security_model=none \
        -device virtio-9p-pci,fsdev=out,mount_tag=out \
        </dev/null 2>"$4/qemu.err" | sed -u -e 's/\r$//' -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\x1bc//g'
}

# /dev/kvm may be there and still not boot a stock kernel: a PVM hypervisor (kvm_pvm)
# runs only PVM-enabled guest kernels. A KVM boot reaches the initramfs in ~2 s.
if [ "$accel" != tcg ] && [ -z "$no_kvm" ]; then
    mkdir -p "$out/probe"
    if ! (boot kvm sluice_vm_probe 30 "$out/probe" | grep -q "vm: probe: the kernel is up") 2>/dev/null; then
        no_kvm="KVM does not boot Debian's kernel here ($(head -1 "$out/probe/qemu.err" 2>/dev/null || true)"
        if [ -d /sys/module/kvm_pvm ]; then
            no_kvm="$no_kvm; this host's KVM is PVM (kvm_pvm), which runs only PVM-enabled guest kernels"
        fi
        no_kvm="$no_kvm)"
    fi
fi
if [ -n "$no_kvm" ]; then
    [ "$accel" != kvm ] || skip "$no_kvm"
    say "$no_kvm: emulating with TCG instead (slower; SLUICE_VM_ACCEL=kvm skips instead)"
    accel=tcg
elif [ "$accel" = auto ]; then
    accel=kvm
fi

# One VM, the layouts one after the other. (Two VMs side by side on two cores take longer
# under TCG, not less: each VM's vCPUs wait on the other's.)
say "booting Linux $version ($accel, 2 CPUs, 4 GiB; layouts a and b; tests: ${wanted[*]})"
started=$SECONDS
set +e
boot "$accel" "" "$timeout_s" "$out" | tee "$out/console.log"
status=${PIPESTATUS[0]}
set -e
say "the VM ran for $((SECONDS - started))s; logs in $out"
[ -s "$out/qemu.err" ] && sed 's/^/qemu: /' "$out/qemu.err" >&2
case $(cat "$out/result" 2>/dev/null || echo none) in
"exit status"*) say "SLUICE_VM_COMMAND: $(cat "$out/result")" ;;
pass) say "PASS: cgroup v2 limits hold on Linux $version" ;;
fail) die "FAILED (see above and $out)" ;;
*)
    [ "$status" -ne 124 ] || die "the VM did not finish within ${timeout_s}s (console: $out/console.log)"
    die "the VM stopped without a result (qemu exit status $status; console: $out/console.log)"
    ;;
esac
