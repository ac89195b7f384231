"""switchyard-perf (benches/) against Switchyard in front of Tansu: the load
generator operators use must itself work, so it runs in CI on a small load."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import unique_name

# Topics and groups of their own only: the session's shared Kafka node will do.
pytestmark = pytest.mark.shared_site

ROOT = Path(__file__).resolve().parent.parent
PERF = Path(os.environ.get("SWITCHYARD_PERF_BIN", ROOT / "target/debug/switchyard-perf"))


@pytest.mark.timeout(120, method="signal")
def test_perf_produce_then_consume_through_switchyard(switchyard):
    assert PERF.is_file(), f"{PERF} missing: cargo build -p switchyard-bench"
    sy = switchyard()
    topic = unique_name("perf")
    n = 20_000
    common = ["--bootstrap", sy.bootstrap, "--topic", topic, "--num-records", str(n), "--json"]
    out = subprocess.run(
        [str(PERF), "produce", *common, "--record-size", "100", "--partitions", "3", "--acks", "all",
         "--idempotence", "--producers", "2", "--progress-secs", "1"],
        capture_output=True, text=True, timeout=90,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    produced = json.loads(out.stdout.strip().splitlines()[-1])
    assert produced["mode"] == "produce" and produced["records"] == n and produced["errors"] == 0
    assert produced["bytes"] == n * 100
    assert produced["records_per_sec"] > 0
    lat = produced["latency_ms"]
    assert 0 < lat["p50"] <= lat["p99"] <= lat["p999"] <= lat["max"]

    out = subprocess.run(
        [str(PERF), "consume", *common, "--consumers", "2", "--timeout-secs", "60",
         "-X", "session.timeout.ms=6000", "-X", "max.poll.interval.ms=6000", "-X", "heartbeat.interval.ms=1000"],
        capture_output=True, text=True, timeout=90,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    consumed = json.loads(out.stdout.strip().splitlines()[-1])
    assert consumed["records"] == n and consumed["bytes"] == n * 100

    # Asking for more than exists fails loudly instead of reporting a partial run.
    out = subprocess.run(
        [str(PERF), "consume", "--bootstrap", sy.bootstrap, "--topic", topic, "--num-records", str(n + 1),
         "--timeout-secs", "8", "-X", "session.timeout.ms=6000", "-X", "max.poll.interval.ms=6000"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode != 0 and f"consumed only {n} of {n + 1}" in out.stderr, out.stderr
