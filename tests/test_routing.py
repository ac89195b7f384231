"""Routes: topics of several sites behind one endpoint, renamed; groups on
one site; listener- and client-id-specific routes."""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaException, TopicPartition

from helpers import (
    admin_client,
    allocate_ports,
    confluent_consumer_conf,
    create_topic,
    read_partitions,
    unique_name,
    verify_exactly_once,
    confluent_consume,
    make_records,
    confluent_produce,
)
from multisite import multisite, producer
from helpers import wait_until


def test_topics_of_two_sites_behind_one_endpoint_renamed(site, switchyard):
    a, b = site(), site()
    orders, clicks = unique_name("orders"), unique_name("clicks")
    group = unique_name("billing-g")
    sy = multisite(
        switchyard,
        {"a": a, "b": b},
        [{"name": "orders", "topics": {"exact": orders}, "site": "b", "naming": "mm2",
          "groups": {"prefix": "billing-"}}],
    )
    create_topic(sy.bootstrap, orders, partitions=3)
    create_topic(sy.bootstrap, clicks, partitions=2)

    # Physical placement: orders on b as `b.<orders>`, clicks on a as is.
    on_a = admin_client(a.bootstrap).list_topics(timeout=10).topics
    on_b = admin_client(b.bootstrap).list_topics(timeout=10).topics
    assert f"b.{orders}" in on_b and orders not in on_b and orders not in on_a
    assert clicks in on_a and clicks not in on_b
    # Clients see virtual names only, with the right partition counts.
    md = admin_client(sy.bootstrap).list_topics(timeout=10)
    assert orders in md.topics and clicks in md.topics and f"b.{orders}" not in md.topics
    assert len(md.topics[orders].partitions) == 3 and len(md.topics[clicks].partitions) == 2

    recs_o = make_records(300, "o")
    recs_c = make_records(200, "c")
    p = producer(sy.bootstrap)
    confluent_produce(p, orders, recs_o)
    confluent_produce(p, clicks, recs_c)
    assert sum(len(v) for v in read_partitions(b.bootstrap, f"b.{orders}").values()) == 300
    assert sum(len(v) for v in read_partitions(a.bootstrap, clicks).values()) == 200

    # A group on b's coordinator consumes the renamed topic and commits under the
    # virtual name; the commit lands on b under the physical name.
    c = Consumer(confluent_consumer_conf(sy.bootstrap, group, **{"enable.auto.commit": False}))
    c.subscribe([orders])
    got = confluent_consume(c, 300, timeout=60, context="group on renamed topic")
    verify_exactly_once(recs_o, got)
    c.commit(asynchronous=False)
    committed = c.committed([TopicPartition(orders, i) for i in range(3)], timeout=10)
    c.close()
    assert sum(tp.offset for tp in committed) == 300, committed
    direct = Consumer({"bootstrap.servers": b.bootstrap, "group.id": group})
    phys = direct.committed([TopicPartition(f"b.{orders}", i) for i in range(3)], timeout=10)
    direct.close()
    assert sum(tp.offset for tp in phys) == 300, phys


def test_group_on_another_site_gets_a_clear_error(site, switchyard):
    a, b = site(), site()
    orders = unique_name("orders")
    sy = multisite(
        switchyard,
        {"a": a, "b": b},
        [{"name": "orders", "topics": {"exact": orders}, "site": "b"}],
    )
    create_topic(sy.bootstrap, orders, partitions=1)
    confluent_produce(producer(sy.bootstrap), orders, make_records(10, "x"))
    # The group lives on the default site a; its topic on b.
    c = Consumer(confluent_consumer_conf(sy.bootstrap, unique_name("g"), **{"enable.auto.commit": False}))
    try:
        c.assign([TopicPartition(orders, 0, 0)])
        assert c.poll(10) is not None
        try:
            res = c.commit(offsets=[TopicPartition(orders, 0, 5)], asynchronous=False)
            errors = [tp.error for tp in res if tp.error is not None]
        except KafkaException as e:
            errors = [e.args[0]]
        assert errors and "UNKNOWN_TOPIC_OR_PART" in str(errors[0]), errors
    finally:
        c.close()


