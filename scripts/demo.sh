#!/usr/bin/env bash
# The demo: Switchyard's active-passive pattern (config/active-passive.yaml)
# in front of two Apache Kafka sites on this machine.
#
#   dc1  primary  Apache Kafka, one KRaft node, 127.0.0.1:19092
#   dc2  standby  Apache Kafka, one KRaft node, 127.0.0.1:19093
#   Switchyard    bootstrap 127.0.0.1:9092 (virtual brokers 9093-9095),
#                 admin HTTP 127.0.0.1:9644
#
# Every record produced through Switchyard goes to dc1 and is copied to dc2
# before the producer's ack (sync tee); when dc1 fails its health checks the
# route fails over to dc2 by itself; failback is one admin call. Once ready
# it prints how to produce, consume, watch the tee lag and drill a failover.
#
# One command on a fresh machine: installs what it needs (scripts/setup.sh:
# .venv, kcat, Apache Kafka jars from Maven Central), builds Switchyard
# (release), starts both sites and Switchyard, then runs until Ctrl-C, which
# stops all of them. Storage and logs live in a temporary directory that is
# removed at exit. Fails at once, naming the port, if one of its fixed ports
# is taken. `kill -USR1 <this script's pid>` restarts a site that died (the
# failover drill kills dc1).
#
# Each site is a single Kafka node (replication factor 1): enough to show
# Switchyard's failover between sites, not a model of a production cluster.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

case "${1:-}" in
    '') ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0;;
    *) echo "demo.sh: unknown argument '$1' (no options; see --help)" >&2; exit 2;;
esac

CONFIG=config/active-passive.yaml
PYTHON="${PYTHON:-python3}"
SITE_START_TIMEOUT=240    # s, per site start (first JVM start on 2 busy cores included)
SY_READY_TIMEOUT=60       # s, Switchyard until /readyz answers 200
STOP_TIMEOUT=45           # s, each process at Ctrl-C before SIGKILL
declare -A SITE_PORT=([dc1]=19092 [dc2]=19093)
# Replication and KRaft quorum listeners (port, port+1), fixed so that no
# site can take a port the other one is about to bind.
declare -A SITE_INTERNAL_PORT=([dc1]=19192 [dc2]=19292)
declare -A WRAPPER=() JVM=() DOWN_REPORTED=()
SY_PID="" TAIL_PID="" DATA=""

log() { printf '==> %s\n' "$*"; }
die() { printf 'demo.sh: error: %s\n' "$*" >&2; exit 1; }

# Every port the demo binds, with what it is for; all on 127.0.0.1.
PORTS=(19092 19093 19192 19193 19292 19293 9092 9093 9094 9095 9644)
declare -A PORT_ROLE=([19092]="Kafka site dc1, the primary" [19093]="Kafka site dc2, the standby"
    [19192]="dc1 replication listener" [19193]="dc1 KRaft controller" [19292]="dc2 replication listener"
    [19293]="dc2 KRaft controller"
    [9092]="Switchyard bootstrap" [9093]="Switchyard virtual broker 0" [9094]="Switchyard virtual broker 1"
    [9095]="Switchyard virtual broker 2" [9644]="Switchyard admin HTTP")
check_ports() {
    local taken p msg=""
    taken="$("$PYTHON" - "${PORTS[@]}" <<'PY'
import socket, sys
for p in map(int, sys.argv[1:]):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        print(p)
    finally:
        s.close()
PY
)" || die "$PYTHON could not check the ports"
    [ -z "$taken" ] && return 0
    for p in $taken; do
        msg+=$'\n'"  port $p (${PORT_ROLE[$p]}) is taken; see: ss -ltnp 'sport = :$p'"
    done
    die "the demo needs fixed ports on 127.0.0.1 that are in use:$msg
stop whatever holds them (another demo?) and run it again"
}

# --- processes ------------------------------------------------------------------
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

wait_gone() { # pid, seconds; SIGKILL after the deadline
    local pid="$1" deadline=$((SECONDS + $2))
    while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
    if alive "$pid"; then
        echo "demo.sh: pid $pid still running after ${2}s, SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
}

is_kafka_jvm() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka'; }

