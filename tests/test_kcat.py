"""kcat 1.7.1 (Debian; bundles librdkafka 2.0.2) through Switchyard.

kcat cannot talk to Tansu directly: its librdkafka fails to parse Tansu's
ApiVersions v3 reply ("Read underflow"). Through Switchyard it has to work,
so these tests also cover the proxy answering older clients correctly.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from confluent_kafka import Consumer, TopicPartition

from helpers import (
    Got,
    confluent_consume,
    confluent_consumer_conf,
    create_topic,
    unique_name,
)

# Topics and groups of their own only: the session's shared Kafka node will do.
pytestmark = pytest.mark.shared_site

PARTITIONS = 3
RECORDS = 300
HEADERS = [("source", "kcat"), ("dup", "one"), ("dup", "two")]


def kcat(kcat_bin: str, *args: str, stdin: bytes | None = None, timeout: float = 60) -> str:
    """Runs kcat, returns stdout; fails with stderr on a non-zero exit or
    when it does not finish within `timeout` seconds (it is killed then)."""
    __tracebackhide__ = True
    argv = [kcat_bin, *args]
    try:
        res = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"{' '.join(argv)} did not finish within {timeout}s; stderr:\n"
            f"{(e.stderr or b'').decode('utf-8', 'replace')[-3000:]}"
        ) from None
    stderr = res.stderr.decode("utf-8", "replace")
    assert res.returncode == 0, f"{' '.join(argv)} exited {res.returncode}; stderr:\n{stderr[-3000:]}"
    return res.stdout.decode("utf-8", "replace")


def test_kcat_metadata_lists_topic_and_only_switchyard(switchyard, kcat_bin):
    sy = switchyard()
    topic = unique_name("kcat-md")
    create_topic(sy.bootstrap, topic, PARTITIONS)

    out = kcat(kcat_bin, "-b", sy.bootstrap, "-L", "-m", "15")

    brokers = {int(i): addr for i, addr in re.findall(r"broker (-?\d+) at (\S+)", out)}
    assert brokers == sy.advertised, f"kcat -L brokers {brokers} != Switchyard's virtual nodes {sy.advertised}:\n{out}"
    assert not re.search(rf":{sy.broker.port}\b", out), f"kcat -L shows the upstream broker port {sy.broker.port}:\n{out}"
    assert f'topic "{topic}" with {PARTITIONS} partitions' in out, f"topic {topic} missing from kcat -L:\n{out}"

    topic_out = kcat(kcat_bin, "-b", sy.bootstrap, "-L", "-t", topic, "-m", "15")
    leaders = {int(p): int(l) for p, l in re.findall(r"partition (\d+), leader (-?\d+)", topic_out)}
    assert set(leaders) == set(range(PARTITIONS)), f"partitions of {topic} in kcat -L -t: {topic_out}"
    bad = {p: l for p, l in leaders.items() if l not in sy.advertised}
    assert not bad, f"partition leaders that are not virtual nodes: {bad}\n{topic_out}"


def test_kcat_produce_and_consume_roundtrip(switchyard, kcat_bin):
    sy = switchyard()
    topic = unique_name("kcat-rt")
    create_topic(sy.bootstrap, topic, PARTITIONS)

    expected = {f"kcat-key-{i:04d}": f"value {i} " + "x" * (i % 50) for i in range(RECORDS)}
    lines = "".join(f"{k}:{v}\n" for k, v in expected.items()).encode()
    header_args = [a for name, value in HEADERS for a in ("-H", f"{name}={value}")]
    kcat(kcat_bin, "-b", sy.bootstrap, "-P", "-t", topic, "-K:", *header_args, "-m", "15", stdin=lines)

    out = kcat(kcat_bin, "-b", sy.bootstrap, "-C", "-t", topic, "-o", "beginning", "-e", "-J", "-q", "-m", "15")
    msgs = [json.loads(line) for line in out.splitlines() if line.strip()]

    keys = [m["key"] for m in msgs]
    missing = sorted(set(expected) - set(keys))
    dups = sorted({k for k in keys if keys.count(k) > 1})
    assert not missing and not dups and len(msgs) == RECORDS, (
        f"kcat consumed {len(msgs)} of {RECORDS}: {len(missing)} missing (e.g. {missing[:5]}), "
        f"{len(dups)} duplicated (e.g. {dups[:5]})"
    )
    want_headers = [x for pair in HEADERS for x in pair]
    wrong = [m for m in msgs if m["payload"] != expected[m["key"]] or m.get("headers") != want_headers]
    assert not wrong, f"{len(wrong)} records differ from what kcat produced, e.g. {wrong[:3]}"
    assert all(m.get("tstype") == "create" for m in msgs), f"timestamps not CreateTime: {msgs[:3]}"

    by_partition: dict[int, list[int]] = {}
    for m in msgs:
        by_partition.setdefault(m["partition"], []).append(m["offset"])
    assert len(by_partition) > 1, f"kcat's keyed records all went to partition(s) {sorted(by_partition)}"
    for p, offsets in by_partition.items():
        assert sorted(offsets) == list(range(len(offsets))), f"partition {p}: offsets not 0..n-1: {sorted(offsets)[:20]}"

    # A second client (librdkafka 2.16) reads exactly what kcat wrote.
    c = Consumer(confluent_consumer_conf(sy.bootstrap))
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        got: list[Got] = confluent_consume(c, RECORDS, timeout=60, settle=1.0, context="confluent reading kcat's records")
    finally:
        c.close()
    seen_by_confluent = sorted((g.key.decode(), g.value.decode(), g.partition, g.offset) for g in got)
    seen_by_kcat = sorted((m["key"], m["payload"], m["partition"], m["offset"]) for m in msgs)
    assert seen_by_confluent == seen_by_kcat, (
        f"confluent-kafka and kcat disagree about the topic: {len(seen_by_confluent)} vs {len(seen_by_kcat)} records"
    )
    assert all(
        list(g.headers) == [(k, v.encode()) for k, v in HEADERS] for g in got
    ), "confluent-kafka sees different headers than kcat wrote"
