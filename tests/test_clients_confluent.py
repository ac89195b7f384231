"""confluent-kafka (librdkafka 2.16) through Switchyard: produce, consume in a
group, commit, and resume from the committed offsets."""

from __future__ import annotations

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from helpers import (
    confluent_consume,
    confluent_consumer_conf,
    confluent_produce,
    confluent_wait_for_assignment,
    create_topic,
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
    "acks_all_idempotent": {"acks": "all", "enable.idempotence": True},
    "acks_1": {"acks": "1", "enable.idempotence": False},
    # No Produce response at all: the proxy must not wait for one.
    "acks_0": {"acks": "0", "enable.idempotence": False},
}


@pytest.mark.timeout(300, method="signal")
@pytest.mark.parametrize("mode", list(PRODUCER_MODES))
def test_produce_consume_commit_resume(switchyard, mode):
    sy = switchyard()
    topic = unique_name(f"cf-{mode.replace('_', '-')}")
    create_topic(sy.bootstrap, topic, PARTITIONS)
    acks0 = mode == "acks_0"

    producer = Producer(
        {
            "bootstrap.servers": sy.bootstrap,
            "linger.ms": 5,
            "message.timeout.ms": 60000,
            **PRODUCER_MODES[mode],
        }
    )
    records = make_records(RECORDS, tag=topic)
    reports = confluent_produce(producer, topic, records)
    partition_of = {k: p for k, (_, p, _) in reports.items()}
    offset_of = None if acks0 else {k: o for k, (_, _, o) in reports.items()}
    if offset_of is not None:
        unknown = [k for k, o in offset_of.items() if o is None or o < 0]
        assert not unknown, f"{len(unknown)} delivery reports without an offset with acks={PRODUCER_MODES[mode]['acks']}"

    group = unique_name("cf-group")
    # --- first consumer: everything exactly once, then commit -----------------
    c1 = Consumer(confluent_consumer_conf(sy.bootstrap, group))
    try:
        c1.subscribe([topic])
        got = confluent_consume(c1, RECORDS, timeout=120, context="first consumer")
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

        committed = c1.commit(asynchronous=False)
        errs = [tp for tp in committed if tp.error is not None]
        assert not errs, f"commit failed: {errs}"
        assert {tp.partition: tp.offset for tp in committed} == counts, (
            f"committed offsets {committed} != consumed counts {counts}"
        )
        seen = c1.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=15)
        assert {tp.partition: tp.offset for tp in seen} == counts, (
            f"committed offsets read back {seen} != consumed counts {counts}"
        )
    finally:
        c1.close()

    # --- second consumer, same group: resumes after the commit ----------------
    c2 = Consumer(confluent_consumer_conf(sy.bootstrap, group))
    try:
        c2.subscribe([topic])
        early: list = []
        confluent_wait_for_assignment(c2, 30, early)

        more = make_records(MORE, tag=f"{topic}-more")
        reports2 = confluent_produce(producer, topic, more)
        got2 = early + confluent_consume(c2, MORE, timeout=60, context="second consumer")

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
            expected_partition={k: p for k, (_, p, _) in reports2.items()},
            expected_offset=None if acks0 else {k: o for k, (_, _, o) in reports2.items()},
            context=f"{mode}, resumed consumer",
        )
    finally:
        c2.close()
        producer.flush(10)
