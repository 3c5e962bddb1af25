#!/usr/bin/env bash
# Builds the `tiny-vm` KVM image offline from Debian packages:
#   - the kernel of Debian's cloud kernel package (downloaded with apt-get
#     download and unpacked with dpkg-deb -x: nothing is installed),
#   - a busybox initramfs whose /init loads the virtio modules in order
#     (virtio_console carries the metadata port), runs the instance's
#     user-script (read with the static mdata-get of images/mdata),
#     configures its NICs from the kernel command line, as Nereid's KVM driver
#     writes it (nereid.nic=MAC,ADDR/PREFIX per NIC, matched by MAC;
#     nereid.gw=GATEWAY; nereid.dns=A,B; nereid.hostname=NAME), prints
#     NEREID-READY on the serial console and powers off on an ACPI
#     power-button event,
# bundled as tiny-vm.tar.gz (vmlinuz, initramfs.gz, cmdline) with manifest.json.
#
#   images/tiny-vm/build.sh OUT_DIR      (the .deb is cached in OUT_DIR/cache)
set -euo pipefail
out="${1:?usage: build.sh OUT_DIR}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bb=/bin/busybox
for tool in dpkg-deb cpio gzip "$bb"; do
    command -v "$tool" >/dev/null || { echo "build.sh: $tool is missing (apt-get install busybox-static cpio)" >&2; exit 1; }
done
mkdir -p "$out/cache"
out="$(cd "$out" && pwd)"

kernel_pkg() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | sed -n 1p; }
pkg="$(kernel_pkg)"
if [ -z "$pkg" ]; then
    apt-get update -qq
    pkg="$(kernel_pkg)"
fi
[ -n "$pkg" ] || { echo "build.sh: no linux-image-*-cloud-amd64 package is known to apt" >&2; exit 1; }
deb="$(ls "$out/cache/${pkg}"_*.deb 2>/dev/null | sed -n 1p || true)"
if [ -z "$deb" ]; then
    echo "downloading $pkg" >&2
    dl="$(mktemp -d "$out/cache/.dl.XXXXXX")"
    (cd "$dl" && chmod 777 . && apt-get download -q "$pkg" >/dev/null 2>&1)
    mv -f "$dl"/*.deb "$out/cache/"
    rmdir "$dl"
    deb="$(ls "$out/cache/${pkg}"_*.deb | sed -n 1p)"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$deb" "$work/pkg"
kver="$(ls "$work/pkg/lib/modules" | sed -n 1p)"
mods="$work/pkg/lib/modules/$kver/kernel"

r="$work/initramfs"
mkdir -p "$r"/{bin,sbin,etc/acpi/PWRF,proc,sys,dev,tmp,run,lib/modules}
install -m 755 "$bb" "$r/bin/busybox"
# Load order matters: each module needs the ones before it.
order="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_mmio failover net_failover virtio_net virtio_console button evdev"
for m in $order; do
    f="$(find "$mods" -name "$m.ko" -o -name "$m.ko.xz" | sed -n 1p)"
    [ -n "$f" ] || { echo "build.sh: module $m not in $pkg" >&2; exit 1; }
    case "$f" in
        *.xz) xz -dc "$f" >"$r/lib/modules/$m.ko" ;;
        *) cp "$f" "$r/lib/modules/$m.ko" ;;
    esac
done
echo "$order" >"$r/lib/modules/order"
# The metadata clients (they find the virtio-serial port org.smartos.metadata).
"$here/../mdata/build.sh" "$r/usr/sbin"

cat >"$r/init" <<'INIT'
#!/bin/busybox sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m.ko" 2>/dev/null || echo "NEREID-WARN cannot load $m"
done
nics=""; gw=""; dns=""; name="tiny-vm"
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        nereid.nic=*) nics="$nics ${arg#nereid.nic=}" ;;
        nereid.gw=*) gw="${arg#nereid.gw=}" ;;
        nereid.dns=*) dns="${arg#nereid.dns=}" ;;
        nereid.hostname=*) name="${arg#nereid.hostname=}" ;;
    esac
done
hostname "$name"
ip link set lo up
# Each NIC by its MAC (virtio devices may appear in any order).
for nic in $nics; do
    mac="${nic%%,*}"; addr="${nic#*,}"; dev=""
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        for d in /sys/class/net/*; do
            [ "$(cat "$d/address" 2>/dev/null)" = "$mac" ] && dev="${d##*/}"
        done
        [ -n "$dev" ] && break
        sleep 0.2
    done
    if [ -z "$dev" ]; then echo "NEREID-WARN no NIC with MAC $mac"; continue; fi
    ip link set "$dev" up
    ip addr add "$addr" dev "$dev"
    echo "NEREID-NET $dev $addr $mac"
done
[ -n "$gw" ] && ip route add default via "$gw"
: >/etc/resolv.conf
for r in $(echo "$dns" | tr ',' ' '); do echo "nameserver $r" >>/etc/resolv.conf; done
# The ACPI power button (QMP system_powerdown) powers the machine off.
acpid -c /etc/acpi -a /etc/acpid.conf -l /tmp/acpid.log
echo "NEREID-READY $(hostname) $(uname -r)"
# The instance's user-script (its metadata, as on SmartOS), in the
# background, its output on the console.
(
    if mdata-get user-script >/tmp/user-script 2>/dev/null; then
        sh /tmp/user-script
        echo "NEREID-USER-SCRIPT exited $?"
    fi
) >/dev/console 2>&1 &
# pid 1 must never exit; it also reaps orphans.
while true; do wait; sleep 1; done
INIT
chmod 755 "$r/init"
printf 'PWRF PWRF/00000080\n' >"$r/etc/acpid.conf"
printf '#!/bin/sh\necho "NEREID-POWEROFF" >/dev/console\nsync\npoweroff -f\n' >"$r/etc/acpi/PWRF/00000080"
chmod 755 "$r/etc/acpi/PWRF/00000080"

b="$work/bundle"
mkdir -p "$b"
cp "$work/pkg/boot/vmlinuz-$kver" "$b/vmlinuz"
(cd "$r" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 --reproducible) | gzip -n -9 >"$b/initramfs.gz"
printf 'console=ttyS0 panic=-1 quiet\n' >"$b/cmdline"
# Written beside and renamed: a reader never sees a half-written archive.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$b" -cf - . | gzip -n -9 >"$out/.tiny-vm.tar.gz.$$"
mv -f "$out/.tiny-vm.tar.gz.$$" "$out/tiny-vm.tar.gz"
version="$(dpkg-deb -f "$deb" Version | sed 's/[^0-9A-Za-z._-]/-/g')"
# The most it unpacks to (what nodes bound its unpacking by): its files' bytes and 1 MiB.
unpacked=$(( $(tar -tvzf "$out/tiny-vm.tar.gz" | awk '{s += $3} END {print s + 0}') + (1 << 20) ))
sed "s/@VERSION@/$version/; s/@KERNEL@/$kver/; s/@UNPACKED@/$unpacked/" "$here/manifest.json.in" >"$out/.manifest.json.$$"
mv -f "$out/.manifest.json.$$" "$out/manifest.json"
echo "$out/tiny-vm.tar.gz ($(stat -c %s "$out/tiny-vm.tar.gz") bytes, kernel $kver), $out/manifest.json"
