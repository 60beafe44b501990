# Shared by the scripts: sourced, not run.

# need_packages SCRIPT PKG...: installs the Debian packages missing (as root), or names
# them and how to install them (otherwise) and returns 1.
need_packages() {
    local script=$1
    shift
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "$script: missing Debian packages: ${missing[*]} (install them with: sudo apt-get install ${missing[*]})" >&2
        return 1
    fi
}
