"""Admin operations through Switchyard with confluent-kafka's AdminClient.

On Apache Kafka every answer is checked against what Kafka must answer:
ListOffsets by timestamp gives the first offset whose timestamp is at or
after it (end of log past the last one), `latest` is the log end offset
whatever the batching, max-timestamp names the record with the largest
timestamp, DescribeConfigs lists the topic's configs. Every answer is also
compared with the broker's own, asked directly (Switchyard is transparent).
On Tansu, which deviates (by timestamp always 0, latest = last batch's base
+ 1, no configs), only that comparison is asserted.
"""

from __future__ import annotations


import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupType,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import ConfigResource, NewTopic, OffsetSpec, ResourceType

from helpers import (
    admin_client,
    confluent_consume,
    confluent_consumer_conf,
    unique_name,
    wait_until,
)

# Topics and groups of their own only: the session's shared Kafka node will do.
pytestmark = pytest.mark.shared_site

PARTITIONS = 3
# Records per partition, each produced as its own batch (flush after every
# record) so that Tansu's "latest" offset equals the real log end offset.
PER_PARTITION = {0: 4, 1: 5, 2: 6}
BASE_TS = 1_700_000_000_000


def _ts(part: int, i: int) -> int:
    return BASE_TS + part * 1000 + i * 10


def _expected_for_timestamp(ts: int) -> dict[int, int]:
    """Kafka's answer: the first offset with a timestamp >= ts, else the log end."""
    out = {}
    for part, n in PER_PARTITION.items():
        out[part] = next((i for i in range(n) if _ts(part, i) >= ts), n)
    return out


def _list_offsets(admin, topic: str, spec) -> dict[int, int]:
    futs = admin.list_offsets(
        {TopicPartition(topic, p): spec for p in range(PARTITIONS)}, request_timeout=15
    )
    return {tp.partition: f.result(timeout=20).offset for tp, f in futs.items()}


def _produce_single_record_batches(bootstrap: str, topic: str) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "acks": "all"})
    errors = []
    for part, n in PER_PARTITION.items():
        for i in range(n):
            p.produce(
                topic,
                key=f"k{part}-{i}".encode(),
                value=f"v{part}-{i}".encode(),
                partition=part,
                timestamp=_ts(part, i),
                on_delivery=lambda err, msg: errors.append(err) if err else None,
            )
            assert p.flush(15) == 0, "record not delivered within 15s"
    assert not errors, f"delivery errors: {errors}"


