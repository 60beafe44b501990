#!/usr/bin/env bash
# Fetches the firmware quern boots with into build/roms/ (no firmware binary is kept in
# the repository):
#   bios-256k.bin        SeaBIOS, the default BIOS (Debian's `seabios` package)
#   vgabios-stdvga.bin   SeaBIOS's VGA BIOS for the standard VGA (same package)
#   efi-e1000.rom        iPXE for the e1000 NIC, EFI + PXE image (`ipxe-qemu`)
#   pxe-e1000.rom        iPXE for the e1000 NIC, PXE only (same package)
# Packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x`: nothing
# is installed into the host. Cached: a re-run with every file present does nothing;
# remove build/roms to fetch again. Prints the directory.
#
# quern looks for firmware in `-L` directories first, then build/roms/ (next to the
# binary's checkout or $QUERN_FIRMWARE_DIR), then /usr/share/seabios, /usr/share/qemu
# and /usr/lib/ipxe/qemu (crates/quern/src/setup.rs, firmware_dirs).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/build/roms"
work="$out/.work"
# file  package  path inside the package
wanted=(
    "bios-256k.bin seabios usr/share/seabios/bios-256k.bin"
    "vgabios-stdvga.bin seabios usr/share/seabios/vgabios-stdvga.bin"
    "efi-e1000.rom ipxe-qemu usr/lib/ipxe/qemu/efi-e1000.rom"
    "pxe-e1000.rom ipxe-qemu usr/lib/ipxe/qemu/pxe-e1000.rom"
)

say() { echo "fetch-firmware: $*" >&2; }

missing=()
for w in "${wanted[@]}"; do
    read -r file _ _ <<<"$w"
    [[ -s "$out/$file" ]] || missing+=("$w")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "$out"
    exit 0
fi

for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || { say "missing $tool: this needs a Debian-based host (or install Debian's seabios package)"; exit 1; }
done

updated=0
apt_update() {
    [[ $updated -eq 1 ]] && return
    say "running apt-get update"
    apt-get update >&2
    updated=1
}

# Unpacks package $1 into $work/$1 (once) and prints that directory.
unpack() {
    local pkg=$1 dir="$work/$1"
    if [[ ! -d "$dir" ]]; then
        mkdir -p "$work/debs"
        local deb
        deb=$(ls "$work/debs/${pkg}"_*.deb 2>/dev/null | head -n1 || true)
        if [[ -z "$deb" ]]; then
            say "downloading $pkg"
            (cd "$work/debs" && apt-get download "$pkg" >&2) || { apt_update && (cd "$work/debs" && apt-get download "$pkg" >&2); }
            deb=$(ls "$work/debs/${pkg}"_*.deb | head -n1)
        fi
        say "unpacking $(basename "$deb")"
        rm -rf "$dir.tmp"
        dpkg-deb -x "$deb" "$dir.tmp"
        mv "$dir.tmp" "$dir"
    fi
    echo "$dir"
}

mkdir -p "$out" "$work"
for w in "${missing[@]}"; do
    read -r file pkg path <<<"$w"
    dir=$(unpack "$pkg")
    [[ -e "$dir/$path" ]] || { say "$pkg has no $path"; exit 1; }
    # Some ROMs are symlinks inside the package: copy what they point to.
    cp -L "$dir/$path" "$out/$file.tmp"
    mv "$out/$file.tmp" "$out/$file"
    say "$file from $pkg"
done
echo "$out"
