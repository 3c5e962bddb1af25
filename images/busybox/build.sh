#!/usr/bin/env bash
# Builds the `busybox` container image offline from Debian's busybox-static:
# a rootfs archive (busybox.tar.gz) whose init (busybox init) reaps zombies,
# and its manifest (manifest.json), into OUT_DIR.
#
#   images/busybox/build.sh OUT_DIR
#
# The archive is reproducible: sorted entries, fixed mtimes and owners, gzip -n.
set -euo pipefail
out="${1:?usage: build.sh OUT_DIR}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bb=/bin/busybox
[ -x "$bb" ] || { echo "build.sh: $bb missing: apt-get install busybox-static" >&2; exit 1; }
if ldd "$bb" >/dev/null 2>&1; then
    echo "build.sh: $bb is dynamically linked; the image needs busybox-static" >&2
    exit 1
fi
# (No `| head` or `grep -q` below: with pipefail, a reader that stops early
# kills the writer with SIGPIPE and the script with it.)
bb_version="$("$bb" 2>/dev/null | sed -n '1s/^BusyBox v\([^ ]*\).*/\1/p' | sed 's/[^0-9A-Za-z._-]/-/g')"

mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
r="$work/rootfs"
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,etc/init.d,proc,sys,dev,tmp,run,var/log,root}
chmod 1777 "$r/tmp"
install -m 755 "$bb" "$r/bin/busybox"
for applet in $("$bb" --list-full); do
    [ "$applet" = bin/busybox ] && continue
    mkdir -p "$r/$(dirname "$applet")"
    ln -sf /bin/busybox "$r/$applet"
done

# The metadata clients (mdata-get, mdata-list, mdata-put, mdata-delete):
# one static binary that acts by the name it is called with.
"$here/../mdata/build.sh" "$r/usr/sbin"

cat >"$r/etc/inittab" <<'INIT'
# busybox init is pid 1: it reaps orphans and zombies.
::sysinit:/etc/init.d/rcS
::shutdown:/bin/sync
INIT
cat >"$r/etc/init.d/rcS" <<'RCS'
#!/bin/sh
# Runs once at start. Networking is set up by the node's agent.
[ -d /proc/self ] || mount -t proc proc /proc
echo "nereid busybox container up: $(hostname)" >/dev/console 2>/dev/null || true
# The instance's user-script (its metadata, as on SmartOS), once per boot,
# in the background; its output goes to /var/log/user-script.log.
if /usr/sbin/mdata-get user-script >/run/user-script 2>/dev/null; then
    chmod 700 /run/user-script
    (
        if [ "$(head -c 2 /run/user-script)" = "#!" ]; then /run/user-script; else sh /run/user-script; fi
        echo "user-script exited $?"
    ) >/var/log/user-script.log 2>&1 &
fi
RCS
chmod 755 "$r/etc/init.d/rcS"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$r/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
printf 'busybox\n' >"$r/etc/hostname"
: >"$r/etc/resolv.conf"
printf 'NAME="Nereid busybox"\nID=busybox\nVERSION_ID=%s\n' "$bb_version" >"$r/etc/os-release"

# Written beside and renamed: a reader never sees a half-written archive.
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$r" -cf - . | gzip -n -9 >"$out/.busybox.tar.gz.$$"
mv -f "$out/.busybox.tar.gz.$$" "$out/busybox.tar.gz"
# The most it unpacks to (what nodes bound its unpacking by): its files' bytes and 1 MiB.
unpacked=$(( $(tar -tvzf "$out/busybox.tar.gz" | awk '{s += $3} END {print s + 0}') + (1 << 20) ))
sed "s/@VERSION@/$bb_version/; s/@UNPACKED@/$unpacked/" "$here/manifest.json.in" >"$out/.manifest.json.$$"
mv -f "$out/.manifest.json.$$" "$out/manifest.json"
echo "$out/busybox.tar.gz ($(stat -c %s "$out/busybox.tar.gz") bytes), $out/manifest.json"
