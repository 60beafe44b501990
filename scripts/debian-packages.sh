# Shared by the scripts that take files from Debian's packages without installing
# them: `unpack PKG` downloads PKG's .deb into $work/debs (once, running apt-get update
# if the download fails) and unpacks it into $work/PKG, printing that directory;
# `need_tool CMD PKG` installs PKG when CMD is missing (as root; otherwise it says what
# to install and stops). The caller sets $work and defines say().

need_tool() { # command package
    command -v "$1" >/dev/null && return
    if [[ $(id -u) -ne 0 ]]; then
        say "missing $1: install the Debian package $2"
        exit 1
    fi
    say "installing $2 (for $1)"
    apt-get install -y --no-install-recommends "$2" >&2 || { apt-get update >&2 && apt-get install -y --no-install-recommends "$2" >&2; }
}

updated=0
apt_update() {
    [[ $updated -eq 1 ]] && return
    say "running apt-get update"
    apt-get update >&2
    updated=1
}

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