@pytest.mark.timeout(180, method="signal")
def test_admin_operations_through_switchyard(switchyard):
    sy = switchyard()
    kafka = sy.broker.kind == "kafka"
    direct = admin_client(sy.broker.bootstrap)  # the broker asked directly
    admin = admin_client(sy.bootstrap)
    topic = unique_name("admin-ops")

    # --- create topic -------------------------------------------------------
    futs = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)], request_timeout=20)
    futs[topic].result(timeout=30)

    # list_topics shows it, with every partition led by a virtual node
    def listed():
        t = admin.list_topics(timeout=10).topics.get(topic)
        return t if t is not None and t.error is None and len(t.partitions) == PARTITIONS else None

    t = wait_until(listed, 20, f"{topic} not in list_topics through Switchyard")
    assert sorted(t.partitions) == list(range(PARTITIONS))
    assert all(p.leader in sy.advertised for p in t.partitions.values()), (
        f"leaders {[p.leader for p in t.partitions.values()]} are not virtual nodes {sorted(sy.advertised)}"
    )

    # creating it again reports Kafka's TOPIC_ALREADY_EXISTS to the client
    again = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)], request_timeout=20)
    with pytest.raises(KafkaException) as exc:
        again[topic].result(timeout=30)
    assert exc.value.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS, f"got {exc.value.args[0]}"

    # --- list offsets ---------------------------------------------------------
    # Kafka lists a new topic's leader in Metadata a moment before that broker
    # has made itself leader; until then it answers NOT_LEADER_OR_FOLLOWER,
    # through Switchyard as directly (passed through unchanged). Clients retry.
    def latest_when_led():
        try:
            return _list_offsets(admin, topic, OffsetSpec.latest())
        except KafkaException as e:
            if e.args[0].code() == KafkaError.NOT_LEADER_FOR_PARTITION:
                return None
            raise

    empty_latest = wait_until(latest_when_led, 20, f"ListOffsets of new topic {topic} still NOT_LEADER")
    assert empty_latest == {p: 0 for p in range(PARTITIONS)}, f"latest offsets of an empty topic: {empty_latest}"

    _produce_single_record_batches(sy.bootstrap, topic)

    earliest = _list_offsets(admin, topic, OffsetSpec.earliest())
    assert earliest == {p: 0 for p in range(PARTITIONS)}, f"earliest offsets: {earliest}"
    latest = _list_offsets(admin, topic, OffsetSpec.latest())
    assert latest == PER_PARTITION, f"latest offsets {latest} != records per partition {PER_PARTITION}"
    assert latest == _list_offsets(direct, topic, OffsetSpec.latest())

    for ts in (BASE_TS + 1000 + 25, BASE_TS + 2000 + 20, BASE_TS - 1, BASE_TS + 10**9):
        via_proxy = _list_offsets(admin, topic, OffsetSpec.for_timestamp(ts))
        via_direct = _list_offsets(direct, topic, OffsetSpec.for_timestamp(ts))
        assert via_proxy == via_direct, f"offsets for timestamp {ts}: proxy {via_proxy} != broker {via_direct}"
        if kafka:
            # Kafka answers -1 past the last timestamp; librdkafka reports
            # that as the log end for_timestamp callers expect.
            got = {p: (PER_PARTITION[p] if o < 0 else o) for p, o in via_proxy.items()}
            assert got == _expected_for_timestamp(ts), (
                f"offsets for timestamp {ts}: {via_proxy}, expected {_expected_for_timestamp(ts)}"
            )
    if kafka:
        # KIP-734: the offset of the record with the largest timestamp (the
        # last one here). Tansu closes the connection on this spec.
        max_ts = _list_offsets(admin, topic, OffsetSpec.max_timestamp())
        assert max_ts == {p: n - 1 for p, n in PER_PARTITION.items()}, f"max-timestamp offsets: {max_ts}"

    # Consumer.offsets_for_times goes through the same ListOffsets path of a
    # consumer (leader connections rather than the admin client's).
    ts = BASE_TS + 2000 + 15
    results = {}
    for name, bootstrap in (("proxy", sy.bootstrap), ("direct", sy.broker.bootstrap)):
        c = Consumer(confluent_consumer_conf(bootstrap))
        try:
            tps = c.offsets_for_times([TopicPartition(topic, p, ts) for p in range(PARTITIONS)], timeout=15)
            assert all(tp.error is None for tp in tps), f"offsets_for_times via {name}: {tps}"
            results[name] = {tp.partition: tp.offset for tp in tps}
        finally:
            c.close()
    assert results["proxy"] == results["direct"], f"offsets_for_times: {results}"
    if kafka:
        # -1: no record at or after ts in that partition (Kafka's answer)
        got = {p: (PER_PARTITION[p] if o < 0 else o) for p, o in results["proxy"].items()}
        assert got == _expected_for_timestamp(ts), f"offsets_for_times: {results}"

    # --- consumer group ---------------------------------------------------------
    group = unique_name("admin-group")
    total = sum(PER_PARTITION.values())
    c = Consumer(confluent_consumer_conf(sy.bootstrap, group))
    try:
        c.subscribe([topic])
        got = confluent_consume(c, total, timeout=60, settle=1.0, context="group consumer")
        assert len(got) == total, f"group consumer got {len(got)} of {total} records"
        c.commit(asynchronous=False)
    finally:
        c.close()

    listed_groups = admin.list_consumer_groups(request_timeout=15).result(timeout=20)
    assert not listed_groups.errors, f"list_consumer_groups errors: {listed_groups.errors}"
    assert group in {g.group_id for g in listed_groups.valid}, (
        f"{group} not in list_consumer_groups: {[g.group_id for g in listed_groups.valid]}"
    )

    def described():
        d = admin.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=20)
        return d if d.state.name == "EMPTY" else None

    desc = wait_until(described, 20, f"group {group} not EMPTY after its only consumer closed")
    assert desc.group_id == group
    assert desc.members == [], f"closed group still has members: {desc.members}"
    assert desc.coordinator.id in sy.advertised, f"coordinator {desc.coordinator} is not a virtual node"
    assert f"{desc.coordinator.host}:{desc.coordinator.port}" == sy.advertised[desc.coordinator.id], (
        f"coordinator {desc.coordinator} not at the advertised address of node {desc.coordinator.id}"
    )
    desc_direct = direct.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=20)
    assert (desc.state, desc.is_simple_consumer_group, desc.partition_assignor) == (
        desc_direct.state,
        desc_direct.is_simple_consumer_group,
        desc_direct.partition_assignor,
    ), f"describe_consumer_groups differs between proxy ({desc.__dict__}) and the broker ({desc_direct.__dict__})"
    # The group was formed with the classic protocol (JoinGroup), so Kafka
    # reports it as CLASSIC. Tansu answers ConsumerGroupDescribe (KIP-848) for
    # it and librdkafka then says CONSUMER; a proxy that passes that API
    # through shows Tansu's answer, one that doesn't offer it shows Kafka's.
    if kafka:
        assert desc.type == ConsumerGroupType.CLASSIC, f"group type {desc.type}"
    else:
        assert desc.type in (ConsumerGroupType.CLASSIC, desc_direct.type), f"group type {desc.type}"

    offsets = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=15)
    committed = offsets[group].result(timeout=20)
    assert {tp.partition: tp.offset for tp in committed.topic_partitions if tp.topic == topic} == PER_PARTITION, (
        f"committed offsets: {committed.topic_partitions}"
    )

    # --- describe configs -----------------------------------------------------
    res = ConfigResource(ResourceType.TOPIC, topic)
    cfg = admin.describe_configs([res], request_timeout=15)[res].result(timeout=20)
    cfg_direct = direct.describe_configs([res], request_timeout=15)[res].result(timeout=20)
    assert {k: v.value for k, v in cfg.items()} == {k: v.value for k, v in cfg_direct.items()}, (
        "describe_configs differs between proxy and the broker"
    )
    if kafka:
        assert cfg["cleanup.policy"].value == "delete", f"cleanup.policy: {cfg.get('cleanup.policy')}"
        assert "retention.ms" in cfg and "min.insync.replicas" in cfg, f"topic configs: {sorted(cfg)}"

    # --- delete topic ---------------------------------------------------------
    admin.delete_topics([topic], request_timeout=20)[topic].result(timeout=30)
    wait_until(
        lambda: topic not in admin.list_topics(timeout=10).topics,
        20,
        f"{topic} still listed through Switchyard after delete",
    )
    assert topic not in direct.list_topics(timeout=10).topics, f"{topic} still exists on the broker after delete"
