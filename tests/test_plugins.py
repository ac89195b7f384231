"""WASM policy plugins on the data path, with real brokers and clients.

The components come from plugins/build.sh (scripts/test.sh runs it before the
tests): plugins/dist/<name>.wasm."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from confluent_kafka import Producer

from helpers import (
    create_topic,
    http_get_json,
    metric_sum,
    read_partitions,
    unique_name,
    wait_until,
)
from multisite import multisite

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "plugins" / "dist"


def plugin(name: str, component: str, config: object = "", **kw) -> dict:
    wasm = DIST / f"{component}.wasm"
    assert wasm.exists(), f"{wasm} missing: run plugins/build.sh"
    entry = {"name": name, "path": str(wasm),
             "config": config if isinstance(config, str) else json.dumps(config)}
    entry.update(kw)
    return entry


def produce_values(bootstrap: str, topic: str, items: list[tuple[bytes, bytes, int]], **conf) -> dict:
    """Produces (key, value, timestamp) records; returns delivery reports by key."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.timeout.ms": 60000, **conf})
    reports: dict = {}

    def on_delivery(err, msg):
        reports[msg.key()] = (err, msg.partition(), msg.offset())

    for k, v, ts in items:
        p.produce(topic, key=k, value=v, timestamp=ts, on_delivery=on_delivery, partition=0)
        p.poll(0)
    assert p.flush(60) == 0
    return reports


def all_values(bootstrap: str, topic: str) -> list:
    return [r for recs in read_partitions(bootstrap, topic).values() for r in recs]


def test_field_mask_filters_on_produce_and_masks_on_fetch(tansu, switchyard):
    a = tansu()
    topic = unique_name("payments")
    sy = multisite(
        switchyard, {"a": a},
        [{"name": "pay", "topics": {"exact": topic}, "site": "a",
          "plugins": {"produce": ["no-tests"], "fetch": ["mask"]}}],
        extra={"plugins": [
            plugin("no-tests", "field-mask", {"drop": [{"field": "type", "equals": "test"}]}),
            plugin("mask", "field-mask", {"mask": ["card.number"]}, failure="fail-closed"),
        ]},
    )
    create_topic(sy.bootstrap, topic, partitions=1)
    now = int(time.time() * 1000)
    items = []
    for i in range(200):
        doc = {"id": i, "type": "test" if i % 4 == 0 else "sale", "card": {"number": f"4111-{i}", "exp": "12/30"}}
        items.append((f"k{i}".encode(), json.dumps(doc).encode(), now + i))
    items.append((b"raw", b"not json", now + 500))
    reports = produce_values(sy.bootstrap, topic, items, **{"enable.idempotence": True})
    assert all(e is None for e, _, _ in reports.values()), reports

    # On the broker: test records never arrived, cards are intact (masking is per consumer path).
    stored = all_values(a.bootstrap, topic)
    docs = [json.loads(r.value) for r in stored if r.key != b"raw"]
    assert len(docs) == 150 and all(d["type"] == "sale" for d in docs)
    assert all(d["card"]["number"].startswith("4111-") for d in docs)
    assert any(r.key == b"raw" for r in stored)

    # Through Switchyard: the same 151 records at the same offsets, cards masked.
    seen = all_values(sy.bootstrap, topic)
    assert [r.offset for r in seen] == [r.offset for r in stored]
    for r in seen:
        if r.key == b"raw":
            assert r.value == b"not json"
            continue
        d = json.loads(r.value)
        assert d["card"] == {"number": "***", "exp": "12/30"}, d
    m = sy.metrics()[0]
    assert metric_sum(m, "switchyard_plugin_records_dropped_total", plugin="no-tests") == 50
    assert metric_sum(m, "switchyard_plugin_calls_total", plugin="mask", stage="fetch") >= 1


def test_topic_rename_moves_records_and_answers_under_the_clients_topic(tansu, switchyard):
    a = tansu()
    topic = unique_name("orders")
    sy = multisite(
        switchyard, {"a": a},
        [{"name": "o", "topics": {"exact": topic}, "site": "a", "plugins": {"produce": ["rename"]}}],
        extra={"plugins": [plugin("rename", "topic-rename", {"template": "{topic}.archive"},
                                  failure="fail-closed")]},
    )
    create_topic(sy.bootstrap, topic, partitions=1)
    create_topic(sy.bootstrap, f"{topic}.archive", partitions=1)
    now = int(time.time() * 1000)
    items = [(f"k{i}".encode(), f"v{i}".encode(), now + i) for i in range(300)]
    reports = produce_values(sy.bootstrap, topic, items, **{"enable.idempotence": True})
    assert len(reports) == 300 and all(e is None for e, _, _ in reports.values())
    moved = all_values(a.bootstrap, f"{topic}.archive")
    assert [r.value for r in moved] == [v for _, v, _ in items]
    assert all_values(a.bootstrap, topic) == []