cleanup() {
    local code=$?
    trap - EXIT INT TERM USR1
    [ -n "$DATA" ] || exit "$code"
    echo
    log "stopping Switchyard, dc1 and dc2"
    alive "$TAIL_PID" && kill "$TAIL_PID" 2>/dev/null || true
    alive "$SY_PID" && kill -TERM "$SY_PID" 2>/dev/null || true
    local s
    for s in "${!WRAPPER[@]}"; do
        alive "${WRAPPER[$s]}" && kill -TERM "${WRAPPER[$s]}" 2>/dev/null || true
    done
    wait_gone "$SY_PID" "$STOP_TIMEOUT"
    for s in "${!WRAPPER[@]}"; do wait_gone "${WRAPPER[$s]}" "$STOP_TIMEOUT"; done
    # The harness stops its node before it exits; a node it left behind
    # (harness killed hard) goes here.
    for s in "${!JVM[@]}"; do
        if alive "${JVM[$s]}" && is_kafka_jvm "${JVM[$s]}"; then
            echo "demo.sh: $s's Kafka (pid ${JVM[$s]}) outlived its harness, SIGKILL" >&2
            kill -KILL "${JVM[$s]}" 2>/dev/null || true
        fi
    done
    rm -rf "$DATA"
    log "stopped; removed $DATA"
    exit "$code"
}

start_site() { # name: starts tests/kafka_cluster.py for it (storage kept across restarts)
    local s="$1"
    "$PYTHON" tests/kafka_cluster.py --nodes 1 --dir "$DATA/$s" --port "${SITE_PORT[$s]}" \
        --internal-port "${SITE_INTERNAL_PORT[$s]}" \
        >"$DATA/$s.out" 2>&1 &
    WRAPPER[$s]=$!
    JVM[$s]=""
    DOWN_REPORTED[$s]=""
}

wait_site() { # name: until the harness printed "ready"; records the JVM's pid
    local s="$1" deadline=$((SECONDS + SITE_START_TIMEOUT)) pid
    until grep -q '^ready ' "$DATA/$s.out" 2>/dev/null; do
        if ! alive "${WRAPPER[$s]}"; then
            cat "$DATA/$s.out" >&2
            die "$s (Apache Kafka on 127.0.0.1:${SITE_PORT[$s]}) did not start; its harness output is above"
        fi
        [ "$SECONDS" -lt "$deadline" ] || die "$s (Apache Kafka on 127.0.0.1:${SITE_PORT[$s]}) not ready within ${SITE_START_TIMEOUT}s; last lines of its log:
$(tail -n 30 "$DATA/$s/node-1/kafka.log" 2>/dev/null)"
        sleep 0.5
    done
    for pid in $(pgrep -P "${WRAPPER[$s]}" 2>/dev/null); do
        is_kafka_jvm "$pid" && JVM[$s]=$pid
    done
    [ -n "${JVM[$s]}" ] || die "$s is ready but its Kafka process was not found among the children of pid ${WRAPPER[$s]}"
}

# --- install, build ---------------------------------------------------------------
T0=$SECONDS
check_ports
scripts/setup.sh
log "building Switchyard (cargo build --release -p switchyard)"
cargo build --release -p switchyard
SY_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/switchyard"
"$SY_BIN" check --config "$CONFIG" >/dev/null || die "switchyard check --config $CONFIG failed"
T_BUILT=$SECONDS

# --- start ----------------------------------------------------------------------
check_ports
DATA="$(mktemp -d "${TMPDIR:-/tmp}/switchyard-demo.XXXXXX")"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
RESTART=""
trap 'RESTART=1' USR1

log "starting Apache Kafka sites dc1 (127.0.0.1:19092) and dc2 (127.0.0.1:19093), one node each (storage: $DATA)"
start_site dc1
start_site dc2
wait_site dc1
wait_site dc2
T_SITES=$SECONDS

log "starting Switchyard on 127.0.0.1:9092 ($CONFIG), admin on 127.0.0.1:9644"
"$SY_BIN" run --config "$CONFIG" >"$DATA/switchyard.log" 2>&1 &
SY_PID=$!
deadline=$((SECONDS + SY_READY_TIMEOUT))
until curl -sf -o /dev/null --max-time 2 127.0.0.1:9644/readyz; do
    if ! alive "$SY_PID"; then
        tail -n 40 "$DATA/switchyard.log" >&2
        die "Switchyard exited during start-up; its log is above"
    fi
    [ "$SECONDS" -lt "$deadline" ] || die "Switchyard not ready (GET 127.0.0.1:9644/readyz) within ${SY_READY_TIMEOUT}s; last lines of its log:
