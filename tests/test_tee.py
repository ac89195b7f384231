"""Tee: records written through a route are copied to target clusters,
renamed, partition for partition, exactly once, with offset syncs."""

from __future__ import annotations

import time

from helpers import (
    admin_client,
    compare_copies,
    create_topic,
    metric_sum,
    read_partitions,
    unique_name,
    wait_for_count,
)
from multisite import multisite, offset_syncs, produce_keyed, read_at, translate

ORIGIN = "switchyard-origin"


def test_async_tee_to_aggregate_exactly_once(tansu, switchyard):
    store, agg = tansu(), tansu()
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
