#!/usr/bin/env python3
"""Helpers for build-test-guest.sh, in Python so they need no root and no extra tools.

  guest-helper.py vmlinux BZIMAGE OUT
      Extracts the uncompressed ELF vmlinux from a bzImage's payload (the setup
      header's payload_offset/payload_length, boot protocol >= 2.08).
  guest-helper.py initramfs BUSYBOX INIT APPLETS OUT
      Writes a gzip'd newc cpio: BUSYBOX as /bin/busybox, a symlink for every applet
      path listed in the APPLETS file (busybox --list-full), INIT as /init and a
      /dev/console node (the kernel opens it before /init runs: without it, init has
      no stdio).
"""

import gzip
import lzma
import shutil
import struct
import subprocess
import sys
import zlib


def extract_vmlinux(bzimage_path, out_path):
    data = open(bzimage_path, "rb").read()
    if data[0x202:0x206] != b"HdrS":
        sys.exit(f"{bzimage_path}: not a bzImage (no HdrS at 0x202)")
    version = struct.unpack_from("<H", data, 0x206)[0]
    if version < 0x208:
        sys.exit(f"{bzimage_path}: boot protocol {version:#x} has no payload fields")
    setup_sects = data[0x1F1] or 4
    offset, length = struct.unpack_from("<II", data, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = data[start : start + length]
    if payload.startswith(b"\xfd7zXZ\x00"):
        out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload.startswith(b"\x1f\x8b"):
        out = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
    elif payload.startswith(b"\x28\xb5\x2f\xfd"):
        if not shutil.which("zstd"):
            sys.exit("payload is zstd-compressed: install zstd (apt-get install zstd)")
        out = subprocess.run(["zstd", "-dc"], input=payload, capture_output=True, check=False).stdout
    elif payload.startswith(b"\x5d\x00\x00"):
        out = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)
    else:
        sys.exit(f"unknown payload compression (magic {payload[:6].hex()})")
    if not out.startswith(b"\x7fELF"):
        sys.exit("decompressed payload is not an ELF file")
    with open(out_path, "wb") as f:
        f.write(out)


def cpio_entry(name, mode, data=b"", rdev=(0, 0), ino=[0]):
    ino[0] += 1
    name_b = name.encode() + b"\0"
    fields = [ino[0], mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
    hdr = b"070701" + b"".join(b"%08x" % v for v in fields)
    pad = lambda n: b"\0" * (-n % 4)
    return hdr + name_b + pad(len(hdr) + len(name_b)) + data + pad(len(data))


def build_initramfs(busybox_path, init_path, applets_path, out_path):
    dirs = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "etc", "root"]
    parts = [cpio_entry(d, 0o040755) for d in dirs]
    parts.append(cpio_entry("dev/console", 0o020600, rdev=(5, 1)))
    parts.append(cpio_entry("bin/busybox", 0o100755, open(busybox_path, "rb").read()))
    for line in open(applets_path):
        path = line.strip().lstrip("/")
        if path and path != "bin/busybox" and path.split("/")[0] in ("bin", "sbin", "usr"):
            parts.append(cpio_entry(path, 0o120777, b"/bin/busybox"))
    parts.append(cpio_entry("init", 0o100755, open(init_path, "rb").read()))
    parts.append(cpio_entry("TRAILER!!!", 0))
    with open(out_path, "wb") as f:
        f.write(gzip.compress(b"".join(parts), mtime=0))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "vmlinux":
        extract_vmlinux(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 6 and sys.argv[1] == "initramfs":
        build_initramfs(*sys.argv[2:])
    else:
        sys.exit(__doc__)