def test_lww_conflicts_in_active_active_converge_to_the_oracle(tansu, switchyard):
    east, west = tansu(), tansu()
    topic = unique_name("inventory")
    lww = ["lww"]
    sy = multisite(
        switchyard, {"east": east, "west": west},
        [
            {"name": "east", "topics": {"exact": topic}, "client_ids": {"prefix": "east-"}, "site": "east",
             "plugins": {"produce": lww}, "tee": [{"site": "west", "plugins": lww}]},
            {"name": "west", "topics": {"exact": topic}, "client_ids": {"prefix": "west-"}, "site": "west",
             "plugins": {"produce": lww}, "tee": [{"site": "east", "plugins": lww}]},
        ],
        extra={"plugins": [plugin("lww", "lww", failure="fail-closed")],
               "sites": [{"name": "east", "bootstrap": [east.bootstrap], "priority": 1},
                         {"name": "west", "bootstrap": [west.bootstrap], "priority": 2}]},
    )
    for b in (east, west):
        create_topic(b.bootstrap, topic, partitions=1)
    base = int(time.time() * 1000) - 60_000
    rng = random.Random(7)
    writes = {"east": [], "west": []}
    for site in writes:
        for i in range(400):
            key = f"k{rng.randrange(60)}".encode()
            ts = base + rng.randrange(0, 50) * 10  # many equal timestamps across sites
            writes[site].append((key, f"{site}-{i}-{ts}".encode(), ts))
    # Interleave the two sites' writes in time.
    for i in range(0, 400, 50):
        for site in ("east", "west"):
            r = produce_values(sy.bootstrap, topic, writes[site][i:i + 50], **{"client.id": f"{site}-app"})
            assert all(e is None for e, _, _ in r.values())

    prio = {"east": 1, "west": 2}
    sid = {"east": 0, "west": 1}
    oracle: dict = {}
    for site, ws in writes.items():
        for key, value, ts in ws:
            rank = (ts, prio[site], -sid[site])
            if key not in oracle or rank >= oracle[key][0]:
                oracle[key] = (rank, value)

    def last_per_key(b):
        last = {}
        for r in all_values(b.bootstrap, topic):
            last[r.key] = r.value
        return last

    def converged():
        return all(last_per_key(b) == {k: v for k, (_, v) in oracle.items()} for b in (east, west))

    wait_until(converged, timeout=60, interval=1.0,
               message="both sites hold the LWW winner of every key")
    m = sy.metrics()[0]
    assert metric_sum(m, "switchyard_plugin_conflicts_total", plugin="lww", resolution="reject") > 0


def test_bad_plugins_are_refused_at_upload_and_contained_at_run_time(tansu, switchyard):
    a = tansu()
    topic = unique_name("t")
    sy = multisite(
        switchyard, {"a": a},
        [{"name": "t", "topics": {"exact": topic}, "site": "a", "plugins": {"fetch": ["guard"]}}],
        extra={"plugins": [plugin("guard", "misbehave", "ok", failure="fail-closed", timeout_ms=20)]},
    )
    create_topic(sy.bootstrap, topic, partitions=1)
    now = int(time.time() * 1000)
    produce_values(sy.bootstrap, topic, [(b"a", b"fine", now), (b"b", b"BOOM here", now + 1)])

    def put(name, body: bytes, config: str = "", query: str = ""):
        import urllib.request
        req = urllib.request.Request(f"{sy.admin}/api/v1/plugins/{name}{query}", data=body, method="PUT",
                                     headers={"x-switchyard-plugin-config": config})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    # Refused at upload, the running version untouched.
    for body, config, words in [
        (b"garbage bytes", "", "not a valid WebAssembly component"),
        ((DIST / "wrong-world.wasm").read_bytes(), "", "does not fit the plugin world"),
        ((DIST / "misbehave.wasm").read_bytes(), "init-trap", "init trapped"),
        ((DIST / "misbehave.wasm").read_bytes(), "init-reject", "init rejected the config"),
    ]:
        code, answer = put("guard", body, config)
        assert code == 400 and words in answer["error"], answer
    assert [r.value for r in all_values(sy.bootstrap, topic)] == [b"fine", b"BOOM here"]

    # A plugin that panics on one record: fail-closed gives the consumer a
    # retriable error for the partition, never a dropped connection; a fixed
    # version uploaded makes the records flow again.
    code, _ = put("guard", (DIST / "misbehave.wasm").read_bytes(), "panic-on:BOOM", "?policy=fail-closed")
    assert code == 200
    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": sy.bootstrap, "group.id": unique_name("g"),
                         "enable.auto.commit": False, "fetch.error.backoff.ms": 100})
    consumer.assign([TopicPartition(topic, 0, 0)])

    def guard_trapped():
        m = consumer.poll(0.2)
        # librdkafka retries the partition's KAFKA_STORAGE_ERROR itself; what
        # must never happen is the record reaching the application unfiltered.
        assert m is None or m.error() or m.value() != b"BOOM here", "unfiltered record shown"
        st = http_get_json(f"{sy.admin}/api/v1/plugins")
        g = next(p for p in st if p["name"] == "guard")
        return g if g["traps_last_minute"] >= 1 else None

    guard = wait_until(guard_trapped, timeout=30, message="the plugin never trapped on the BOOM record")
    assert "panicked" in (guard["last_error"] or ""), guard
    # An infinite loop and a memory bomb: contained the same way (deadline, memory cap).
    for mode in ("loop", "alloc"):
        code, _ = put("guard", (DIST / "misbehave.wasm").read_bytes(), mode, "?policy=fail-open&timeout_ms=20&memory_mb=8")
        assert code == 200
        got = [r.value for r in all_values(sy.bootstrap, topic)]
        assert got == [b"fine", b"BOOM here"], f"{mode}: fail-open passes the batch unchanged"
    code, _ = put("guard", (DIST / "misbehave.wasm").read_bytes(), "ok")
    assert code == 200
    values = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(values) < 2:
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            values.append(m.value())
    consumer.close()
    assert values == [b"fine", b"BOOM here"]
    traps = metric_sum(sy.metrics()[0], "switchyard_plugin_traps_total", plugin="guard")
    assert traps >= 3, traps


