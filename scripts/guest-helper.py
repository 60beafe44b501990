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
  guest-helper.py initramfs BUSYBOX INIT APPLETS OUT EXTRA_DIR
      The same, plus every file and directory under EXTRA_DIR at the same path.

Disk and CD test images (scripts/build-test-disks.sh; the tests may use these too):
  guest-helper.py kernel-release BZIMAGE
      Prints the bzImage's kernel release (e.g. 6.1.0-48-amd64), from its setup header.
  guest-helper.py modules MODULES_DIR OUT_DIR NAME...
      Copies the modules NAME... and everything they depend on (the depends= field of
      each .ko's .modinfo section, as depmod reads it; Debian's linux-image packages
      ship no modules.dep) from MODULES_DIR (/lib/modules/RELEASE of the unpacked
      package) into OUT_DIR, flat, and writes OUT_DIR/load-order: the file names in an
      order that loads every module after its dependencies.
  guest-helper.py data SEED LENGTH OUT
      Writes LENGTH bytes of pseudo-random data: SHA-256(SEED + 8-byte little-endian
      counter) for counter 0, 1, ... concatenated. Prints the data's SHA-256.
  guest-helper.py write-pattern FIRST_LBA SECTORS OUT
      Writes the pattern the disk guest writes at FIRST_LBA: SECTORS 512-byte sectors,
      each a label "QUERN-DISK-WRITE lba=NNNNNNNNNN\n" (the sector's own LBA) followed
      by pseudo-random bytes (the data stream of SEED "quern-write-<lba>"). Prints its
      SHA-256.
  guest-helper.py disk-region IMAGE OFFSET LENGTH
      Prints the SHA-256 of LENGTH bytes at byte OFFSET of IMAGE (a raw image; bytes
      past its end count as zeros, as in a sparse or short image).
"""

import gzip
import hashlib
import lzma
import os
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


def build_initramfs(busybox_path, init_path, applets_path, out_path, extra_dir=None):
    dirs = ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "etc", "root"]
    parts = [cpio_entry(d, 0o040755) for d in dirs]
    parts.append(cpio_entry("dev/console", 0o020600, rdev=(5, 1)))
    parts.append(cpio_entry("bin/busybox", 0o100755, open(busybox_path, "rb").read()))
    for line in open(applets_path):
        path = line.strip().lstrip("/")
        if path and path != "bin/busybox" and path.split("/")[0] in ("bin", "sbin", "usr"):
            parts.append(cpio_entry(path, 0o120777, b"/bin/busybox"))
    parts.append(cpio_entry("init", 0o100755, open(init_path, "rb").read()))
    if extra_dir:
        for top, subdirs, files in os.walk(extra_dir):
            subdirs.sort()
            rel = os.path.relpath(top, extra_dir)
            if rel != ".":
                parts.append(cpio_entry(rel, 0o040755))
            for name in sorted(files):
                data = open(os.path.join(top, name), "rb").read()
                path = name if rel == "." else f"{rel}/{name}"
                parts.append(cpio_entry(path, 0o100644, data))
    parts.append(cpio_entry("TRAILER!!!", 0))
    with open(out_path, "wb") as f:
        f.write(gzip.compress(b"".join(parts), mtime=0))


def kernel_release(bzimage_path):
    data = open(bzimage_path, "rb").read()
    if data[0x202:0x206] != b"HdrS":
        sys.exit(f"{bzimage_path}: not a bzImage (no HdrS at 0x202)")
    ptr = struct.unpack_from("<H", data, 0x20E)[0] + 0x200
    return data[ptr : data.index(b"\0", ptr)].split(b" ")[0].decode()


def module_info(path):
    """The key=value strings of a .ko's .modinfo section (what modinfo prints)."""
    d = open(path, "rb").read()
    if d[:5] != b"\x7fELF\x02":
        sys.exit(f"{path}: not an ELF64 module (compressed modules are not handled)")
    shoff = struct.unpack_from("<Q", d, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", d, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", d, shoff + i * shentsize) for i in range(shnum)]
    strtab = secs[shstrndx][4]
    for name_off, _, _, _, off, size, *_ in secs:
        name = d[strtab + name_off : d.index(b"\0", strtab + name_off)]
        if name == b".modinfo":
            return [x.decode() for x in d[off : off + size].split(b"\0") if x]
    return []


def copy_modules(modules_dir, out_dir, names):
    norm = lambda n: n.replace("-", "_")
    paths = {}
    for line in open(os.path.join(modules_dir, "modules.order")):
        rel = line.strip()
        if rel.endswith(".ko"):
            paths[norm(os.path.basename(rel)[:-3])] = os.path.join(modules_dir, rel)
    builtin = {norm(os.path.basename(l.strip())[:-3]) for l in open(os.path.join(modules_dir, "modules.builtin"))}
    order, state = [], {}

    def visit(name, chain):
        name = norm(name)
        if state.get(name) == "done" or name in builtin:
            return
        if state.get(name) == "visiting":
            sys.exit(f"module dependency loop: {' -> '.join(chain + [name])}")
        if name not in paths:
            sys.exit(f"module {name} is neither in modules.order nor built in")
        state[name] = "visiting"
        for kv in module_info(paths[name]):
            if kv.startswith("depends="):
                for dep in filter(None, kv[len("depends=") :].split(",")):
                    visit(dep, chain + [name])
        state[name] = "done"
        order.append(name)

    for n in names:
        visit(n, [])
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "load-order"), "w") as f:
        for name in order:
            shutil.copyfile(paths[name], os.path.join(out_dir, os.path.basename(paths[name])))
            f.write(os.path.basename(paths[name]) + "\n")
    print(" ".join(order))


def data_stream(seed, length):
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(seed.encode() + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:length])


def write_pattern(first_lba, sectors):
    out = bytearray()
    for lba in range(first_lba, first_lba + sectors):
        label = b"QUERN-DISK-WRITE lba=%010d\n" % lba
        out += label + data_stream(f"quern-write-{lba}", 512 - len(label))
    return bytes(out)


def write_out(path, data):
    with open(path, "wb") as f:
        f.write(data)
    print(hashlib.sha256(data).hexdigest())


def region_sha256(image, offset, length):
    h = hashlib.sha256()
    with open(image, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                h.update(bytes(left))  # past the end: zeros
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


if __name__ == "__main__":
    cmd, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if cmd == "vmlinux" and len(args) == 2:
        extract_vmlinux(*args)
    elif cmd == "initramfs" and len(args) in (4, 5):
        build_initramfs(*args)
    elif cmd == "kernel-release" and len(args) == 1:
        print(kernel_release(args[0]))
    elif cmd == "modules" and len(args) >= 3:
        copy_modules(args[0], args[1], args[2:])
    elif cmd == "data" and len(args) == 3:
        write_out(args[2], data_stream(args[0], int(args[1], 0)))
    elif cmd == "write-pattern" and len(args) == 3:
        write_out(args[2], write_pattern(int(args[0], 0), int(args[1], 0)))
    elif cmd == "disk-region" and len(args) == 3:
        print(region_sha256(args[0], int(args[1], 0), int(args[2], 0)))
    else:
        sys.exit(__doc__)
