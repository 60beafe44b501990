#!/usr/bin/env python3
"""Helpers for build-programs-guest.sh, in Python so they need no root and no extra tools.

  programs-helper.py closure ROOTFS TREE...
      Makes ROOTFS's dynamically linked programs runnable: for every ELF file under
      ROOTFS, its program interpreter (PT_INTERP) and each library it names (DT_NEEDED)
      are looked up in the TREEs (unpacked Debian packages), in the directories the
      dynamic loader searches (/lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu, /lib,
      /usr/lib), and copied into ROOTFS at the same path (a symlink as a symlink, and
      what it points to), until nothing is missing. A library that no TREE has is an
      error naming the file that needs it. Prints the libraries copied.
  programs-helper.py initramfs ROOTFS OUT
      Writes ROOTFS as a gzip'd newc cpio: directories, files with their permission
      bits, symlinks, all owned by root with time 0, plus a /dev/console node (the kernel
      opens it before /init runs: without it, init has no stdio).
  programs-helper.py expect WORK_PY OUT KEY=VALUE...
      Computes what the guest's workloads must print for the sizes KEY=VALUE (the
      variables of build-programs-guest.sh's size table) and writes them with the
      sizes to OUT as shell variable assignments for the guest's /init. The input data
      is made as the guest's gen.awk makes it; the perl, sqlite and awk results are
      computed here by the same rules; the python workload is WORK_PY itself, run by
      this Python.
"""

import gzip
import hashlib
import os
import re
import shlex
import stat
import string
import struct
import subprocess
import sys

LIB_DIRS = ["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib", "lib64"]


def elf_deps(path):
    """(interpreter or None, [DT_NEEDED names]) of an ELF64 little-endian file, or None
    if the file is not one."""
    with open(path, "rb") as f:
        d = f.read()
    if d[:4] != b"\x7fELF":
        return None
    if d[4] != 2 or d[5] != 1:
        sys.exit(f"{path}: not a 64-bit little-endian ELF file")
    phoff = struct.unpack_from("<Q", d, 0x20)[0]
    phentsize, phnum = struct.unpack_from("<HH", d, 0x36)
    loads, dynamic, interp = [], None, None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", d, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:  # PT_DYNAMIC
            dynamic = (p_offset, p_filesz)
        elif p_type == 3:  # PT_INTERP
            interp = d[p_offset : p_offset + p_filesz].split(b"\0")[0].decode()
    if dynamic is None:
        return interp, []

    def file_offset(vaddr):
        for v, o, n in loads:
            if v <= vaddr < v + n:
                return vaddr - v + o
        sys.exit(f"{path}: address {vaddr:#x} is in no PT_LOAD segment")

    entries = []
    off, end = dynamic[0], dynamic[0] + dynamic[1]
    while off + 16 <= end:
        tag, val = struct.unpack_from("<qQ", d, off)
        if tag == 0:  # DT_NULL
            break
        entries.append((tag, val))
        off += 16
    strtab = [v for t, v in entries if t == 5]  # DT_STRTAB
    needed = [v for t, v in entries if t == 1]  # DT_NEEDED
    if needed and not strtab:
        sys.exit(f"{path}: DT_NEEDED without DT_STRTAB")
    names = []
    for n in needed:
        s = file_offset(strtab[0]) + n
        names.append(d[s : d.index(b"\0", s)].decode())
    return interp, names


def copy_path(rel, tree, rootfs, copied):
    """Copies TREE/rel to ROOTFS/rel; a symlink is copied as one and its target too."""
    dst = os.path.join(rootfs, rel)
    if os.path.lexists(dst):
        return
    src = os.path.join(tree, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.islink(src):
        target = os.readlink(src)
        os.symlink(target, dst)
        target_rel = target.lstrip("/") if target.startswith("/") else os.path.normpath(os.path.join(os.path.dirname(rel), target))
        if not os.path.lexists(os.path.join(tree, target_rel)):
            sys.exit(f"{src} points to {target}, which is not in {tree}")
        copy_path(target_rel, tree, rootfs, copied)
    else:
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read())
        os.chmod(dst, os.stat(src).st_mode & 0o7777)
        copied.append(rel)


def find_in_trees(rel_paths, trees):
    for rel in rel_paths:
        for tree in trees:
            if os.path.lexists(os.path.join(tree, rel)):
                return rel, tree
    return None


