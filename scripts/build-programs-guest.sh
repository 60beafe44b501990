#!/usr/bin/env bash
# Builds build/guest/initramfs-programs.cpio.gz: real Debian programs in the guest, for
# benches/programs.rs (quern's JIT against QEMU's TCG) and tests/debian_programs.rs.
# Run by scripts/build-test-guest.sh (at the end); it can also be run alone.
#
# Contents: busybox-static (the shell and the tools) and Debian's dynamically linked
# xz (xz-utils), bzip2, zstd, gzip, openssl, sqlite3, perl (perl-base) and python3
# (python3.X-minimal with libpython3.X-minimal's standard library, plus the json
# package from libpython3.X-stdlib), each with the shared libraries it needs: the
# packages are those the programs' packages depend on, recursively (lib* packages
# only), and programs-helper.py closure copies the program interpreter and every
# DT_NEEDED library of every ELF file in the tree from them (failing loudly on a
# missing one). No documentation, manual pages or locales.
#
# The guest's /init (busybox sh):
#   reads quern.parallel=N from /proc/cmdline (the SMP benchmark: N copies of gzip, bzip2,
#   xz, perl and python3 at once, then power-off);
#   reads quern.quick=1 from /proc/cmdline (small inputs, for the test) or runs the full
#   sizes (each workload about 1-3 s under QEMU's TCG on the project's machines);
#   makes its input text with a seeded generator (bench/gen.awk; about 60 bytes a
#   line, no /dev/urandom; the text is four blocks, the first as generated and the
#   others with their letters rotated by `tr`) and checks it against the SHA-256
#   computed on the host;
#   then for each workload prints
#       QUERN-BENCH <name> <start> <end>     /proc/uptime seconds around the work
#       QUERN-CHECK <name> ok                or  QUERN-CHECK <name> FAIL <why>
#   in this order: data (the generator, checked only), sha256sum and md5sum (busybox,
#   repeated over the data), gzip, bzip2, xz, zstd (compress and decompress, compared
#   with the input), openssl-sha256 (openssl dgst, repeated), openssl-aes (enc and dec
#   with aes-128-cbc, fixed key and IV, compared with the input, and the FIPS-197
#   known answer of one block), sqlite3 (a table of many rows inserted in one
#   transaction, an index, aggregate queries), perl (regexes and a hash over the text),
#   python3 (dicts and strings in pure Python over the text, json, hashlib and zlib),
#   awk (busybox seq | awk with floating-point arithmetic and formatting; the MD5 of
#   its output); then
#   QUERN-INIT-OK and poweroff -f.
# The expected results are computed on the host at build time (programs-helper.py
# expect) and baked in as bench/full.env and bench/quick.env, with the sizes.
#
# Packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x`
# (scripts/debian-packages.sh): nothing is installed into the host. Cached: built only
# if the output is missing or programs.version differs from $outputs_version below
# (bump it whenever the output changes). The output is the same on every build with
# the same packages.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$root/build/guest"
work="$out/.work"
scratch="$work/programs"
helper="$root/scripts/programs-helper.py"
output="$out/initramfs-programs.cpio.gz"
outputs_version=2

# Workload sizes: lines of the generated text (a prefix of it; about 60 bytes a line;
# the text is 4 blocks of block_lines), repetitions over the whole text, or numbers.
#   name          full   quick
sizes="
block_lines      17500    750
sha256_reps         16      1
md5_reps            30      1
gzip_lines       70000   1000
bzip2_lines      40000   1000
xz_lines         10000    500
zstd_lines       10000    500
dgst_reps           10      1
aes_reps             4      1
sqlite_rows      25000   1000
perl_lines       20000   1000
python_lines     20000    500
awk_n            25000   1000
"

say() { echo "build-programs-guest: $*" >&2; }

current() { [[ "$(cat "$out/programs.version" 2>/dev/null)" == "$outputs_version" ]]; }

if [[ -s "$output" ]] && current; then
    echo "$output"
    exit 0
fi

# need_tool, apt_update and unpack.
# shellcheck source=scripts/debian-packages.sh
source "$root/scripts/debian-packages.sh"
need_tool python3 python3
need_tool dpkg-deb dpkg
need_tool apt-get apt