def test_routes_by_listener_and_client_id(site, switchyard):
    a, b = site(), site()
    topic = unique_name("shared")
    internal_port = allocate_ports(4)
    sy = multisite(
        switchyard,
        {"a": a, "b": b},
        [
            {"name": "internal", "topics": {"exact": topic}, "listeners": ["internal"], "site": "b"},
            {"name": "pos", "topics": {"exact": topic}, "listeners": ["default"],
             "client_ids": {"prefix": "pos-"}, "site": "b", "naming": "{topic}.pos"},
        ],
        extra={"listeners": [{"name": "internal", "bind": f"127.0.0.1:{internal_port}"}]},
    )
    internal = f"127.0.0.1:{internal_port}"
    create_topic(sy.bootstrap, topic, partitions=1)  # default route: on a
    create_topic(internal, topic, partitions=1)  # internal listener: on b as is
    p_default = producer(sy.bootstrap, **{"client.id": "web-1"})
    p_internal = producer(internal, **{"client.id": "etl"})
    p_pos = producer(sy.bootstrap, **{"client.id": "pos-7"})
    from confluent_kafka.admin import NewTopic

    pos_admin = admin_client(sy.bootstrap, **{"client.id": "pos-admin"})
    pos_admin.create_topics([NewTopic(topic, 1)])[topic].result(30)  # the pos route: on b as `<topic>.pos`
    confluent_produce(p_default, topic, make_records(5, "d"))
    confluent_produce(p_internal, topic, make_records(7, "i"))
    confluent_produce(p_pos, topic, make_records(11, "p"))
    count = lambda bs, t: sum(len(v) for v in read_partitions(bs, t).values())  # noqa: E731
    assert count(a.bootstrap, topic) == 5
    assert count(b.bootstrap, topic) == 7
    assert count(b.bootstrap, f"{topic}.pos") == 11


def test_admin_apis_see_virtual_names_only(site, switchyard):
    """ListOffsets and DeleteTopics through a renaming route
    act on the physical topic and answer with the virtual name."""
    from confluent_kafka import TopicPartition as TP

    a, b = site(), site()
    topic = unique_name("ledger")
    sy = multisite(switchyard, {"a": a, "b": b},
                   [{"name": "ledger", "topics": {"exact": topic}, "site": "b", "naming": "{topic}-{site}"}])
    create_topic(sy.bootstrap, topic, partitions=2)
    phys = f"{topic}-b"
    confluent_produce(producer(sy.bootstrap), topic, make_records(40, "l"))
    admin = admin_client(sy.bootstrap)

    from confluent_kafka.admin import OffsetSpec
    offs = admin.list_offsets({TP(topic, 0): OffsetSpec.earliest()})
    for tp, f in offs.items():
        assert tp.topic == topic
        assert f.result(30).offset == 0

    b_admin = admin_client(b.bootstrap)
    if b.kind == "kafka":
        # DeleteRecords through the renaming route moves the physical
        # topic's start; latest is its log end. (Tansu panics on DeleteRecords.)
        latest = admin.list_offsets({TP(topic, p): OffsetSpec.latest() for p in range(2)})
        ends = {tp.partition: f.result(30).offset for tp, f in latest.items()}
        assert sum(ends.values()) == 40, f"latest offsets through the renaming route: {ends}"
        cut = ends[0] // 2
        done = admin.delete_records([TP(topic, 0, cut)])
        for tp, f in done.items():
            assert tp.topic == topic, f"DeleteRecords answered for {tp.topic}, not the virtual name"
            assert f.result(30).low_watermark == cut
        direct = b_admin.list_offsets({TP(phys, 0): OffsetSpec.earliest()})
        assert [f.result(30).offset for f in direct.values()] == [cut], "physical topic's start did not move"

    admin.delete_topics([topic])[topic].result(30)
    wait_until(lambda: phys not in b_admin.list_topics(timeout=10).topics, 30,
               "physical topic deleted on b")