def closure(rootfs, trees):
    copied = []
    done = set()
    while True:
        todo = []
        for top, _, files in os.walk(rootfs):
            for name in files:
                path = os.path.join(top, name)
                if not os.path.islink(path) and path not in done:
                    todo.append(path)
        if not todo:
            break
        for path in sorted(todo):
            done.add(path)
            deps = elf_deps(path)
            if deps is None:
                continue
            interp, needed = deps
            wants = []
            if interp:
                wants.append((interp, [interp.lstrip("/")]))
            for name in needed:
                wants.append((name, [f"{d}/{name}" for d in LIB_DIRS]))
            for name, candidates in wants:
                if any(os.path.lexists(os.path.join(rootfs, c)) for c in candidates):
                    continue
                found = find_in_trees(candidates, trees)
                if found is None:
                    rel = os.path.relpath(path, rootfs)
                    sys.exit(f"/{rel} needs {name}, which none of the unpacked packages has ({', '.join(trees)})")
                copy_path(found[0], found[1], rootfs, copied)
    print(" ".join(os.path.basename(c) for c in sorted(copied)))


def cpio_entry(name, mode, data=b"", rdev=(0, 0), ino=[0]):
    ino[0] += 1
    name_b = name.encode() + b"\0"
    fields = [ino[0], mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0]
    hdr = b"070701" + b"".join(b"%08x" % v for v in fields)
    pad = lambda n: b"\0" * (-n % 4)
    return hdr + name_b + pad(len(hdr) + len(name_b)) + data + pad(len(data))


def build_initramfs(rootfs, out_path):
    parts = []
    for top, subdirs, files in os.walk(rootfs):
        subdirs.sort()
        rel = os.path.relpath(top, rootfs)
        if rel != ".":
            parts.append(cpio_entry(rel, 0o040755))
        # os.walk lists symlinks to directories among the directories.
        links = [s for s in subdirs if os.path.islink(os.path.join(top, s))]
        subdirs[:] = [s for s in subdirs if s not in links]
        for name in sorted(files + links):
            path = os.path.join(top, name)
            entry = name if rel == "." else f"{rel}/{name}"
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                parts.append(cpio_entry(entry, 0o120777, os.readlink(path).encode()))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    parts.append(cpio_entry(entry, 0o100000 | (st.st_mode & 0o7777), f.read()))
            else:
                sys.exit(f"{path}: neither a file, a directory nor a symlink")
    if not os.path.isdir(os.path.join(rootfs, "dev")):
        parts.append(cpio_entry("dev", 0o040755))
    parts.append(cpio_entry("dev/console", 0o020600, rdev=(5, 1)))
    parts.append(cpio_entry("TRAILER!!!", 0))
    with open(out_path, "wb") as f:
        f.write(gzip.compress(b"".join(parts), mtime=0))


# The guest's input text: gen.awk prints a block (MINSTD, x = x * 48271 mod 2^31 - 1; the
# products stay below 2^53, so awk's doubles hold them exactly).
SYLLABLES = "ka lo mi ne ru sa te vo bi da fe gu ha ji ko lu ma no pe qui ra si tu ve wa xe yo ze an el in or un st".split()


def gen_block(lines):
    x = 20261202

    def step():
        nonlocal x
        x = x * 48271 % 2147483647
        return x

    words = []
    for _ in range(1024):
        n = 1 + step() % 4
        words.append("".join(SYLLABLES[step() % len(SYLLABLES)] for _ in range(n)))
    out = []
    for _ in range(lines):
        nw = 4 + step() % 12
        line = []
        for _ in range(nw):
            v = step()
            k = v % 4096
            k = k * k // 16384
            line.append(str(v % 100000) if v % 61 == 0 else words[k])
        out.append(" ".join(line) + ".\n")
    return out


def gen_lines(block_lines):
    """The guest's text: the block, then the block with its letters rotated by 13, 7
    and 20 places (tr a-z n-za-m, h-za-g, u-za-t)."""
    block = gen_block(block_lines)
    out = list(block)
    for r in (13, 7, 20):
        table = str.maketrans(string.ascii_lowercase, string.ascii_lowercase[r:] + string.ascii_lowercase[:r])
        out += [line.translate(table) for line in block]
    return out


