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

# apt_update and unpack.
# shellcheck source=scripts/debian-packages.sh
source "$root/scripts/debian-packages.sh"

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
