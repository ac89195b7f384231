"""kafka-python 3.0 (a pure-Python protocol implementation) through
Switchyard: produce, consume in a group, commit, resume.

kafka-python notes:
  * api_version is left unset, so the client probes the broker (here: the
    proxy) with ApiVersions and picks versions itself, as users' code does.
  * kafka-python rejects null header values (only (str, bytes) pairs), so the
    records here have no null-valued headers; duplicate header keys, empty
    values and null record values are still covered.
  * kafka-python's KafkaProducer defaults to enable_idempotence=True, which
    requires acks='all'; it is switched off explicitly for acks=1 and 0.
"""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from helpers import (
    HEARTBEAT_INTERVAL_MS,
    MAX_POLL_INTERVAL_MS,
    SESSION_TIMEOUT_MS,
    create_topic,
    got_from_kafka_python,
    kafka_python_consume,
    make_records,
    unique_name,
    verify_exactly_once,
)

# Topics and groups of their own only: the session's shared Kafka node will do.
pytestmark = pytest.mark.shared_site

RECORDS = 10_000
MORE = 500
PARTITIONS = 3

PRODUCER_MODES = {
    "acks_all_idempotent": {"acks": "all", "enable_idempotence": True},
    "acks_1": {"acks": 1, "enable_idempotence": False},
    "acks_0": {"acks": 0, "enable_idempotence": False},
}


def _consumer(bootstrap: str, group: str, topic: str) -> KafkaConsumer:
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        max_poll_interval_ms=MAX_POLL_INTERVAL_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
    )
    c.subscribe([topic])
    return c


def _produce(producer: KafkaProducer, topic: str, records, timeout: float = 90.0):
    """Sends all records and returns {key: (partition, offset)} from the
    futures' RecordMetadata."""
    futures = [
        (
            r.key,
            producer.send(
                topic,
                key=r.key,
                value=r.value,
                headers=[(k, v) for k, v in r.headers],
                timestamp_ms=r.timestamp,
            ),
        )
        for r in records
    ]
    producer.flush(timeout=timeout)
    out = {}
    failures = []
    for key, fut in futures:
        try:
            md = fut.get(timeout=1)
            out[key] = (md.partition, md.offset)
        except Exception as e:  # noqa: BLE001 - collected and reported
            failures.append((key, repr(e)))
    assert not failures, f"{len(failures)} of {len(records)} sends failed, e.g. {failures[:5]}"
    return out


@pytest.mark.timeout(300, method="signal")
@pytest.mark.parametrize("mode", list(PRODUCER_MODES))
def test_produce_consume_commit_resume(switchyard, mode):
    sy = switchyard()
    topic = unique_name(f"kp-{mode.replace('_', '-')}")
    create_topic(sy.bootstrap, topic, PARTITIONS)
    acks0 = mode == "acks_0"

    producer = KafkaProducer(bootstrap_servers=sy.bootstrap, linger_ms=5, **PRODUCER_MODES[mode])
    try:
        records = make_records(RECORDS, tag=topic, null_header_values=False)
        meta = _produce(producer, topic, records)
        partition_of = {k: p for k, (p, _) in meta.items()}
        # With acks=0 there is no response, so RecordMetadata carries no real offset.
        offset_of = None if acks0 else {k: o for k, (_, o) in meta.items()}

        group = unique_name("kp-group")
        c1 = _consumer(sy.bootstrap, group, topic)
        try:
            got = kafka_python_consume(c1, RECORDS, timeout=120)
            by_partition = verify_exactly_once(
                records,
                got,
                num_partitions=PARTITIONS,
                expected_partition=partition_of,
                expected_offset=offset_of,
                context=f"{mode}, first consumer",
            )
            assert set(by_partition) == set(range(PARTITIONS)), (
                f"keyed records should spread over all {PARTITIONS} partitions, got {sorted(by_partition)}"
            )
            counts = {p: len(v) for p, v in by_partition.items()}
            c1.commit(timeout_ms=15000)
            committed = {p: c1.committed(TopicPartition(topic, p), timeout_ms=15000) for p in range(PARTITIONS)}
            assert committed == counts, f"committed offsets {committed} != consumed counts {counts}"
        finally:
            c1.close(autocommit=False, timeout_ms=10000)

        c2 = _consumer(sy.bootstrap, group, topic)
        try:
            early = []
            deadline = time.monotonic() + 30
            while not c2.assignment():
                assert time.monotonic() < deadline, "second consumer got no assignment within 30s"
                for msgs in c2.poll(timeout_ms=500).values():
                    early.extend(got_from_kafka_python(m) for m in msgs)

            more = make_records(MORE, tag=f"{topic}-more", null_header_values=False)
            meta2 = _produce(producer, topic, more)
            got2 = early + kafka_python_consume(c2, MORE, timeout=60)

            first_keys = {r.key for r in records}
            redelivered = [g for g in got2 if g.key in first_keys]
            assert not redelivered, (
                f"{len(redelivered)} records committed by the first consumer were delivered again "
                f"after restart, e.g. {[(g.key, g.partition, g.offset) for g in redelivered[:5]]}"
            )
            verify_exactly_once(
                more,
                got2,
                first_offsets=counts,
                num_partitions=PARTITIONS,
                expected_partition={k: p for k, (p, _) in meta2.items()},
                expected_offset=None if acks0 else {k: o for k, (_, o) in meta2.items()},
                context=f"{mode}, resumed consumer",
            )
        finally:
            c2.close(autocommit=False, timeout_ms=10000)
    finally:
        producer.close(timeout=10)
