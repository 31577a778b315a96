#!/usr/bin/env bash
# Debian packages for `make test` and `make stack`: nginx (the one-origin front of deploy/nginx/, which `make stack`
# and the browser test run), chromium and chromium-driver (the browser test's headless browser and its WebDriver).
# Idempotent and quiet: a no-op when their programs are there; otherwise apt-get installs the missing ones (as root,
# or through `sudo -n`), and prints apt's output only if that fails.
#
#   bash deploy/install-debian-packages.sh [PACKAGE...]   [default: nginx chromium chromium-driver]
#
# On a machine that runs systemd, Debian's nginx package also starts the distribution's default site on port 80; the
# stack and the tests run their own nginx processes on other ports and do not use it.
set -euo pipefail
PACKAGES=("$@")
[ ${#PACKAGES[@]} -gt 0 ] || PACKAGES=(nginx chromium chromium-driver)

present() {  # the package's program is installed (by whatever means)
    case $1 in
        nginx) command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] ;;
        chromium) command -v chromium >/dev/null ;;
        chromium-driver) command -v chromedriver >/dev/null ;;
        *) dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" ;;
    esac
}

missing=()
for package in "${PACKAGES[@]}"; do present "$package" || missing+=("$package"); done
[ ${#missing[@]} -gt 0 ] || exit 0

die() { echo "install-debian-packages: $*" >&2; exit 1; }
command -v apt-get >/dev/null || die "${missing[*]} missing and no apt-get here: install them with your package manager"
AS_ROOT=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "${missing[*]} missing: run as root, or install them (apt-get install ${missing[*]})"
    AS_ROOT=(sudo -n)
fi
echo "install-debian-packages: apt-get install ${missing[*]}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { "${AS_ROOT[@]}" apt-get update -qq \
        && "${AS_ROOT[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    die "apt-get install ${missing[*]} failed"
fi
for package in "${missing[@]}"; do present "$package" || die "$package is installed but its program is not on PATH"; done
