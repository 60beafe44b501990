#!/usr/bin/env bash
# Builds the network tests' guest files into build/guest/, from Debian's packages only
# (run by scripts/build-test-guest.sh after the kernel and busybox exist):
#   initramfs-net.cpio.gz  busybox, the stock kernel's e1000 module; /init below
#   tftp/                  a PXE boot directory: pxelinux.0 and ldlinux.c32 (Debian's
#                          pxelinux and syslinux-common), pxelinux.cfg/default booting
#                          vmlinuz with initrd.gz (= initramfs.cpio.gz: QUERN-INIT-OK)
#
# /init of initramfs-net (steps from the kernel command line, in this order):
#   QUERN-NET-INIT-OK                first thing
#   (insmod e1000, evdev, button; eth0 up)  QUERN-NET-FAIL <why> and power-off on any failure
#   quern.count=1                    a background loop printing QUERN-COUNT <n> every
#                                    half second (a guest that visibly runs, or not)
#   quern.ip=dhcp                    udhcpc; prints QUERN-NET-LEASE <address>
#   quern.ip=A.B.C.D/N               a static address
#   quern.ping=ADDR                  ping -c 3; QUERN-NET-PING-OK
#   quern.get=URL                    wget; QUERN-NET-GET <sha256> <bytes>
#   quern.fwd=URL                    wget through a guestfwd; QUERN-NET-FWD <sha256>
#   quern.blocked=URL                wget must fail (restrict=on); QUERN-NET-BLOCKED
#   quern.serve=MIB                  MIB MiB of random text in /www/data.bin, busybox httpd
#                                    on port 80; QUERN-NET-SERVE <sha256>
#   quern.put=URL                    POSTs /www/data.bin there (wget --post-file): the
#                                    guest-to-host direction; QUERN-NET-PUT-OK
#   quern.wait=PORT                  waits for one TCP connection on PORT (nc -l): the
#                                    host's "done"
#   quern.bench=URL                  for benches/net.rs: QUERN-BENCH net-down <start> <end>
#                                    around wget -O /dev/null URL/data (the host's size),
#                                    QUERN-BENCH net-up <start> <end> around a POST of 16 MiB
#                                    to URL/up, QUERN-BENCH-BYTES <down> <up>, and
#                                    QUERN-BENCH-PING <min/avg/max ms> of 20 pings to the
#                                    gateway
#   quern.button=1                   waits for the ACPI power button (the kernel's button
#                                    driver's input event), prints QUERN-POWER-BUTTON
#   quern.shell=1                    (with button=1) the wait goes to the background and a
#                                    shell takes the console (QUERN-SHELL-READY); the
#                                    button still powers off
#   QUERN-NET-DONE, then poweroff -f
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/build/guest"
work="$out/.work"
helper="$root/scripts/guest-helper.py"
version=11

say() { echo "build-net-guest: $*" >&2; }

# shellcheck source=scripts/debian-packages.sh
source "$root/scripts/debian-packages.sh"

if [[ -s "$out/initramfs-net.cpio.gz" && -s "$out/tftp/pxelinux.0" && "$(cat "$out/net.version" 2>/dev/null)" == "$version" ]]; then
    exit 0
fi
mkdir -p "$work"

release=$(python3 "$helper" kernel-release "$out/vmlinuz")
mods="$work/modules-net2-$release"
if [[ ! -s "$mods/load-order" ]]; then
    kdir=$(unpack "linux-image-$release")
    rm -rf "$mods.tmp"
    say "modules: $(python3 "$helper" modules "$kdir/lib/modules/$release" "$mods.tmp" e1000 evdev button)"
    rm -rf "$kdir" # 400 MB of modules; the .deb stays cached
    mv "$mods.tmp" "$mods"
fi
bdir=$(unpack busybox-static)
busybox="$bdir/bin/busybox"
"$busybox" --list-full >"$work/applets"