# The python3.X-minimal package that python3-minimal pre-depends on.
python_package() {
    local pkg
    pkg=$(apt-cache depends python3-minimal 2>/dev/null | awk '/Depends: python3\.[0-9]+-minimal/ {print $2; exit}')
    if [[ -z "$pkg" ]]; then
        apt_update
        pkg=$(apt-cache depends python3-minimal | awk '/Depends: python3\.[0-9]+-minimal/ {print $2; exit}')
    fi
    [[ -n "$pkg" ]] || { say "cannot resolve the python3.X-minimal package of python3-minimal"; exit 1; }
    echo "$pkg"
}

# The packages a .deb depends on (Pre-Depends and Depends; the first of alternatives).
deb_depends() {
    dpkg-deb -f "$1" Pre-Depends Depends | sed 's/^[A-Za-z-]*://' | tr ',' '\n' |
        sed 's/|.*//; s/(.*//; s/:any//; s/[[:space:]]//g' | grep -v '^$' || true
}

# Whether PKG is a library package: named lib*, or in the section libs (zlib1g).
is_library() {
    [[ $1 == lib* ]] || apt-cache show --no-all-versions "$1" 2>/dev/null | grep -x 'Section: libs' >/dev/null
}

# want PKG: unpacks PKG and, recursively, the library packages it depends on; their
# directories are added to $trees.
declare -A wanted=()
trees=()
unpacked_here=()
want() {
    local pkg=$1 dep deb dir
    [[ -n "${wanted[$pkg]:-}" ]] && return
    wanted[$pkg]=1
    dir=$(unpack "$pkg")
    trees+=("$dir")
    deb=$(ls "$work/debs/${pkg}"_*.deb | head -n1)
    for dep in $(deb_depends "$deb"); do
        if is_library "$dep"; then want "$dep"; fi
    done
}

mkdir -p "$work" "$scratch"

python_minimal=$(python_package) # python3.11-minimal
python=${python_minimal%-minimal} # python3.11
say "python: $python_minimal"

# Package, then the program files it contributes (paths inside the package).
programs=(
    "xz-utils usr/bin/xz"
    "bzip2 bin/bzip2"
    "zstd usr/bin/zstd"
    "gzip bin/gzip"
    "openssl usr/bin/openssl"
    "sqlite3 usr/bin/sqlite3"
    "perl-base usr/bin/perl"
    "$python_minimal usr/bin/$python"
)
for p in "${programs[@]}"; do
    want "${p%% *}"
done
[[ -d "$work/busybox-static" ]] || unpacked_here+=("$work/busybox-static")
bdir=$(unpack busybox-static)
stdlib_dir=$(unpack "lib$python-stdlib") # for json only; its own dependencies are not needed

tree="$scratch/rootfs"
rm -rf "$tree"
mkdir -p "$tree"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,etc,root,bench}

# busybox and its applets, except those a Debian program replaces.
cp "$bdir/bin/busybox" "$tree/bin/busybox"
declare -A debian_names=()
for p in "${programs[@]}"; do
    debian_names[$(basename "${p#* }")]=1
