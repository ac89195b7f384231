"""Helpers for multi-site tests: a Switchyard config over several Tansu sites,
offset-sync records, and reading one partition at an offset."""

from __future__ import annotations

import json
from typing import Any, Optional

from confluent_kafka import Consumer, Producer, TopicPartition

from helpers import confluent_produce, make_records


def multisite(switchyard, sites: dict, routes: list, default_site: Optional[str] = None,
              tee: Optional[dict] = None, extra: Optional[dict] = None, **kw):
    """Starts Switchyard over `sites` ({name: broker}) with `routes`."""
    overrides: dict[str, Any] = {
        "sites": [{"name": n, "bootstrap": [b.bootstrap]} for n, b in sites.items()],
        "default_site": default_site or next(iter(sites)),
        "routes": routes,
        # Fast polling and backoff keep tests short; defaults are for production.
        "tee": {"poll_interval_ms": 50, "retry_backoff_ms": 100, "max_retry_backoff_ms": 1000,
                **(tee or {})},
    }
    overrides.update(extra or {})
    first = next(iter(sites.values()))
    return switchyard(upstreams=[first], overrides=overrides, **kw)


def producer(bootstrap: str, **extra: Any) -> Producer:
    conf = {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 120000,
        "topic.metadata.refresh.interval.ms": 2000,
    }
    conf.update(extra)
    return Producer(conf)


def produce_keyed(bootstrap: str, topic: str, count: int, tag: str, **extra: Any):
    """Produces `count` varied keyed records (headers, explicit timestamps)
    through `bootstrap` and returns the delivery reports."""
    p = producer(bootstrap, **extra)
    return confluent_produce(p, topic, make_records(count, tag, max_value_bytes=200), timeout=180)


def offset_syncs(bootstrap: str, source_site: str, topic: str) -> dict[int, list[dict]]:
    """Offset-sync runs Switchyard persisted on a target, per partition (latest
    record per key, as compaction would keep)."""
    from helpers import read_partitions

    latest: dict[bytes, dict] = {}
    parts = read_partitions(bootstrap, "__switchyard_offset_syncs", timeout=30)
    for recs in parts.values():
        for r in recs:
            if r.value is None or r.key is None:
                continue
            v = json.loads(r.value)
            if v["source_site"] == source_site and v["source_topic"] == topic:
                latest[r.key] = v
    runs: dict[int, list[dict]] = {}
    for v in latest.values():
        runs.setdefault(v["partition"], []).append(v)
    for p in runs:
        runs[p].sort(key=lambda v: (v["source_offset"], -v["count"]))
    return runs


def translate(runs: list[dict], offset: int) -> Optional[int]:
    """The target offset of the source record at `offset`, from runs."""
    for r in runs:
        if r["source_offset"] <= offset < r["source_offset"] + r["count"]:
            return r["target_offset"] + (offset - r["source_offset"])
    return None


def read_at(bootstrap: str, topic: str, partition: int, offset: int, timeout: float = 10.0):
    """The record at (topic, partition, offset) or None."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader-unused",
                  "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            if m.offset() == offset:
                return m
            if m.offset() > offset:
                return None
        return None
    finally:
        c.close()
