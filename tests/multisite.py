"""Helpers for multi-site tests: a Switchyard config over several sites,
offset-sync records, and reading one partition at an offset."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from confluent_kafka import Consumer, Producer, TopicPartition

from helpers import confluent_produce, make_records


def multisite(switchyard, sites: dict, routes: list, default_site: Optional[str] = None,
              tee: Optional[dict] = None, extra: Optional[dict] = None, **kw):
    """Starts Switchyard over `sites` ({name: broker}) with `routes`."""
    overrides: dict[str, Any] = {
        "sites": [{"name": n, "bootstrap": str(b.bootstrap).split(",")} for n, b in sites.items()],
        "default_site": default_site or next(iter(sites)),
        "routes": routes,
        # Fast polling and backoff keep tests short; defaults are for production.
        "tee": {"retry_backoff_ms": 100, "max_retry_backoff_ms": 1000,
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


# --------------------------------------------------------------------------
# Example configs (config/*.yaml), run as written with addresses substituted
# --------------------------------------------------------------------------

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
# Addresses the example configs are written with.
EXAMPLE_SITE_BOOTSTRAPS = ("127.0.0.1:19092", "127.0.0.1:19093")
EXAMPLE_LISTEN_BIND = "127.0.0.1:9092"
EXAMPLE_ADMIN_BIND = "127.0.0.1:9644"


def substitute_words(text: str, replacements: dict) -> str:
    """Replaces every key of `replacements` that stands as a whole word (not
    inside a longer run of letters and digits: `east` but not `least`,
    `store-17` but not `store-170`) in one pass, so a swap such as
    {"east": "west", "west": "east"} works. Fails if a key does not occur."""
    import re

    missing = [k for k in replacements
               if not re.search(rf"(?<![A-Za-z0-9]){re.escape(k)}(?![A-Za-z0-9])", text)]
    assert not missing, f"not found in the config text: {missing}"
    alts = "|".join(re.escape(k) for k in sorted(replacements, key=len, reverse=True))
    pattern = re.compile(rf"(?<![A-Za-z0-9])(?:{alts})(?![A-Za-z0-9])")
    return pattern.sub(lambda m: replacements[m.group(0)], text)


def _listen_value(text: str, key: str) -> Optional[str]:
    """`listen.<key>` of a block-style config, as a plain string."""
    import re

    block = re.search(r"^listen:[^\n]*\n((?:[ \t]+[^\n]*\n|[ \t]*\n)*)", text, re.M)
    if not block:
        return None
    m = re.search(rf"^[ \t]+{key}:[ \t]*([^\s#]+)", block.group(1), re.M)
    return m.group(1).strip("'\"") if m else None


def switchyard_from_file(switchyard, path, brokers: list, replace: Optional[dict] = None, **kw):
    """Starts Switchyard from an example config file as written, with only
    addresses (and whatever `replace` names) changed: the first site's
    bootstrap 127.0.0.1:19092 becomes brokers[0], 127.0.0.1:19093 brokers[1],
    the listen and admin binds get free ports. `replace` is applied in the
    same whole-word pass (e.g. {"store-17": "store-1"}, or
    {"east": "west", "west": "east"} to swap roles; a broker list in swapped
    order then gives the swapped bootstraps). `kw` goes to the fixture."""
    import re

    from helpers import allocate_ports

    text = (CONFIG_DIR / path).read_text()  # an absolute `path` stays as is
    vnodes = int(_listen_value(text, "virtual_nodes") or 3)
    bind = f"127.0.0.1:{allocate_ports(vnodes + 1)}"
    admin = f"127.0.0.1:{allocate_ports(1)}"
    subs = {EXAMPLE_LISTEN_BIND: bind, EXAMPLE_ADMIN_BIND: admin}
    # The examples list one quoted address per site; a site of several
    # Kafka nodes becomes several quoted items of that list.
    subs.update({addr: str(b.bootstrap).replace(",", '", "') for addr, b in zip(EXAMPLE_SITE_BOOTSTRAPS, brokers)})
    subs.update(replace or {})
    text = substitute_words(text, subs)
    cid = re.search(r"^cluster_id:[ \t]*([^\s#]+)", text, re.M)
    assert cid, f"{path}: no top-level cluster_id"
    listen = {"bind": bind, "virtual_nodes": vnodes}
    if _listen_value(text, "advertised_host"):
        listen["advertised_host"] = _listen_value(text, "advertised_host")
    return switchyard(upstreams=[brokers[0]], cluster_id=cid.group(1).strip("'\""),
                      overrides={"listen": listen, "admin": {"bind": admin}},
                      config_text=text, **kw)


def start_again(switchyard, sy, **kw):
    """Starts a stopped Switchyard again with the same config text (same
    ports, same sites)."""
    return switchyard(upstreams=sy.upstreams, cluster_id=sy.cluster_id,
                      overrides={"listen": dict(sy.config["listen"]), "admin": dict(sy.config["admin"])},
                      config_text=sy.config_path.read_text(), **kw)
