#!/usr/bin/env bash
# Everything the project needs on a fresh machine: the Debian packages of the real data paths'
# peers and test clients, and a virtual environment with ioband and its test tools.
# Nothing is ever installed by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

# NBD clients and peers used by the tests, the demo and the benchmarks; FUSE (libfuse3 and the
# headers pyfuse3 builds against); programs the FUSE tests run through a mount; openssl, whose
# CLI makes the certificates of the NBD TLS tests; prometheus for promtool, which lints the
# metrics endpoint; tmux, the 80-column terminal of the top test; fuse-overlayfs, the C peer of
# the FUSE benchmark; redis-server, the coordination store of cluster device groups (tests start
# their own).
DEB_PACKAGES=(qemu-utils nbdkit libnbd-bin fio fuse3 libfuse3-dev pkg-config sqlite3 git tar openssl
    prometheus tmux fuse-overlayfs redis-server)
missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "install.sh: installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "install.sh: missing Debian packages (need root to install): ${missing[*]}" >&2
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev,plot]'
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi

# The scheduling core compiled with mypyc, in place (skipped when up to date; IOBAND_BUILD_PURE=1
# removes it). If it cannot be built, ioband runs the pure-Python modules, which stay the
# reference (scripts/build_core.py, src/ioband/_build.py).
"$VENV/bin/python" scripts/build_core.py