def test_hot_reload_under_load_swaps_versions_without_failing_a_request(tansu, switchyard):
    a = tansu()
    topic = unique_name("swap")
    sy = multisite(
        switchyard, {"a": a},
        [{"name": "s", "topics": {"exact": topic}, "site": "a", "plugins": {"produce": ["tag"]}}],
        extra={"plugins": [plugin("tag", "field-mask", {"mask": ["ver"], "replacement": "v1"},
                                  failure="fail-closed")]},
    )
    create_topic(sy.bootstrap, topic, partitions=1)
    wasm = (DIST / "field-mask.wasm").read_bytes()

    def put(version: str):
        import urllib.request
        cfg = json.dumps({"mask": ["ver"], "replacement": version})
        req = urllib.request.Request(f"{sy.admin}/api/v1/plugins/tag?policy=fail-closed", data=wasm,
                                     method="PUT", headers={"x-switchyard-plugin-config": cfg})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200

    import threading

    p = Producer({"bootstrap.servers": sy.bootstrap, "linger.ms": 2, "enable.idempotence": True,
                  "message.timeout.ms": 60000})
    lock = threading.Lock()
    reports: dict = {}
    state = {"seq": 0, "acked": -1}
    stop = threading.Event()

    def on_delivery(err, msg):
        with lock:
            k = int(msg.key())
            reports[k] = err
            if err is None:
                state["acked"] = max(state["acked"], k)

    def load():
        # ~100 records/s, one connection to the partition's leader, until stopped.
        while not stop.is_set():
            with lock:
                s = state["seq"]
                state["seq"] += 1
            p.produce(topic, key=str(s).encode(), value=json.dumps({"seq": s, "ver": "?"}).encode(),
                      partition=0, on_delivery=on_delivery)
            p.poll(0.01)
        p.flush(60)

    def seq_now():
        with lock:
            return state["seq"], state["acked"]

    t = threading.Thread(target=load, daemon=True)
    t.start()
    wait_until(lambda: seq_now()[1] >= 50, timeout=30, message="producer never got going")
    connections = metric_sum(sy.metrics()[0], "switchyard_client_connections_total")
    # (acked before the swap started, produced after it answered, version)
    swaps = []
    for version in ["v2", "v1", "v2", "v1"]:
        time.sleep(0.5)  # load keeps running meanwhile: spacing between swaps, not synchronisation
        _, acked_before = seq_now()
        put(version)
        produced_after, _ = seq_now()
        swaps.append((acked_before, produced_after, version))
    time.sleep(0.5)
    stop.set()
    t.join(90)
    total = state["seq"]
    assert len(reports) == total and all(e is None for e in reports.values()), \
        [e for e in reports.values() if e is not None][:5]
    assert metric_sum(sy.metrics()[0], "switchyard_client_connections_total") == connections, \
        "a client connection was dropped or reopened during the swaps"

    got = {int(r.key): json.loads(r.value)["ver"] for r in all_values(a.bootstrap, topic)}
    assert len(got) == total, f"{total - len(got)} records missing"
    # Acked before a swap began: the old version; produced after it answered
    # (until the next swap began): the new one. Records in flight across a
    # swap may carry either.
    versions = ["v1"] + [v for _, _, v in swaps]
    bounds = [(-1, 0)] + [(a_, p_) for a_, p_, _ in swaps] + [(total, total)]
    for i, version in enumerate(versions):
        first = bounds[i][1]
        last = bounds[i + 1][0]  # acked before the next swap started
        wrong = [s for s in range(first, last + 1) if s < total and got[s] != version]
        assert not wrong, f"records {wrong[:5]} should carry {version}, got {[got[s] for s in wrong[:5]]}"
    assert len(set(got.values())) == 2
