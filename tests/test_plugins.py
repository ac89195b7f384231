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
    admin_reload,
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


def produce_values(bootstrap: str, topic: str, items: list[tuple], **conf) -> dict:
    """Produces (key, value, timestamp[, headers]) records to partition 0;
    returns delivery reports by key."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.timeout.ms": 60000, **conf})
    reports: dict = {}

    def on_delivery(err, msg):
        reports[msg.key()] = (err, msg.partition(), msg.offset())

    for item in items:
        k, v, ts = item[:3]
        headers = item[3] if len(item) > 3 else None
        p.produce(topic, key=k, value=v, timestamp=ts, headers=headers, on_delivery=on_delivery, partition=0)
        p.poll(0)
    assert p.flush(60) == 0
    return reports


def all_values(bootstrap: str, topic: str) -> list:
    return [r for recs in read_partitions(bootstrap, topic).values() for r in recs]


def test_field_mask_filters_on_produce_and_masks_on_fetch(site, switchyard):
    a = site()
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


def test_topic_rename_moves_records_and_answers_under_the_clients_topic(site, switchyard):
    a = site()
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


SITE_ID = {"east": 0, "west": 1}


def peers(site, switchyard, component: str, config: object = "", priority=(1, 2)):
    """Two active-active sites, each serving its own clients (client ids
    `east-*`, `west-*`) and teeing to the other; the conflict plugin runs on
    both produce paths and both tees."""
    east, west = site(), site()
    topic = unique_name("inventory")
    rule = ["rule"]
    sy = multisite(
        switchyard, {"east": east, "west": west},
        [
            {"name": "east", "topics": {"exact": topic}, "client_ids": {"prefix": "east-"}, "site": "east",
             "plugins": {"produce": rule}, "tee": [{"site": "west", "plugins": rule}]},
            {"name": "west", "topics": {"exact": topic}, "client_ids": {"prefix": "west-"}, "site": "west",
             "plugins": {"produce": rule}, "tee": [{"site": "east", "plugins": rule}]},
        ],
        extra={"plugins": [plugin("rule", component, config, failure="fail-closed")],
               "sites": [{"name": "east", "bootstrap": [east.bootstrap], "priority": priority[0]},
                         {"name": "west", "bootstrap": [west.bootstrap], "priority": priority[1]}]},
    )
    for b in (east, west):
        create_topic(b.bootstrap, topic, partitions=1)
    return sy, topic, (east, west)


def write_interleaved(sy, topic: str, writes: dict, chunk: int = 50):
    """Each site's writes through Switchyard as that site's client, the two
    sites alternating in chunks."""
    longest = max(len(w) for w in writes.values())
    for i in range(0, longest, chunk):
        for site, ws in writes.items():
            part = ws[i:i + chunk]
            if part:
                r = produce_values(sy.bootstrap, topic, part, **{"client.id": f"{site}-app"})
                assert all(e is None for e, _, _ in r.values()), r


def last_per_key(broker, topic: str) -> dict:
    last = {}
    for r in all_values(broker.bootstrap, topic):
        last[r.key] = r.value
    return last


def wait_converged(brokers, topic: str, oracle: dict, what: str):
    state = {}

    def converged():
        state["got"] = [last_per_key(b, topic) for b in brokers]
        return all(g == oracle for g in state["got"])

    def explain():
        diffs = []
        for b, g in zip(brokers, state.get("got", [])):
            wrong = [(k, g.get(k), v) for k, v in oracle.items() if g.get(k) != v]
            diffs.append(f"{b}: {len(wrong)} keys differ, e.g. {wrong[:3]}")
        return f"{what}: " + "; ".join(diffs)

    wait_until(converged, timeout=90, interval=1.0, message=explain)


def test_lww_conflicts_in_active_active_converge_to_the_oracle(site, switchyard):
    sy, topic, sites = peers(site, switchyard, "lww")
    base = int(time.time() * 1000) - 60_000
    rng = random.Random(7)
    writes = {"east": [], "west": []}
    for site in writes:
        for i in range(400):
            key = f"k{rng.randrange(60)}".encode()
            ts = base + rng.randrange(0, 50) * 10  # many equal timestamps across sites
            writes[site].append((key, f"{site}-{i}-{ts}".encode(), ts))
    write_interleaved(sy, topic, writes)

    prio = {"east": 1, "west": 2}
    best: dict = {}
    for site, ws in writes.items():
        for key, value, ts in ws:
            rank = (ts, prio[site], -SITE_ID[site])
            if key not in best or rank >= best[key][0]:
                best[key] = (rank, value)
    wait_converged(sites, topic, {k: v for k, (_, v) in best.items()}, "last write wins")
    m = sy.metrics()[0]
    assert metric_sum(m, "switchyard_plugin_conflicts_total", plugin="rule", resolution="reject") > 0


def test_site_priority_conflicts_converge_to_the_oracle(site, switchyard):
    sy, topic, sites = peers(site, switchyard, "site-priority", {"order": ["west", "east"]})
    base = int(time.time() * 1000) - 60_000
    rng = random.Random(11)
    writes = {"east": [], "west": []}
    for site in writes:
        for i in range(300):
            # East writes keys k0..k59, west only k0..k29: half the keys see no conflict.
            key = f"k{rng.randrange(60 if site == 'east' else 30)}".encode()
            # East's clock runs ahead: timestamps must not decide.
            ts = base + rng.randrange(0, 1000) + (5000 if site == "east" else 0)
            writes[site].append((key, f"{site}-{i}".encode(), ts))
    write_interleaved(sy, topic, writes)
    rank = {"west": 2, "east": 1}
    best: dict = {}
    for site, ws in writes.items():
        for key, value, ts in ws:
            r = (rank[site], ts, -SITE_ID[site])
            if key not in best or r >= best[key][0]:
                best[key] = (r, value)
    oracle = {k: v for k, (_, v) in best.items()}
    assert sum(v.startswith(b"west") for v in oracle.values()) == 30
    wait_converged(sites, topic, oracle, "site priority")


def test_vector_clock_conflicts_converge_to_the_oracle(site, switchyard):
    sy, topic, sites = peers(site, switchyard, "vector-clock")
    base = int(time.time() * 1000) - 60_000
    rng = random.Random(5)
    writes = {"east": [], "west": []}
    oracle = {}
    clock = lambda e, w: [("switchyard-vclock", f"east={e},west={w}".encode())]  # noqa: E731
    for n in range(20):
        # Concurrent histories: east e1..e3, west w1..w2, each seeing only its
        # own updates; the head with the later timestamp wins.
        key = f"a{n}".encode()
        east_ts = [base + 10, base + 20, base + 30]
        west_ts = [base + 15, base + 25 + rng.choice([-20, 20])]
        for i, ts in enumerate(east_ts):
            writes["east"].append((key, f"e{i + 1}".encode(), ts, clock(i + 1, 0)))
        for i, ts in enumerate(west_ts):
            writes["west"].append((key, f"w{i + 1}".encode(), ts, clock(0, i + 1)))
        oracle[key] = b"e3" if east_ts[-1] > west_ts[-1] else b"w2"
        # Causality beats time: west's write saw all of east's, so it wins
        # although its timestamp is older than every east write.
        key = f"b{n}".encode()
        for i in range(3):
            writes["east"].append((key, f"e{i + 1}".encode(), base + 100 * (i + 1), clock(i + 1, 0)))
        writes["west"].append((key, b"w-saw-e3", base + 50, clock(3, 1)))
        oracle[key] = b"w-saw-e3"
    write_interleaved(sy, topic, writes, chunk=25)
    assert sum(v == b"w2" for k, v in oracle.items() if k.startswith(b"a")) not in (0, 20)
    wait_converged(sites, topic, oracle, "vector clocks")


def test_pn_counter_merges_two_sites_into_an_aggregate(site, switchyard):
    east, west, agg = site(), site(), site()
    topic = unique_name("counters")
    pn = ["pn"]
    sy = multisite(
        switchyard, {"east": east, "west": west, "agg": agg},
        [
            {"name": "east", "topics": {"exact": topic}, "client_ids": {"prefix": "east-"}, "site": "east",
             "tee": [{"site": "agg", "plugins": pn}]},
            {"name": "west", "topics": {"exact": topic}, "client_ids": {"prefix": "west-"}, "site": "west",
             "tee": [{"site": "agg", "plugins": pn}]},
        ],
        extra={"plugins": [plugin("pn", "pn-counter", failure="fail-closed")]},
    )
    for b in (east, west):
        create_topic(b.bootstrap, topic, partitions=1)
    rng = random.Random(3)
    now = int(time.time() * 1000)
    writes = {"east": [], "west": []}
    totals: dict = {}
    for site in writes:
        for i in range(300):
            key = f"c{rng.randrange(10)}".encode()
            delta = rng.randrange(-5, 10)
            writes[site].append((key, f"{delta:+d}".encode(), now + i))
            totals[key] = totals.get(key, 0) + delta
    write_interleaved(sy, topic, writes)
    # The sites keep their own deltas; the aggregate's last record per key is the total.
    assert len(all_values(east.bootstrap, topic)) == 300
    wait_converged([agg], topic, {k: str(v).encode() for k, v in totals.items()}, "PN-counter totals")
    assert len(all_values(agg.bootstrap, topic)) == 600


def test_bad_plugins_are_refused_at_upload_and_contained_at_run_time(site, switchyard):
    a = site()
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


def test_hot_reload_under_load_swaps_versions_without_failing_a_request(site, switchyard):
    a = site()
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
    def flowing(after: int):
        # Records keep being acked between swaps: the load is really on.
        wait_until(lambda: seq_now()[1] >= after + 30, timeout=30,
                   message=f"no records acked past {after} between swaps")

    for version in ["v2", "v1", "v2", "v1"]:
        flowing(swaps[-1][1] if swaps else 0)
        _, acked_before = seq_now()
        put(version)
        produced_after, _ = seq_now()
        swaps.append((acked_before, produced_after, version))
    flowing(swaps[-1][1])
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


def test_config_reload_applies_plugin_chains_and_refuses_other_changes(site, switchyard):
    import copy
    import signal
    import urllib.request

    from conftest import to_yaml

    a = site()
    topic = unique_name("cards")
    sy = multisite(
        switchyard, {"a": a},
        [{"name": "c", "topics": {"exact": topic}, "site": "a"}],
        extra={"plugins": [plugin("mask", "field-mask", {"mask": ["card"]}, failure="fail-closed")]},
    )
    create_topic(sy.bootstrap, topic, partitions=1)
    produce_values(sy.bootstrap, topic, [(b"k", json.dumps({"card": "4111"}).encode(), int(time.time() * 1000))])
    assert json.loads(all_values(sy.bootstrap, topic)[0].value)["card"] == "4111"

    def reload():
        return admin_reload(sy.admin)

    # The route gains the mask: consumers see it without a restart.
    cfg = copy.deepcopy(sy.config)
    cfg["routes"][0]["plugins"] = {"fetch": ["mask"]}
    sy.config_path.write_text(to_yaml(cfg))
    code, answer = reload()
    assert code == 200 and answer["applied"], answer
    assert json.loads(all_values(sy.bootstrap, topic)[0].value)["card"] == "***"

    # A change that needs a restart: refused, nothing applied, the key named.
    bad = copy.deepcopy(cfg)
    bad["routes"][0]["plugins"] = {}
    bad["tee"]["retry_backoff_ms"] = 999
    sy.config_path.write_text(to_yaml(bad))
    code, answer = reload()
    assert code == 400 and answer["restart_needed"] == ["tee"], answer
    assert json.loads(all_values(sy.bootstrap, topic)[0].value)["card"] == "***"

    # An invalid file: refused with the key, nothing applied.
    broken = copy.deepcopy(cfg)
    broken["routes"][0]["plugins"] = {"fetch": ["nope"]}
    sy.config_path.write_text(to_yaml(broken))
    code, answer = reload()
    assert code == 400 and any("routes[0].plugins.fetch[0]" in e for e in answer["errors"]), answer

    # SIGHUP does the same as the endpoint: the mask comes off.
    cfg["routes"][0]["plugins"] = {}
    sy.config_path.write_text(to_yaml(cfg))
    sy.send_signal(signal.SIGHUP)
    wait_until(lambda: json.loads(all_values(sy.bootstrap, topic)[0].value)["card"] == "4111",
               timeout=20, message="SIGHUP did not reload the config")
    # A plugin in use cannot be deleted while a route names it; unused, it can.
    cfg["routes"][0]["plugins"] = {"fetch": ["mask"]}
    sy.config_path.write_text(to_yaml(cfg))
    assert reload()[0] == 200
    req = urllib.request.Request(f"{sy.admin}/api/v1/plugins/mask", method="DELETE")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("DELETE of a plugin in use succeeded")
    except urllib.error.HTTPError as e:
        assert e.code == 409 and "route c (fetch)" in json.loads(e.read())["error"]


def test_lww_state_survives_a_switchyard_restart(site, switchyard):
    a = site()
    topic = unique_name("stock")
    sy = multisite(
        switchyard, {"a": a},
        [{"name": "s", "topics": {"exact": topic}, "site": "a", "plugins": {"produce": ["lww"]}}],
        extra={"plugins": [plugin("lww", "lww", failure="fail-closed")]},
    )
    create_topic(sy.bootstrap, topic, partitions=1)
    t = int(time.time() * 1000) - 10_000
    produce_values(sy.bootstrap, topic, [(b"k1", b"new", t), (b"k2", b"new", t)])
    # Killed, not stopped: the versions must already be on the cluster.
    sy.process.kill()
    sy2 = switchyard(upstreams=[a], overrides=sy.config, config_text=sy.config_path.read_text())
    r = produce_values(sy2.bootstrap, topic, [(b"k1", b"stale", t - 1000), (b"k2", b"newer", t + 1),
                                               (b"k3", b"first", t - 5000)])
    assert all(e is None for e, _, _ in r.values()), r
    values = [(r.key, r.value) for r in all_values(a.bootstrap, topic)]
    assert values == [(b"k1", b"new"), (b"k2", b"new"), (b"k2", b"newer"), (b"k3", b"first")], values
    m = sy2.metrics()[0]
    assert metric_sum(m, "switchyard_plugin_conflicts_total", plugin="lww", resolution="reject") == 1


def test_fetch_plugins_re_encode_batches_every_client_reads(site, switchyard):
    from kafka import KafkaConsumer, TopicPartition as KTP

    a = site()
    topic = unique_name("events")
    sy = multisite(
        switchyard, {"a": a},
        [{"name": "e", "topics": {"exact": topic}, "site": "a", "plugins": {"fetch": ["keep", "view"]}}],
        extra={"plugins": [
            plugin("keep", "keep-all"),
            plugin("view", "field-mask", {"mask": ["secret"], "drop": [{"field": "type", "equals": "test"}]},
                   failure="fail-closed"),
        ]},
    )
    create_topic(sy.bootstrap, topic, partitions=1)
    now = int(time.time() * 1000)
    expected = []
    n = 0
    # Batches of 10: every third batch holds only test records, so consumers
    # meet batches whose records were all taken out (empty batches).
    for b in range(12):
        items = []
        for _ in range(10):
            kind = "test" if b % 3 == 0 else "sale"
            doc = {"n": n, "type": kind, "secret": f"s{n}"}
            items.append((f"k{n}".encode(), json.dumps(doc).encode(), now + n))
            if kind == "sale":
                expected.append(n)
            n += 1
        produce_values(sy.bootstrap, topic, items, **{"compression.type": "gzip" if b % 2 else "none"})
    # confluent-kafka (librdkafka)
    got = [(r.offset, json.loads(r.value)) for r in all_values(sy.bootstrap, topic)]
    assert [d["n"] for _, d in got] == expected
    assert all(d["secret"] == "***" and off == d["n"] for off, d in got)
    # kafka-python, from the beginning to the end, with assign()
    c = KafkaConsumer(bootstrap_servers=sy.bootstrap, enable_auto_commit=False, group_id=None,
                      consumer_timeout_ms=10000)
    tp = KTP(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(seen) < len(expected):
        for msgs in c.poll(timeout_ms=500).values():
            seen.extend((m.offset, json.loads(m.value)) for m in msgs)
    assert [d["n"] for _, d in seen] == expected
    assert all(d["secret"] == "***" for _, d in seen)
    assert c.position(tp) == n, "the consumer must move past the emptied batches to the end"
    c.close()
