"""Tee: records written through a route are copied to target clusters,
renamed, partition for partition, exactly once, with offset syncs."""

from __future__ import annotations

import threading
import time

from helpers import (
    admin_client,
    compare_copies,
    create_topic,
    metric_sum,
    read_partitions,
    unique_name,
    wait_for_count,
    wait_until,
)
from multisite import multisite, offset_syncs, produce_keyed, producer, read_at, translate

ORIGIN = "switchyard-origin"


def test_async_tee_to_aggregate_exactly_once(site, switchyard):
    store, agg = site(), site()
    topic = unique_name("orders")
    sy = multisite(
        switchyard,
        {"store1": store, "agg": agg},
        [{"name": "orders", "topics": {"exact": topic}, "site": "store1",
          "tee": [{"site": "agg", "naming": "{topic}-{site}"}]}],
    )
    create_topic(sy.bootstrap, topic, partitions=6)
    n = 100_000
    t0 = time.monotonic()
    produce_keyed(sy.bootstrap, topic, n, tag="agg")
    produced_s = time.monotonic() - t0
    target = f"{topic}-store1"
    wait_for_count(agg.bootstrap, target, n, timeout=180)
    caught_up_s = time.monotonic() - t0
    print(f"\n100k records: produced in {produced_s:.1f}s, on the aggregate after {caught_up_s:.1f}s")

    src = read_partitions(store.bootstrap, topic, timeout=120)
    dst = read_partitions(agg.bootstrap, target, timeout=120)
    assert sum(len(v) for v in src.values()) == n
    report = compare_copies(src, dst)
    report.assert_ok(f"{topic} on store1 vs {target} on agg")
    # Every copy names its origin site.
    origins = {dict(r.headers).get(ORIGIN) for recs in dst.values() for r in recs}
    assert origins == {b"store1"}, origins
    # The client sees the virtual name only; the physical target stays hidden
    # because the aggregate is not a routed site.
    listed = admin_client(sy.bootstrap).list_topics(timeout=10).topics
    assert topic in listed and target not in listed

    samples, _ = sy.metrics()
    assert metric_sum(samples, "switchyard_tee_records_total", route="orders", target="agg") == n
    st = sy.status()["tee"][0]
    assert st["route"] == "orders" and st["target"] == "agg" and st["mode"] == "async"
    t = st["topics"][0]
    assert t["source_topic"] == topic and t["target_topic"] == target
    assert t["records"] == n and t["last_success_unix_ms"], t

    # Offset syncs: sampled source records translate to where they sit on the target.
    runs = offset_syncs(agg.bootstrap, "store1", topic)
    assert set(runs) == set(range(6)), runs.keys()
    for p, recs in src.items():
        for r in recs[:: max(1, len(recs) // 7)]:
            t_off = translate(runs[p], r.offset)
            assert t_off is not None, f"no run covers {topic}/{p}@{r.offset}: {runs[p]}"
            m = read_at(agg.bootstrap, target, p, t_off)
            assert m is not None and m.key() == r.key and m.value() == r.value, \
                f"{topic}/{p}@{r.offset} -> {target}/{p}@{t_off}: {m and (m.key(), m.offset())}"


def _steady_producer(bootstrap: str, topic: str, tag: str, stop: threading.Event,
                     rate_per_s: int = 2000, **extra):
    """Produces keyed records at a steady rate until `stop`; returns
    (records, delivery errors) through the returned dict once joined."""
    out = {"records": [], "errors": []}

    def run():
        p = producer(bootstrap, **extra)
        i = 0
        t0 = time.monotonic()
        while not stop.is_set():
            due = int((time.monotonic() - t0) * rate_per_s)
            while i < due:
                key = f"{tag}-{i:07d}".encode()
                out["records"].append(key)
                p.produce(topic, key=key, value=key * 3,
                          on_delivery=lambda e, m: out["errors"].append(e) if e else None)
                i += 1
            p.poll(0.01)
        assert p.flush(120) == 0
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, out


def _status_topic(sy) -> dict:
    return sy.status()["tee"][0]["topics"][0]


def test_hub_link_cut_loses_nothing_and_catches_up(site, site_behind_relay, switchyard):
    store = site()
    hub, link = site_behind_relay()
    topic = unique_name("pos")
    sy = multisite(
        switchyard,
        {"store1": store, "hub": hub},
        [{"name": "pos", "topics": {"exact": topic}, "site": "store1",
          "tee": [{"site": "hub", "naming": "{topic}-{site}"}]}],
    )
    create_topic(sy.bootstrap, topic, partitions=3)
    target = f"{topic}-store1"
    stop = threading.Event()
    th, out = _steady_producer(sy.bootstrap, topic, "cut", stop)
    wait_until(lambda: _status_topic(sy)["records"] > 2000, 60, "tee running before the cut")
    link.cut("reset")
    cut_at = time.monotonic()
    # While the link is down the tee reports it and the lag grows.
    wait_until(lambda: _status_topic(sy)["last_error"] is not None, 30, "tee reports the outage")
    wait_until(lambda: time.monotonic() - cut_at > 5, 10, "outage lasts 5 s")
    lag_at_restore = _status_topic(sy)["lag_records"]
    link.restore()
    restored_at = time.monotonic()
    stop.set()
    th.join(180)
    assert not out["errors"], f"producer saw errors during the hub outage: {out['errors'][:5]}"
    n = len(out["records"])
    wait_for_count(hub.bootstrap, target, n, timeout=120)
    caught_up = time.monotonic() - restored_at
    print(f"\nhub outage 5 s: lag {lag_at_restore} records at restore, "
          f"{n} records on the hub {caught_up:.1f}s after restore")
    report = compare_copies(read_partitions(store.bootstrap, topic, timeout=60),
                            read_partitions(hub.bootstrap, target, timeout=60))
    report.assert_ok("hub after the outage")
    samples, _ = sy.metrics()
    assert metric_sum(samples, "switchyard_tee_errors_total", route="pos", target="hub") > 0
    assert lag_at_restore > 0


def test_sigkill_mid_tee_then_restart_loses_and_duplicates_nothing(site, site_behind_relay, switchyard):
    store = site()
    hub, link = site_behind_relay()
    topic = unique_name("orders")
    routes = [{"name": "orders", "topics": {"exact": topic}, "site": "store1",
               "tee": [{"site": "hub"}]}]
    # Small fetches over a slow WAN link keep the tee well behind the
    # producer, so the kill lands mid-copy.
    sy = multisite(switchyard, {"store1": store, "hub": hub}, routes,
                   tee={"max_fetch_bytes": 16384})
    create_topic(sy.bootstrap, topic, partitions=4)
    n = 20_000
    link.set_delay(50)
    produce_keyed(sy.bootstrap, topic, n, tag="kill")
    wait_until(lambda: 0 < _status_topic(sy)["records"], 60, "tee started copying")
    copied_before = _status_topic(sy)["records"]
    sy.kill()
    assert copied_before < n, "the tee finished before the kill; the test proves nothing"
    link.set_delay(0)
    sy2 = switchyard(upstreams=[store], overrides=sy.config)
    wait_for_count(hub.bootstrap, topic, n, timeout=120)
    report = compare_copies(read_partitions(store.bootstrap, topic, timeout=60),
                            read_partitions(hub.bootstrap, topic, timeout=60))
    print(f"\nSIGKILL after {copied_before} of {n} teed: {report.summary()}")
    report.assert_ok("hub after SIGKILL and restart")
    assert sy2.status()["tee"][0]["topics"][0]["state"] == "running"


def test_sync_tee_acked_means_on_both_clusters(site, switchyard):
    a, b = site(), site()
    topic = unique_name("payments")
    sy = multisite(
        switchyard,
        {"a": a, "b": b},
        [{"name": "payments", "topics": {"exact": topic}, "site": "a",
          "tee": [{"site": "b", "mode": "sync"}]}],
    )
    create_topic(sy.bootstrap, topic, partitions=3)
    reports = produce_keyed(sy.bootstrap, topic, 3000, tag="sync")
    # No waiting: an ack means the record is on the target already.
    src = read_partitions(a.bootstrap, topic, timeout=60)
    dst = read_partitions(b.bootstrap, topic, timeout=60)
    acked = {(p, o) for _, p, o in reports.values()}
    assert acked == {(p, r.offset) for p, recs in src.items() for r in recs}
    compare_copies(src, dst).assert_ok("sync target right after the acks")


def test_sync_tee_returns_the_target_error(site, site_behind_relay, switchyard):
    a = site()
    b, link = site_behind_relay()
    topic = unique_name("payments")
    sy = multisite(
        switchyard,
        {"a": a, "b": b},
        [{"name": "payments", "topics": {"exact": topic}, "site": "a",
          "tee": [{"site": "b", "mode": "sync"}]}],
        tee={"sync_timeout_ms": 1500},
    )
    create_topic(sy.bootstrap, topic, partitions=1)
    produce_keyed(sy.bootstrap, topic, 10, tag="ok")
    link.cut("reset")
    p = producer(sy.bootstrap, **{"message.timeout.ms": 6000})
    errors = []
    p.produce(topic, key=b"k", value=b"v", on_delivery=lambda e, m: errors.append(e))
    left = p.flush(30)
    assert errors and errors[0] is not None, \
        f"a sync produce with the target down must fail (reports {errors}, {left} undelivered)"
    print(f"\nsync produce with the target down: {errors[0]}")
    link.restore()
    # The record is on the source; the tee still copies it once the target is back.
    wait_for_count(b.bootstrap, topic, 11, timeout=60)


def test_target_that_rejects_the_tee_does_not_stall_writes(site, switchyard):
    """The hub's copy of the topic has fewer partitions than the source: a
    partition-preserving tee cannot write it. Producers are unaffected, the
    error names target, topic and reason, and once the operator removes the
    bad topic the tee creates it properly and catches up."""
    store, hub = site(), site()
    topic = unique_name("orders")
    create_topic(hub.bootstrap, topic, partitions=1)
    sy = multisite(
        switchyard,
        {"store1": store, "hub": hub},
        [{"name": "orders", "topics": {"exact": topic}, "site": "store1", "tee": [{"site": "hub"}]}],
    )
    create_topic(sy.bootstrap, topic, partitions=3)
    produce_keyed(sy.bootstrap, topic, 500, tag="rej")  # asserts: no delivery errors
    t = wait_until(lambda: (s := _status_topic(sy))["last_error"] and s, 30, "tee reports the rejection")
    assert "partitions" in t["last_error"] and topic in t["last_error"], t["last_error"]
    samples, _ = sy.metrics()
    assert metric_sum(samples, "switchyard_tee_errors_total", route="orders", target="hub", reason="init") > 0
    # The operator fixes the target; the tee recovers by itself.
    hub_admin = admin_client(hub.bootstrap)
    hub_admin.delete_topics([topic])[topic].result(30)
    wait_for_count(hub.bootstrap, topic, 500, timeout=90)
    compare_copies(read_partitions(store.bootstrap, topic), read_partitions(hub.bootstrap, topic)).assert_ok(
        "hub after the target was fixed")