tree="$work/rootfs-net"
rm -rf "$tree"
mkdir -p "$tree/lib/modules" "$tree/etc"
cp "$mods"/* "$tree/lib/modules/"
cat >"$tree/etc/udhcpc.script" <<'EOF'
#!/bin/sh
case "$1" in
bound | renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    echo "QUERN-NET-LEASE $ip"
    ;;
esac
EOF
cat >"$work/init-net" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo QUERN-NET-INIT-OK
fail() { echo "QUERN-NET-FAIL $*"; poweroff -f; sleep 10; }
echo > /proc/sys/kernel/modprobe
while read -r ko; do insmod /lib/modules/$ko || fail "insmod $ko"; done </lib/modules/load-order
arg() { for tok in $(cat /proc/cmdline); do case "$tok" in quern.$1=*) echo "${tok#*=}" ;; esac; done; }
i=0
while [ ! -e /sys/class/net/eth0 ]; do
    [ $i -ge 100 ] && fail "no eth0"
    sleep 0.1
    i=$((i + 1))
done
if [ -n "$(arg count)" ]; then
    (n=0; while :; do echo "QUERN-COUNT $n"; n=$((n + 1)); sleep 0.5; done) &
fi
ip link set lo up
ip link set eth0 up || fail "eth0 up"
ip=$(arg ip)
case "$ip" in
dhcp)
    cp /etc/udhcpc.script /tmp/udhcpc.script && chmod +x /tmp/udhcpc.script
    udhcpc -i eth0 -n -q -t 10 -T 1 -s /tmp/udhcpc.script || fail "no DHCP lease"
    ;;
'') ;;
*) ip addr add "$ip" dev eth0 || fail "ip addr add $ip" ;;
esac
peer=$(arg ping)
if [ -n "$peer" ]; then
    ping -c 3 -W 5 "$peer" >/tmp/ping || fail "ping $peer: $(tail -n 2 /tmp/ping)"
    echo QUERN-NET-PING-OK
fi
url=$(arg get)
if [ -n "$url" ]; then
    wget -q -O /tmp/got "$url" || fail "wget $url"
    sum=$(sha256sum /tmp/got)
    echo "QUERN-NET-GET ${sum%% *} $(wc -c </tmp/got)"
    echo "QUERN-NET-IRQS $(grep eth0 /proc/interrupts | tr -s ' ')"
    rm -f /tmp/got
fi
fwd=$(arg fwd)
if [ -n "$fwd" ]; then
    wget -q -O /tmp/fwd "$fwd" || fail "wget $fwd"
    sum=$(sha256sum /tmp/fwd)
    echo "QUERN-NET-FWD ${sum%% *} $(wc -c </tmp/fwd)"
fi
blocked=$(arg blocked)
if [ -n "$blocked" ]; then
    if wget -q -T 5 -O /tmp/blocked "$blocked" 2>/dev/null; then fail "reached $blocked"; fi
    echo QUERN-NET-BLOCKED
fi
mib=$(arg serve)
if [ -n "$mib" ]; then
    mkdir -p /www
    # Text (base64 of random bytes): busybox wget --post-file sends up to the first NUL.
    head -c $((mib * 786432)) /dev/urandom | base64 -w 0 >/www/data.bin || fail "data.bin"
    sum=$(sha256sum /www/data.bin)
    httpd -p 80 -h /www || fail "httpd"
    echo "QUERN-NET-SERVE ${sum%% *}"
fi
dest=$(arg put)
if [ -n "$dest" ]; then
    wget -q -O /dev/null --post-file /www/data.bin "$dest" || fail "wget --post-file $dest"
    echo QUERN-NET-PUT-OK
fi
bench=$(arg bench)
if [ -n "$bench" ]; then
    # Seconds of the monotonic clock in ns steps (/proc/uptime's 10 ms are too coarse).
    stamp() {
        ns=
        { read -r _; read -r _; read -r _ _ ns _; } </proc/timer_list 2>/dev/null
        case "$ns" in
        '' | *[!0-9]*) cut -d' ' -f1 /proc/uptime ;;
        *) printf '%d.%09d\n' $((ns / 1000000000)) $((ns % 1000000000)) ;;
        esac
    }
    head -c 12582912 /dev/urandom | base64 -w 0 >/tmp/up || fail "making /tmp/up"
    echo QUERN-NET-BENCH-START
    a=$(stamp); wget -q -O /tmp/down "$bench/data" || fail "wget $bench/data"; b=$(stamp)
    echo "QUERN-BENCH net-down $a $b"
    echo "QUERN-NET-IRQS $(grep eth0 /proc/interrupts | tr -s ' ')"
    down=$(wc -c </tmp/down); rm -f /tmp/down
    a=$(stamp); wget -q -O /dev/null --post-file /tmp/up "$bench/up" || fail "POST $bench/up"; b=$(stamp)
    echo "QUERN-BENCH net-up $a $b"
    echo "QUERN-BENCH-BYTES $down $(wc -c </tmp/up)"
    gw=$(ip route | sed -n 's/^default via \([0-9.]*\).*/\1/p')
    ping -c 20 -i 0.2 "${gw:-10.0.2.2}" >/tmp/ping || fail "ping ${gw:-10.0.2.2}"
    echo "QUERN-BENCH-PING $(sed -n 's#.*= \([0-9.]*/[0-9.]*/[0-9.]*\) ms#\1#p' /tmp/ping)"
