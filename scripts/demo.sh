#!/usr/bin/env bash
# The demo: a Tansu broker (one "site") on 127.0.0.1:19092 and Switchyard in
# front of it on 127.0.0.1:9092 (virtual brokers on 9093-9095), admin HTTP on
# 127.0.0.1:9644. Installs what it needs (scripts/setup.sh), builds Switchyard,
# and runs until Ctrl-C, which stops both.
#
#   kcat -b 127.0.0.1:9092 -L                      # metadata: only Switchyard addresses
#   echo hello | kcat -b 127.0.0.1:9092 -P -t demo  # produce
#   kcat -b 127.0.0.1:9092 -C -t demo -e           # consume
#   curl -s 127.0.0.1:9644/api/v1/status
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/setup.sh
cargo build --release -p switchyard

DATA="$(mktemp -d)"
cleanup() {
    [ -n "${SY_PID:-}" ] && kill "$SY_PID" 2>/dev/null || true
    [ -n "${TANSU_PID:-}" ] && kill "$TANSU_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

echo "==> starting Tansu on 127.0.0.1:19092 (log: $DATA/tansu.log)"
.tools/bin/tansu broker \
    --listener-url tcp://127.0.0.1:19092 \
    --advertised-listener-url tcp://127.0.0.1:19092 \
    --storage-engine memory://tansu/ >"$DATA/tansu.log" 2>&1 &
TANSU_PID=$!
for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/19092) 2>/dev/null && break
    kill -0 "$TANSU_PID" 2>/dev/null || { cat "$DATA/tansu.log"; exit 1; }
    sleep 0.1
done

echo "==> starting Switchyard on 127.0.0.1:9092 (config: config/switchyard.example.yaml)"
target/release/switchyard run --config config/switchyard.example.yaml &
SY_PID=$!
for _ in $(seq 1 100); do
    curl -sf 127.0.0.1:9644/readyz >/dev/null 2>&1 && break
    kill -0 "$SY_PID" 2>/dev/null || exit 1
    sleep 0.1
done
cat <<MSG

Switchyard is ready. Point any Kafka client at 127.0.0.1:9092, for example:
  kcat -b 127.0.0.1:9092 -L
  echo hello | kcat -b 127.0.0.1:9092 -P -t demo
  kcat -b 127.0.0.1:9092 -C -t demo -e
  curl -s 127.0.0.1:9644/api/v1/status
  curl -s 127.0.0.1:9644/metrics
Ctrl-C stops Switchyard and Tansu.
MSG
wait "$SY_PID"