done
while read -r applet; do
    applet=${applet#/}
    case "$applet" in bin/* | sbin/* | usr/*) ;; *) continue ;; esac
    [[ "$applet" == bin/busybox || -n "${debian_names[$(basename "$applet")]:-}" ]] && continue
    ln -s /bin/busybox "$tree/$applet"
done < <("$bdir/bin/busybox" --list-full)

# The programs, then what they need at run time besides libraries.
for p in "${programs[@]}"; do
    pkg=${p%% *} path=${p#* }
    [[ -f "$work/$pkg/$path" ]] || { say "$pkg has no $path"; exit 1; }
    cp --preserve=mode "$work/$pkg/$path" "$tree/$path"
done
ln -s "$python" "$tree/usr/bin/python3"
# Python's standard library as python3.X-minimal has it, but the TLS module, plus json.
mkdir -p "$tree/usr/lib"
cp -r --preserve=mode "$work/lib$python-minimal/usr/lib/$python" "$tree/usr/lib/"
rm -f "$tree/usr/lib/$python"/lib-dynload/_ssl.*
cp -r --preserve=mode "$stdlib_dir/usr/lib/$python/json" "$tree/usr/lib/$python/"
cp --preserve=mode "$stdlib_dir/usr/lib/$python"/lib-dynload/_json.* "$tree/usr/lib/$python/lib-dynload/"
find "$tree/usr/lib/$python" -name __pycache__ -prune -exec rm -rf {} +
cp -r --preserve=mode "$work/lib$python-minimal/etc/$python" "$tree/etc/" # sitecustomize.py's target
# perl-base's modules (strict, warnings, ...).
mkdir -p "$tree/usr/lib/x86_64-linux-gnu"
cp -r --preserve=mode "$work/perl-base/usr/lib/x86_64-linux-gnu/perl-base" "$tree/usr/lib/x86_64-linux-gnu/"
# openssl reads its configuration file at start-up.
mkdir -p "$tree/etc/ssl" "$tree/usr/lib/ssl"
cp "$work/openssl/etc/ssl/openssl.cnf" "$tree/etc/ssl/openssl.cnf"
ln -s /etc/ssl/openssl.cnf "$tree/usr/lib/ssl/openssl.cnf"

libraries=$(python3 "$helper" closure "$tree" "${trees[@]}")
say "libraries: $libraries"

# The workloads.
cat >"$tree/bench/gen.awk" <<'EOF'
# Deterministic text: -v lines=N lines of words made of syllables (a vocabulary of 1024,
# the first words the most frequent) and now and then a number, each line ending in a
# full stop. MINSTD: x = x * 48271 mod (2^31 - 1); the products stay below 2^53, so
# awk's doubles hold them exactly (programs-helper.py gen_lines makes the same text).
# Only + - * / % and no int(): every workload depends on this text, so it uses the
# fewest of awk's conversions (the awk workload exercises int()).
BEGIN {
    x = 20261202
    ns = split("ka lo mi ne ru sa te vo bi da fe gu ha ji ko lu ma no pe qui ra si tu ve wa xe yo ze an el in or un st", syl, " ")
    for (i = 0; i < 1024; i++) {
        x = (x * 48271) % 2147483647
        n = 1 + x % 4
        w = ""
        for (j = 0; j < n; j++) {
            x = (x * 48271) % 2147483647
            w = w syl[1 + x % ns]
        }
        word[i] = w
    }
    for (l = 0; l < lines; l++) {
        x = (x * 48271) % 2147483647
        nw = 4 + x % 12
        s = ""
        for (j = 0; j < nw; j++) {
            x = (x * 48271) % 2147483647
            k = x % 4096
            k = (k * k - (k * k) % 16384) / 16384
            if (j) s = s " "
            if (x % 61 == 0) s = s (x % 100000)
            else s = s word[k]
        }
        print s "."
    }
}
EOF
cat >"$tree/bench/sql.awk" <<'EOF'
# The SQL of the sqlite3 workload, from lines of text: one row per line.
BEGIN {
    print "BEGIN;"
    print "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER, v INTEGER, w TEXT, line TEXT);"
}
{ printf "INSERT INTO t(k, v, w, line) VALUES(%d, %d, '%s', '%s');\n", NR % 997, (NR * 7919) % 100003 + length($0), $1, $0 }
END {
    print "COMMIT;"
    print "CREATE INDEX t_k ON t(k);"
    print "SELECT count(*), sum(v), sum(length(line)), min(w), max(w) FROM t;"
    print "SELECT sum(v) FROM t WHERE k BETWEEN 100 AND 199;"
    print "SELECT w, count(*) AS c FROM t GROUP BY w ORDER BY c DESC, w LIMIT 3;"
    print "SELECT k, count(*), sum(v) FROM t GROUP BY k ORDER BY sum(v) DESC, k LIMIT 3;"
    print "SELECT count(*) FROM t WHERE line LIKE '%kaka%';"
}
EOF
cat >"$tree/bench/work.pl" <<'EOF'
# Word frequencies, numbers, repeated words and a substitution over the text on stdin.
use strict;
use warnings;
my (%count, $lines, $tokens, $numsum, $repeats, $subs, $length);
$lines = $tokens = $numsum = $repeats = $subs = $length = 0;
while (my $line = <STDIN>) {
    $lines++;
    for my $t ($line =~ /[a-z]+|\d+/g) {
        $tokens++;
        if ($t =~ /^\d/) { $numsum += $t } else { $count{$t}++ }
    }
    $repeats += () = $line =~ /\b(\w+) \1\b/g;
    (my $u = $line);
    $subs += $u =~ s/([bcdfghjklmnpqrstvwxz])([aeiou])\1\2/<$1$2>/g;
    $length += length $u;
}
my @top = (sort { $count{$b} <=> $count{$a} || $a cmp $b } keys %count)[0 .. 9];
printf "lines=%d tokens=%d distinct=%d numsum=%d repeats=%d subs=%d length=%d top=%s\n",
    $lines, $tokens, scalar(keys %count), $numsum, $repeats, $subs, $length,
    join(",", map { "$_:$count{$_}" } @top);
EOF
cat >"$tree/bench/work.py" <<'EOF'
"""Word and bigram counts, a string hash and json, hashlib and zlib over a text file:
pure Python loops over dicts and strings. Also run on the host at build time (any
Python 3.6+), which gives the expected output."""
import hashlib
import json
import sys
import zlib


def main(path):
    with open(path, "rb") as f:
        data = f.read()
    counts, bigrams, longest, acc = {}, {}, "", 0
    for line in data.decode("ascii").splitlines():
        words = line.rstrip(".").split()
        for i, w in enumerate(words):
            counts[w] = counts.get(w, 0) + 1
            if i:
                b = words[i - 1] + " " + w
                bigrams[b] = bigrams.get(b, 0) + 1
            if len(w) > len(longest) or (len(w) == len(longest) and w < longest):
                longest = w
            for ch in w:
                acc = (acc * 131 + ord(ch)) % 1000000007
    total = sum(counts.values())
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
    doc = {
        "words": total,
        "distinct": len(counts),
        "bigrams": len(bigrams),
        "top": [[w, c] for w, c in top],
        "counts": counts,
        "frequent_bigrams": [[b, c] for b, c in bigrams.items() if c > 2],
        "mean": total / len(counts),
        "longest": longest,
        "acc": acc,
    }
    text = json.dumps(doc, sort_keys=True)
    if json.loads(text) != doc:
        sys.exit("json round trip differs")
    blob = text.encode()
    if zlib.decompress(zlib.compress(blob, 6)) != blob:
        sys.exit("zlib round trip differs")
    print(
        "words=%d distinct=%d bigrams=%d acc=%d longest=%s mean=%r json=%d sha256=%s crc32=%08x"
        % (total, len(counts), len(bigrams), acc, longest, doc["mean"], len(blob),
           hashlib.sha256(blob).hexdigest()[:16], zlib.crc32(blob))
    )


main(sys.argv[1])
EOF
cat >"$tree/bench/floats.awk" <<'EOF'
# Floating-point arithmetic and formatting over the numbers of `seq` (Debian's busybox
# awk has no sqrt: Newton's method; programs-helper.py awk_expect does the same).
{
    n = $1
    r = n / 2 + 0.5
    for (i = 0; i < 4; i++) r = (r + n / r) / 2
    s += r
    h += 1 / n
    x = n / 7
    printf "%.5f %.3e %d %d %.10g\n", x, s, x * 3, int(r * 1000), h
}
END { printf "sum %.6f %.12f\n", s, h }
EOF

# The expected results, with the sizes.
for mode in full quick; do
    col=2
    [[ $mode == quick ]] && col=3
    assignments=$(awk -v c=$col 'NF == 3 {printf "%s=%s ", $1, $c}' <<<"$sizes")
    summary=$(python3 "$helper" expect "$tree/bench/work.py" "$tree/bench/$mode.env" $assignments)
    say "$mode: $summary"
done

cat >"$tree/init" <<'EOF'
#!/bin/sh
export PATH=/usr/bin:/bin:/usr/sbin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
dmesg -n 1
mode=full
grep -qw quern.quick=1 /proc/cmdline && mode=quick
. /bench/$mode.env
echo "QUERN-PROGRAMS mode=$mode data=$data_bytes bytes"
# Debian's programs by path: busybox sh runs its own applets (gzip, bzip2, xz) before
# it looks at PATH.
GZIP=/bin/gzip BZIP2=/bin/bzip2 XZ=/usr/bin/xz ZSTD=/usr/bin/zstd OPENSSL=/usr/bin/openssl
SQLITE3=/usr/bin/sqlite3 PERL=/usr/bin/perl PYTHON3=/usr/bin/python3
cd /tmp
stamp() { cut -d' ' -f1 /proc/uptime; }
# run NAME COMMAND...: COMMAND timed, its stdout in NAME.out and stderr in NAME.err.
run() {
    name=$1
    shift
    a=$(stamp)
    "$@" >"$name.out" 2>"$name.err"
    rc=$?
    b=$(stamp)
    echo "QUERN-BENCH $name $a $b"
    return $rc
}
ok() { echo "QUERN-CHECK $1 ok"; }
# fail NAME WHY: with the end of the workload's error output.
fail() {
    err=$(tail -c 300 "$1.err" 2>/dev/null | tr '\n' ' ')
    echo "QUERN-CHECK $1 FAIL $2${err:+ (stderr: $err)}"
}
# expect NAME RC ACTUAL EXPECTED
expect() {
    if [ "$2" -ne 0 ]; then
        fail "$1" "exit status $2"
    elif [ "$3" = "$4" ]; then
        ok "$1"
    else
        fail "$1" "got '$3', expected '$4'"
    fi
}
# roundtrip NAME RC: in was compressed to in.c and decompressed to back.
roundtrip() {
    if [ "$2" -ne 0 ]; then
        fail "$1" "exit status $2"
    elif ! cmp -s in back; then
        fail "$1" "the round trip differs from the input ($(wc -c <in) bytes in, $(wc -c <back) back)"
    elif [ "$(wc -c <in.c)" -ge "$(wc -c <in)" ]; then
        fail "$1" "no compression: $(wc -c <in) bytes to $(wc -c <in.c)"
    else
        ok "$1"
    fi
}
# repeat N COMMAND...: COMMAND N times, all outputs on stdout.
repeat() {
    n=$1
    shift
    while [ "$n" -gt 0 ]; do
        "$@" || return
        n=$((n - 1))
    done
}
# same_lines FILE EXPECTED N: FILE has N lines, all EXPECTED.
same_lines() {
    [ "$(wc -l <"$1")" -eq "$3" ] && [ "$(sort -u "$1")" = "$2" ]
}
prepare() { head -n "$1" data >in; }

gen() {
    awk -v lines="$block_lines" -f /bench/gen.awk >block &&
        cat block && tr a-z n-za-m <block && tr a-z h-za-g <block && tr a-z u-za-t <block
}
run data gen
rc=$?
mv data.out data
sum=$(sha256sum data)
expect data $rc "${sum%% *}" "$data_sha256"

gzip_work() { $GZIP -6 -c in >in.c && $GZIP -d -c in.c >back; }
bzip2_work() { $BZIP2 -9 -c in >in.c && $BZIP2 -d -c in.c >back; }
xz_work() { $XZ -6 -c in >in.c && $XZ -d -c in.c >back; }
perl_work() { $PERL /bench/work.pl <in; }
python_work() { $PYTHON3 /bench/work.py in; }

# quern.parallel=N (the SMP benchmark): N copies of each CPU-bound workload at once,
# each in a directory of its own, timed as a batch (QUERN-BENCH par-NAME); then off.
par=$(sed -n 's/.*quern\.parallel=\([0-9][0-9]*\).*/\1/p' /proc/cmdline)
if [ -n "$par" ]; then
    echo "QUERN-PARALLEL copies=$par"
    # pbatch NAME LINES WORK CHECK: CHECK NAME, run in each copy's directory, says
    # whether that copy's result is right.
    pbatch() {
        name=$1 lines=$2 work=$3 check=$4
        k=1
        while [ $k -le "$par" ]; do
            mkdir -p /tmp/p$k && head -n "$lines" data >/tmp/p$k/in
            k=$((k + 1))
        done
        a=$(stamp)
        k=1
        while [ $k -le "$par" ]; do
            (cd /tmp/p$k && $work >$name.out 2>$name.err; echo $? >$name.rc) &
            k=$((k + 1))
        done
        wait
        b=$(stamp)
        echo "QUERN-BENCH par-$name $a $b"
        k=1
        bad=
        while [ $k -le "$par" ]; do
            (cd /tmp/p$k && [ "$(cat $name.rc)" = 0 ] && $check $name) || bad="$bad $k"
            k=$((k + 1))
        done
        if [ -z "$bad" ]; then echo "QUERN-CHECK par-$name ok"; else echo "QUERN-CHECK par-$name FAIL copies$bad"; fi
    }
    same_back() { cmp -s in back; }
    perl_right() { [ "$(cat $1.out)" = "$perl_expect" ]; }
    python_right() { [ "$(cat $1.out)" = "$python_expect" ]; }
    $PYTHON3 -c 'import hashlib, json, zlib' >/dev/null 2>&1
    pbatch gzip "$gzip_lines" gzip_work same_back
    pbatch bzip2 "$bzip2_lines" bzip2_work same_back
    pbatch xz "$xz_lines" xz_work same_back
    pbatch perl "$perl_lines" perl_work perl_right
    pbatch python3 "$python_lines" python_work python_right
    echo QUERN-INIT-OK
    poweroff -f
fi

run sha256sum repeat "$sha256_reps" sha256sum data
rc=$?
if [ $rc -eq 0 ] && same_lines sha256sum.out "$data_sha256  data" "$sha256_reps"; then ok sha256sum; else fail sha256sum "exit status $rc, output $(sort -u sha256sum.out | tr '\n' ' ')"; fi

run md5sum repeat "$md5_reps" md5sum data
rc=$?
if [ $rc -eq 0 ] && same_lines md5sum.out "$data_md5  data" "$md5_reps"; then ok md5sum; else fail md5sum "exit status $rc, output $(sort -u md5sum.out | tr '\n' ' ')"; fi

prepare "$gzip_lines"
run gzip gzip_work
roundtrip gzip $?

prepare "$bzip2_lines"
run bzip2 bzip2_work
roundtrip bzip2 $?

prepare "$xz_lines"
run xz xz_work
roundtrip xz $?

zstd_work() { $ZSTD -q -19 -c in >in.c && $ZSTD -q -d -c in.c >back; }
prepare "$zstd_lines"
run zstd zstd_work
roundtrip zstd $?

run openssl-sha256 repeat "$dgst_reps" $OPENSSL dgst -sha256 -r data
rc=$?
if [ $rc -eq 0 ] && same_lines openssl-sha256.out "$data_sha256 *data" "$dgst_reps"; then ok openssl-sha256; else fail openssl-sha256 "exit status $rc, output $(sort -u openssl-sha256.out | tr '\n' ' ')"; fi

key=000102030405060708090a0b0c0d0e0f
iv=f0e0d0c0b0a090807060504030201000
aes_work() {
    $OPENSSL enc -aes-128-cbc -nosalt -K $key -iv $iv -in in -out in.c &&
        $OPENSSL enc -d -aes-128-cbc -nosalt -K $key -iv $iv -in in.c -out back
}
cp data in
run openssl-aes repeat "$aes_reps" aes_work
rc=$?
# FIPS-197 appendix C.1: AES-128 of 00112233...eeff under the key 000102...0f.
kat=$(printf '\000\021\042\063\104\125\146\167\210\231\252\273\314\335\356\377' |
    $OPENSSL enc -aes-128-ecb -nopad -K $key 2>>openssl-aes.err | od -An -tx1 | tr -d ' \n')
padded=$(( ($(wc -c <in) / 16 + 1) * 16 ))
if [ $rc -ne 0 ]; then
    fail openssl-aes "exit status $rc"
elif [ "$kat" != 69c4e0d86a7b0430d8cdb78070b4c55a ]; then
    fail openssl-aes "known answer: got '$kat', expected 69c4e0d86a7b0430d8cdb78070b4c55a"
elif ! cmp -s in back || [ "$(wc -c <in.c)" -ne $padded ] || cmp -s in in.c; then
    fail openssl-aes "round trip: $(wc -c <in) bytes, $(wc -c <in.c) encrypted, $(wc -c <back) back"
else
    ok openssl-aes
fi

prepare "$sqlite_rows"
awk -f /bench/sql.awk in >work.sql
run sqlite3 $SQLITE3 db.sqlite3 <work.sql
rc=$?
expect sqlite3 $rc "$(tr '\n' ' ' <sqlite3.out | sed 's/ $//')" "$sqlite_expect"

prepare "$perl_lines"
run perl perl_work
expect perl $? "$(cat perl.out)" "$perl_expect"

prepare "$python_lines"
# Once untimed: Python compiles the modules it imports into __pycache__ the first time.
$PYTHON3 -c 'import hashlib, json, zlib' >python.out 2>python.err || fail python3 "import hashlib, json, zlib"
run python3 python_work
expect python3 $? "$(cat python3.out)" "$python_expect"

awk_work() { seq 1 "$awk_n" | awk -f /bench/floats.awk; }
run awk awk_work
rc=$?
sum=$(md5sum <awk.out)
expect awk $rc "${sum%% *}" "$awk_expect"

echo QUERN-INIT-OK
poweroff -f
EOF
chmod 755 "$tree/init"

say "writing initramfs-programs.cpio.gz"
python3 "$helper" initramfs "$tree" "$output.tmp"
mv "$output.tmp" "$output"
echo "$outputs_version" >"$out/programs.version"
say "$(du -h "$output" | cut -f1) compressed, $(du -sh "$tree" | cut -f1) unpacked"
rm -rf "$tree" "${trees[@]}" "$stdlib_dir" "${unpacked_here[@]}"
echo "$output"
