"""Switchyard's admin HTTP API (/healthz, /readyz, /metrics, /api/v1/status)
and process lifecycle (SIGTERM/SIGINT)."""

from __future__ import annotations

import gc
import signal
import socket
import struct
import subprocess
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from helpers import (
    admin_client,
    allocate_ports,
    confluent_consume,
    confluent_consumer_conf,
    confluent_produce,
    create_topic,
    make_records,
    metric_sum,
    samples_named,
    tcp_accepts,
    unique_name,
    wait_until,
)

# Topics and groups of their own only: the session's shared Kafka node will do.
pytestmark = pytest.mark.shared_site

FAST_REFRESH = {"metadata": {"refresh_interval_ms": 500}}


def _active_connections(sy) -> tuple[float, int]:
    samples, _ = sy.metrics()
    return metric_sum(samples, "switchyard_client_connections"), sy.status()["connections"]["active"]


def test_healthz_readyz_and_status(switchyard, switchyard_bin):
    sy = switchyard(cluster_id=unique_name("status-cluster"))
    code, body = sy.get("/healthz")
    assert (code, body.strip()) == (200, "ok"), f"/healthz: {code} {body!r}"
    code, body = sy.get("/readyz")
    assert code == 200, f"/readyz with a running upstream: {code} {body!r}"

    st = sy.status()
    assert isinstance(st.get("version"), str) and st["version"], f"version: {st.get('version')!r}"
    cli = subprocess.run([str(switchyard_bin), "--version"], capture_output=True, timeout=10)
    assert cli.returncode == 0, f"switchyard --version exited {cli.returncode}"
    assert st["version"] in cli.stdout.decode(), f"status version {st['version']!r} vs --version {cli.stdout!r}"
    assert st["cluster_id"] == sy.cluster_id
    assert st["bootstrap"] == sy.bootstrap

    listeners = sorted(st["listeners"], key=lambda listener: listener["node_id"])
    assert listeners == [
        {"listener": "default", "node_id": i, "bind": f"{sy.host}:{sy.node_ports[i]}",
         "advertised": sy.advertised[i]}
        for i in range(sy.virtual_nodes)
    ], f"listeners: {st['listeners']}"

    assert len(st["sites"]) == 1, st["sites"]
    site = st["sites"][0]
    assert site["name"] == "local"
    assert site["bootstrap"] == sy.broker.bootstrap.split(",")
    assert site["reachable"] is True
    # the upstream brokers Switchyard discovered are the ones the broker reports
    md = admin_client(sy.broker.bootstrap).list_topics(timeout=10)
    want = sorted((b.id, b.host, b.port) for b in md.brokers.values())
    got = sorted((b["node_id"], b["host"], b["port"]) for b in site["brokers"])
    assert got == want, f"status sites[0].brokers {site['brokers']} != the broker's own metadata {want}"

    conns = st["connections"]
    assert isinstance(conns["active"], int) and isinstance(conns["total"], int), conns
    before_total = conns["total"]

    # an accepted client connection is counted while open and uncounted after
    with socket.create_connection((sy.host, sy.port), timeout=5):
        wait_until(
            lambda: _active_connections(sy)[0] >= 1 and _active_connections(sy)[1] >= 1,
            10,
            lambda: f"open client connection not counted: gauge/active = {_active_connections(sy)}",
        )
        assert sy.status()["connections"]["total"] >= before_total + 1
    wait_until(
        lambda: _active_connections(sy) == (0, 0),
        10,
        lambda: f"closed client connection still counted: gauge/active = {_active_connections(sy)}",
    )


@pytest.mark.timeout(120, method="signal")
def test_readyz_follows_upstream_availability(switchyard, site, restart_site):
    upstream = site()
    sy = switchyard([upstream], overrides=FAST_REFRESH)
    assert sy.get("/readyz")[0] == 200

    upstream.kill()
    wait_until(lambda: sy.get("/readyz")[0] == 503, 15, "/readyz did not turn 503 after the upstream broker died")
    assert sy.get("/healthz")[0] == 200, "/healthz must not depend on the upstream"
    assert sy.status()["sites"][0]["reachable"] is False

    restarted = restart_site(upstream)
    wait_until(lambda: sy.get("/readyz")[0] == 200, 20, "/readyz did not recover after the upstream came back")
    assert sy.status()["sites"][0]["reachable"] is True
    # and clients get through again
    topic = unique_name("ready-again")
    create_topic(sy.bootstrap, topic, 1)
    assert topic in admin_client(restarted.bootstrap).list_topics(timeout=10).topics


def test_readyz_503_while_upstream_was_never_reachable(switchyard):
    nowhere = f"127.0.0.1:{allocate_ports(1)}"  # nothing listens there
    sy = switchyard([nowhere], overrides=FAST_REFRESH, wait_ready=False)
    assert sy.get("/healthz")[0] == 200
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        code, body = sy.get("/readyz")
        assert code == 503, f"/readyz is {code} ({body!r}) although the upstream never answered"
        time.sleep(0.2)
    st = sy.status()
    assert st["sites"][0]["reachable"] is False, st["sites"]
    assert sy.running(), "switchyard must keep running while its upstream is down"


