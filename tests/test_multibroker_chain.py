"""A multi-broker upstream: Switchyard in front of a second Switchyard.

Tansu cannot form a multi-broker cluster here (every process reports node id
111 and itself as the leader of every partition), so the upstream with several
brokers is the second Switchyard: three virtual brokers at three addresses,
partition leadership spread over them, coordinators hashed over them. The front
Switchyard must therefore split Produce, Fetch and ListOffsets per upstream
leader, merge the answers, and route group requests to the coordinator the
upstream names, with real clients on top.

    client -> front (cluster "front", 2 virtual nodes) -> back (3 virtual nodes) -> Tansu
"""

from __future__ import annotations

from confluent_kafka import Consumer, Producer, TopicPartition

from helpers import (
    confluent_consume,
    confluent_consumer_conf,
    confluent_produce,
    create_topic,
    make_records,
    metric_sum,
    unique_name,
    verify_exactly_once,
)

PARTITIONS = 6
RECORDS = 3000


def test_split_and_merge_across_upstream_brokers(switchyard):
    back = switchyard(cluster_id="back")
    front = switchyard(upstreams=[back.bootstrap], cluster_id="front", virtual_nodes=2)

    # The front sees the back's three virtual brokers as its upstream cluster.
    status = front.status()
    upstream_ports = sorted(b["port"] for b in status["sites"][0]["brokers"])
    assert upstream_ports == sorted(back.node_ports.values()), status

    topic = unique_name("chain")
    create_topic(front.bootstrap, topic, partitions=PARTITIONS)

    # Leaders as the front sees them upstream: spread over >1 broker, so every
    # multi-partition request below is split.
    from confluent_kafka.admin import AdminClient

    back_md = AdminClient({"bootstrap.servers": back.bootstrap}).list_topics(topic=topic, timeout=10)
    leaders = {p.id: p.leader for p in back_md.topics[topic].partitions.values()}
    assert len(set(leaders.values())) > 1, f"upstream leaders not spread: {leaders}"

    # Clients of the front see only the front's identities.
    front_md = AdminClient({"bootstrap.servers": front.bootstrap}).list_topics(topic=topic, timeout=10)
    assert front_md.cluster_id == "front"
    assert {f"{b.host}:{b.port}" for b in front_md.brokers.values()} == set(front.advertised.values())

    records = make_records(RECORDS, tag=topic)
    producer = Producer(
        {
            "bootstrap.servers": front.bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "batch.num.messages": 500,
        }
    )
    delivered = confluent_produce(producer, topic, records)
    expected_partition = {k: p for k, (_e, p, _o) in delivered.items()}
    expected_offset = {k: o for k, (_e, _p, o) in delivered.items()}
    assert len(set(expected_partition.values())) == PARTITIONS

    group = unique_name("chain-group")
    consumer = Consumer(confluent_consumer_conf(front.bootstrap, group))
    consumer.subscribe([topic])
    got = confluent_consume(consumer, RECORDS, timeout=90, context="through two proxies")
    verify_exactly_once(
        records,
        got,
        num_partitions=PARTITIONS,
        expected_partition=expected_partition,
        expected_offset=expected_offset,
        context="chained",
    )
    consumer.commit(asynchronous=False)
    committed = consumer.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
    consumer.close()
    per_partition = {p: sum(1 for g in got if g.partition == p) for p in range(PARTITIONS)}
    assert {tp.partition: tp.offset for tp in committed} == per_partition

    # ListOffsets through two proxies answers what the broker answers directly
    # (Kafka: the log end; Tansu's "latest" is the last batch's base offset +
    # 1, not the log end: a proxy must pass that through, not paper over it).
    via_front = Consumer(confluent_consumer_conf(front.bootstrap))
    direct = Consumer(confluent_consumer_conf(back.broker.bootstrap))
    for p in range(PARTITIONS):
        tp = TopicPartition(topic, p)
        assert via_front.get_watermark_offsets(tp, timeout=10) == direct.get_watermark_offsets(tp, timeout=10)
        lo, hi = via_front.get_watermark_offsets(tp, timeout=10)
        assert lo == 0 and 0 < hi <= per_partition[p], (p, lo, hi)
        if back.broker.kind == "kafka":
            assert hi == per_partition[p], f"Kafka's latest offset is the log end: partition {p} {hi}"
    via_front.close()
    direct.close()

    # Nothing went wrong on the way, in either proxy. (A client resetting its
    # socket on close counts as kind="client_io": the clients' business.)
    for proxy in (back, front):
        samples, _ = proxy.metrics()
        errors = [s for s in samples if s.name == "switchyard_errors_total" and s.value > 0]
        assert all(s.labels.get("kind") == "client_io" for s in errors), errors