fi
port=$(arg wait)
if [ -n "$port" ]; then
    nc -l -p "$port" </dev/null >/dev/null || fail "nc -l $port"
fi
if [ -n "$(arg button)" ]; then
    ev=
    for d in /sys/class/input/event*; do
        [ "$(cat "$d/device/name" 2>/dev/null)" = "Power Button" ] && ev=/dev/input/${d##*/}
    done
    [ -n "$ev" ] || fail "no power button input device"
    # Open before saying ready: a press before the open would be lost.
    exec 3<"$ev" || fail "opening $ev"
    echo QUERN-BUTTON-READY
    if [ -n "$(arg shell)" ]; then
        (dd of=/dev/null bs=24 count=1 <&3 2>/dev/null; echo QUERN-POWER-BUTTON; poweroff -f) &
        exec 3<&-
        echo QUERN-SHELL-READY
        while :; do sh; done
    fi
    dd of=/dev/null bs=24 count=1 <&3 2>/dev/null || fail "reading $ev"
    echo QUERN-POWER-BUTTON
fi
echo QUERN-NET-DONE
poweroff -f
EOF
say "writing initramfs-net.cpio.gz"
python3 "$helper" initramfs "$busybox" "$work/init-net" "$work/applets" "$out/initramfs-net.cpio.gz.tmp" "$tree"
mv "$out/initramfs-net.cpio.gz.tmp" "$out/initramfs-net.cpio.gz"
rm -rf "$tree"

# The PXE directory.
pxdir=$(unpack pxelinux)
scdir=$(unpack syslinux-common)
tftp="$out/tftp"
rm -rf "$tftp.tmp"
mkdir -p "$tftp.tmp/pxelinux.cfg"
cp "$pxdir/usr/lib/PXELINUX/pxelinux.0" "$tftp.tmp/"
cp "$scdir/usr/lib/syslinux/modules/bios/ldlinux.c32" "$tftp.tmp/"
cp "$out/vmlinuz" "$tftp.tmp/vmlinuz"
cp "$out/initramfs.cpio.gz" "$tftp.tmp/initrd.gz"
printf 'SAY QUERN-BOOTLOADER pxelinux\nDEFAULT quern\nPROMPT 0\nTIMEOUT 0\nLABEL quern\n  KERNEL vmlinuz\n  INITRD initrd.gz\n  APPEND console=ttyS0 panic=-1\n' \
    >"$tftp.tmp/pxelinux.cfg/default"
rm -rf "$tftp"
mv "$tftp.tmp" "$tftp"
echo "$version" >"$out/net.version"