@pytest.mark.timeout(120, method="signal")
def test_metrics_after_traffic(switchyard):
    sy = switchyard()
    topic = unique_name("metrics")
    create_topic(sy.bootstrap, topic, 3)
    records = make_records(300, tag=topic, max_value_bytes=4000)
    value_bytes = sum(len(r.value or b"") for r in records)

    producer = Producer({"bootstrap.servers": sy.bootstrap, "acks": "all", "linger.ms": 5})
    confluent_produce(producer, topic, records)
    consumer = Consumer(confluent_consumer_conf(sy.bootstrap))
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
        got = confluent_consume(consumer, len(records), timeout=60, settle=0.5)
        assert len(got) == len(records), f"consumed {len(got)} of {len(records)}"

        samples, types = sy.metrics()
        for name, kind in [
            ("switchyard_client_connections", "gauge"),
            ("switchyard_client_connections_total", "counter"),
            ("switchyard_requests_total", "counter"),
            ("switchyard_client_bytes_received_total", "counter"),
            ("switchyard_client_bytes_sent_total", "counter"),
            ("switchyard_upstream_request_duration_seconds", "histogram"),
        ]:
            assert types.get(name) == kind, f"/metrics: {name} has TYPE {types.get(name)!r}, expected {kind}"

        assert metric_sum(samples, "switchyard_client_connections") >= 2, "producer+consumer connections not counted"
        assert metric_sum(samples, "switchyard_client_connections_total") >= 2

        requests = samples_named(samples, "switchyard_requests_total")
        by_api: dict[str, float] = {}
        for s in requests:
            assert s.labels.get("version", "").isdigit(), f"requests_total without numeric version label: {s}"
            by_api[s.labels.get("api", "")] = by_api.get(s.labels.get("api", ""), 0) + s.value
        for api in ("ApiVersions", "Metadata", "Produce", "Fetch"):
            assert by_api.get(api, 0) > 0, f"switchyard_requests_total{{api={api!r}}} is 0; seen: {by_api}"

        received = metric_sum(samples, "switchyard_client_bytes_received_total")
        sent = metric_sum(samples, "switchyard_client_bytes_sent_total")
        assert received >= value_bytes, f"bytes received from clients {received} < {value_bytes} bytes of values produced"
        assert sent >= value_bytes, f"bytes sent to clients {sent} < {value_bytes} bytes of values consumed"

        hist = "switchyard_upstream_request_duration_seconds"
        counts = samples_named(samples, f"{hist}_count", site="local")
        assert counts and sum(s.value for s in counts) > 0, f"no upstream request durations for site=local: {counts}"
        assert sum(s.value for s in samples_named(samples, f"{hist}_sum", site="local")) > 0
        for c in counts:
            series = {k: v for k, v in c.labels.items()}
            buckets = [
                s for s in samples_named(samples, f"{hist}_bucket", **series) if set(s.labels) == set(series) | {"le"}
            ]
            inf = [b for b in buckets if b.labels["le"] == "+Inf"]
            assert inf and inf[0].value == c.value, f"{hist} +Inf bucket != _count for {series}"
            ordered = sorted(buckets, key=lambda b: float(b.labels["le"].replace("+Inf", "inf")))
            vals = [b.value for b in ordered]
            assert vals == sorted(vals), f"{hist} buckets not cumulative for {series}: {vals}"
    finally:
        consumer.close()
        producer.flush(10)
        del producer
        gc.collect()

    wait_until(
        lambda: _active_connections(sy) == (0, 0),
        20,
        lambda: f"all clients closed but gauge/active connections = {_active_connections(sy)}",
    )


def test_errors_total_counts_oversized_frame(switchyard):
    sy = switchyard(overrides={"limits": {"max_frame_bytes": 1048576}})
    with socket.create_connection((sy.host, sy.port), timeout=10) as s:
        # Frame length prefix of 8 MiB, above max_frame_bytes: the proxy must
        # refuse it and close the connection rather than buffer it.
        s.sendall(struct.pack(">i", 8 * 1024 * 1024) + b"\x00" * 64)
        deadline = time.monotonic() + 10
        closed = False
        while time.monotonic() < deadline and not closed:
            try:
                closed = s.recv(4096) == b""
            except ConnectionResetError:
                closed = True
            except socket.timeout:
                pass
        assert closed, "connection with an oversized frame was not closed within 10s"

    def errors():
        samples, _ = sy.metrics()
        return [s for s in samples_named(samples, "switchyard_errors_total") if s.value >= 1 and s.labels.get("kind")]

    wait_until(errors, 10, "switchyard_errors_total{kind=...} not incremented by an oversized frame")
    assert sy.running(), "one bad client must not take the proxy down"
    assert sy.get("/readyz")[0] == 200


@pytest.mark.timeout(90, method="signal")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_exits_zero_with_connected_client(switchyard, sig):
    grace_ms = 3000
    sy = switchyard(overrides={"timeouts": {"shutdown_grace_ms": grace_ms}})
    topic = unique_name("shutdown")
    create_topic(sy.bootstrap, topic, 1)
    producer = Producer({"bootstrap.servers": sy.bootstrap, "acks": "all"})
    try:
        confluent_produce(producer, topic, make_records(10, tag=topic))  # client stays connected, idle
        started = time.monotonic()
        code = sy.stop(timeout=grace_ms / 1000 + 10, sig=sig)
        took = time.monotonic() - started
    finally:
        del producer
        gc.collect()
    assert code == 0, f"exit code {code} after {sig.name}; log:\n{sy.process.tail()}"
    assert took < grace_ms / 1000 + 5, f"took {took:.1f}s to exit (shutdown_grace_ms={grace_ms})"
    assert not tcp_accepts(sy.host, sy.port), "bootstrap listener still accepts after exit"
    assert not any(tcp_accepts(sy.host, p) for p in sy.node_ports.values()), "a node listener still accepts after exit"


def test_sigterm_idle_exits_promptly(switchyard):
    sy = switchyard()
    started = time.monotonic()
    code = sy.stop(timeout=15)
    assert code == 0, f"exit code {code} after SIGTERM; log:\n{sy.process.tail()}"
    assert time.monotonic() - started < 5, "idle proxy took more than 5s to exit on SIGTERM"