$(tail -n 30 "$DATA/switchyard.log")"
    sleep 0.2
done
T_READY=$SECONDS

cat <<GUIDE

Switchyard is ready (setup and build $((T_BUILT - T0)) s, sites $((T_SITES - T_BUILT)) s, Switchyard $((T_READY - T_SITES)) s).

  clients ----> Switchyard 127.0.0.1:9092 --> dc1 127.0.0.1:19092  primary  (Kafka pid ${JVM[dc1]})
                admin 127.0.0.1:9644            | sync tee: every ack waits for the copy
                                                v
                                            dc2 127.0.0.1:19093  standby  (Kafka pid ${JVM[dc2]})

In another terminal, from $ROOT:

Produce and consume through Switchyard (kcat, or Kafka's console tools):
  kcat -b 127.0.0.1:9092 -L                       # 3 brokers, all Switchyard's
  seq 1 5 | kcat -b 127.0.0.1:9092 -P -t demo
  kcat -b 127.0.0.1:9092 -C -t demo -e
  kcat -b 127.0.0.1:9092 -G demo-group -X auto.offset.reset=earliest -e demo    # in a group
  java -cp '.tools/kafka/libs/*' org.apache.kafka.tools.ConsoleProducer --bootstrap-server 127.0.0.1:9092 --topic demo
  java -cp '.tools/kafka/libs/*' org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server 127.0.0.1:9092 \\
      --topic demo --group java-group --from-beginning

The standby's copy, straight from dc2 (each copy carries a switchyard-origin header):
  kcat -b 127.0.0.1:19093 -C -t demo -e -f '%o %s  %h\n'

Tee lag, site health, failover state (0 primary, 1 standby, 2 failing over, 3 failing back):
  watch -n1 "curl -s 127.0.0.1:9644/metrics | grep -E '^switchyard_(tee_lag|site_healthy|failover_state)'"
  curl -s 127.0.0.1:9644/api/v1/status            # JSON; with jq: | jq '.failover, .tee'

Drill a failover with one call (planned: drains, waits for the tee, loses nothing):
  curl -s -X POST 127.0.0.1:9644/api/v1/routes/all/failover
Fail back to dc1 (planned; dc1 already has what was written to dc2 meanwhile):
  curl -s -X POST 127.0.0.1:9644/api/v1/routes/all/failback

Or let dc1 die: Switchyard fails over to dc2 by itself within seconds.
  kill -9 ${JVM[dc1]}        # dc1's Kafka, SIGKILL (or freeze it: kill -STOP ${JVM[dc1]}; later kill -CONT ${JVM[dc1]})
  kill -USR1 $$        # this demo restarts a dead site (same storage and port); then fail back as above
While dc1 is down, all-topic Metadata (kcat -L, kcat -G) fails: Switchyard still asks dc1 for
listings. kcat -C -t demo, kcat -P and the Java clients work.

Ctrl-C here stops everything. Switchyard's log follows.

GUIDE

tail -n +1 -f "$DATA/switchyard.log" &
TAIL_PID=$!

# --- supervise --------------------------------------------------------------------
while :; do
    if ! alive "$SY_PID"; then
        wait "$SY_PID" && code=0 || code=$?
        die "Switchyard exited (status $code); its log is above"
    fi
    for s in dc1 dc2; do
        if ! alive "${WRAPPER[$s]}" && [ -z "${DOWN_REPORTED[$s]}" ]; then
            DOWN_REPORTED[$s]=1
            log "$s (127.0.0.1:${SITE_PORT[$s]}) is down: its Kafka process exited. kill -USR1 $$ restarts it"
        fi
    done
    if [ -n "$RESTART" ]; then
        RESTART=""
        restarted=""
        for s in dc1 dc2; do
            alive "${WRAPPER[$s]}" && continue
            log "restarting $s on 127.0.0.1:${SITE_PORT[$s]} (same storage)"
            start_site "$s"
            wait_site "$s"
            log "$s is back (Kafka pid ${JVM[$s]})"
            restarted=1
        done
        [ -n "$restarted" ] || log "USR1: no site is down, nothing to restart"
    fi
    sleep 1 &
    wait $! || true
done
