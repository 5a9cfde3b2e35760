#!/bin/sh
# kvmtest's one entry point for people and CI: sets itself up on a fresh Debian machine, then
#   ./dev.sh run [ARGS]   the built-in conformance suite (kvmtest run; reference-only without KVM)
#   ./dev.sh test [ARGS]  the test suite (pytest)
#   ./dev.sh lint         ruff check + ruff format --check
#   ./dev.sh kvmtest ...  any kvmtest command inside the project's virtual environment
# Set-up: Debian packages it needs (installed with apt-get when root, otherwise it says which),
# a virtual environment in .venv (KVMTEST_VENV overrides), and an editable install of kvmtest.
set -eu
cd "$(dirname "$0")"
VENV=${KVMTEST_VENV:-.venv}
PYTHON=${PYTHON:-python3}

say() { printf 'dev.sh: %s\n' "$*" >&2; }

missing_debian_packages() {
    missing=""
    command -v "$PYTHON" >/dev/null 2>&1 || missing="$missing python3"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing="$missing python3-venv"
    "$PYTHON" -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' 2>/dev/null || missing="$missing python3-dev"
    command -v gcc >/dev/null 2>&1 || missing="$missing gcc libc6-dev"
    command -v as >/dev/null 2>&1 || missing="$missing binutils"
    [ -e /usr/include/linux/kvm.h ] || missing="$missing linux-libc-dev"
    echo "$missing"
}

setup_system() {
    missing=$(missing_debian_packages)
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian packages:$missing"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    else
        say "missing:$missing"
        say "install them (Debian: sudo apt-get install$missing) and run again"
        exit 2
    fi
}

# Tools only the test suite needs: sshd (the pytest plugin's xdist-over-ssh test), QEMU and
# strace (recording a real VMM, and the recorder's overhead against strace), and the kernel's
# own KTAP parser, tools/testing/kunit/kunit_parser.py, unpacked from Debian's
# linux-source tarball into the virtual environment (share/kvmtest-kunit). Without root the
# tests that need them skip (KVMTEST_REQUIRE_KVM=1, as in CI, makes that a failure).
setup_test_tools() {
    kunit="$VENV/share/kvmtest-kunit"
    need=""
    [ -x /usr/sbin/sshd ] || need="$need openssh-server"
    command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
    command -v strace >/dev/null 2>&1 || need="$need strace"
    [ -f "$kunit/tools/testing/kunit/kunit_parser.py" ] || need="$need kunit"
    [ -z "$need" ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        say "not installed:$need (as root: ./dev.sh test installs them); their tests skip"
        return 0
    fi
    packages=""
    case $need in *openssh-server*) packages="openssh-server" ;; esac
    case $need in *qemu-system-x86*) packages="$packages qemu-system-x86" ;; esac
    case $need in *strace*) packages="$packages strace" ;; esac
    tarball=$(ls /usr/src/linux-source-*.tar.* 2>/dev/null | sort -V | tail -n 1)
    case $need in *kunit*)
        if [ -z "$tarball" ]; then
            source=$(apt-cache search --names-only '^linux-source-[0-9.]+$' | cut -d' ' -f1 | sort -V | tail -n 1)
            if [ -z "$source" ]; then
                DEBIAN_FRONTEND=noninteractive apt-get update -qq
                source=$(apt-cache search --names-only '^linux-source-[0-9.]+$' | cut -d' ' -f1 | sort -V | tail -n 1)
            fi
            packages="$packages $source"
        fi ;;
    esac
    if [ -n "$packages" ]; then
        say "installing Debian packages for the tests:$packages"
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null \
            || { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
                 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $packages >/dev/null; }
    fi
    tarball=$(ls /usr/src/linux-source-*.tar.* 2>/dev/null | sort -V | tail -n 1)
    if [ ! -f "$kunit/tools/testing/kunit/kunit_parser.py" ] && [ -n "$tarball" ]; then
        say "unpacking tools/testing/kunit from $tarball"
        top=$(basename "$tarball" | sed 's/\.tar\..*//')
        mkdir -p "$kunit"
        tar -xf "$tarball" -C "$kunit" --strip-components=1 --wildcards "$top/tools/testing/kunit/*.py"
    fi
}

setup_venv() {
    stamp="$VENV/.kvmtest-installed"
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating virtual environment $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
        || [ kvmtest/kvm/_build.py -nt "$stamp" ]; then
        say "installing kvmtest and its test tools into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$VENV/bin/python" -m pip install -q -e '.[test]'
        touch "$stamp"
    fi
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
run)
    setup_system; setup_venv
    if "$VENV/bin/kvmtest" run --help >/dev/null 2>&1; then
        exec "$VENV/bin/kvmtest" run "$@"
    fi
    exec "$VENV/bin/kvmtest" doctor "$@"
    ;;
test)
    setup_system; setup_venv; setup_test_tools
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
lint)
    setup_system; setup_venv
    "$VENV/bin/ruff" check . && exec "$VENV/bin/ruff" format --check .
    ;;
kvmtest)
    setup_system; setup_venv; setup_test_tools
    exec "$VENV/bin/kvmtest" "$@"
    ;;
*)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