def perl_expect(lines):
    """What work.pl prints for these lines."""
    count, tokens, numsum, subs, length, repeats = {}, 0, 0, 0, 0, 0
    for line in lines:
        for t in re.findall(r"[a-z]+|\d+", line):
            tokens += 1
            if t[0].isdigit():
                numsum += int(t)
            else:
                count[t] = count.get(t, 0) + 1
        repeats += len(re.findall(r"\b(\w+) \1\b", line))
        u, n = re.subn(r"([bcdfghjklmnpqrstvwxz])([aeiou])\1\2", r"<\1\2>", line)
        subs += n
        length += len(u)
    top = sorted(count.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    return (
        f"lines={len(lines)} tokens={tokens} distinct={len(count)} numsum={numsum} repeats={repeats} "
        f"subs={subs} length={length} top={','.join(f'{w}:{c}' for w, c in top)}"
    )


def sqlite_expect(lines):
    """What work.sql's queries print (sqlite3's list mode, one line each), joined by spaces."""
    rows = []
    for nr, line in enumerate(lines, 1):
        text = line.rstrip("\n")
        rows.append((nr % 997, (nr * 7919) % 100003 + len(text), text.split()[0], text))
    out = []
    ws = [r[2] for r in rows]
    out.append(f"{len(rows)}|{sum(r[1] for r in rows)}|{sum(len(r[3]) for r in rows)}|{min(ws)}|{max(ws)}")
    out.append(str(sum(r[1] for r in rows if 100 <= r[0] <= 199)))
    per_w = {}
    for r in rows:
        per_w[r[2]] = per_w.get(r[2], 0) + 1
    for w, c in sorted(per_w.items(), key=lambda kv: (-kv[1], kv[0]))[:3]:
        out.append(f"{w}|{c}")
    per_k = {}
    for r in rows:
        c, s = per_k.get(r[0], (0, 0))
        per_k[r[0]] = (c + 1, s + r[1])
    for k, (c, s) in sorted(per_k.items(), key=lambda kv: (-kv[1][1], kv[0]))[:3]:
        out.append(f"{k}|{c}|{s}")
    out.append(str(sum(1 for r in rows if "kaka" in r[3])))
    return " ".join(out)


def awk_expect(n):
    """The MD5 of what `seq 1 n | awk -f floats.awk` prints."""
    h = hashlib.md5()
    s = hsum = 0.0
    for i in range(1, n + 1):
        r = i / 2 + 0.5
        for _ in range(4):
            r = (r + i / r) / 2
        s += r
        hsum += 1 / i
        x = i / 7
        h.update(("%.5f %.3e %d %d %.10g\n" % (x, s, int(x * 3), int(r * 1000), hsum)).encode())
    h.update(("sum %.6f %.12f\n" % (s, hsum)).encode())
    return h.hexdigest()


def expect(work_py, out_path, assignments):
    sizes = {}
    for a in assignments:
        k, v = a.split("=", 1)
        sizes[k] = int(v)
    lines = gen_lines(sizes["block_lines"])
    data = "".join(lines).encode()
    head = lambda key: "".join(lines[: sizes[key]]).encode()
    values = dict(sizes)
    values["data_bytes"] = len(data)
    values["data_sha256"] = hashlib.sha256(data).hexdigest()
    values["data_md5"] = hashlib.md5(data).hexdigest()
    values["perl_expect"] = perl_expect(lines[: sizes["perl_lines"]])
    values["sqlite_expect"] = sqlite_expect(lines[: sizes["sqlite_rows"]])
    values["awk_expect"] = awk_expect(sizes["awk_n"])
    tmp = out_path + ".python-input"
    with open(tmp, "wb") as f:
        f.write(head("python_lines"))
    py = subprocess.run([sys.executable, work_py, tmp], capture_output=True, text=True, check=False)
    os.unlink(tmp)
    if py.returncode != 0:
        sys.exit(f"{work_py} failed on the host:\n{py.stderr}")
    values["python_expect"] = py.stdout.strip()
    with open(out_path, "w") as f:
        for k, v in values.items():
            f.write(f"{k}={shlex.quote(str(v))}\n")
    print(f"{len(data)} bytes of data, sha256 {values['data_sha256']}")


if __name__ == "__main__":
    cmd, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if cmd == "closure" and len(args) >= 2:
        closure(args[0], args[1:])
    elif cmd == "initramfs" and len(args) == 2:
        build_initramfs(*args)
    elif cmd == "expect" and len(args) >= 3:
        expect(args[0], args[1], args[2:])
    else:
        sys.exit(__doc__)
