"""The virtual cluster clients see: only Switchyard's advertised addresses,
the configured cluster id, virtual node ids for controller, leaders and
coordinators, never the upstream broker."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from kafka import KafkaAdminClient

from helpers import (
    admin_client,
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

PARTITIONS = 3


def _assert_confluent_view(sy, topic: str, upstream_port: int, upstream_cluster_id: str) -> None:
    __tracebackhide__ = True
    md = admin_client(sy.bootstrap).list_topics(timeout=15)
    brokers = {b.id: f"{b.host}:{b.port}" for b in md.brokers.values()}
    assert brokers == sy.advertised, f"confluent list_topics().brokers {brokers} != virtual nodes {sy.advertised}"
    assert upstream_port not in {b.port for b in md.brokers.values()}, "upstream broker port visible to clients"
    assert md.cluster_id == sy.cluster_id, f"cluster id {md.cluster_id!r} != configured {sy.cluster_id!r}"
    assert md.cluster_id != upstream_cluster_id
    assert md.controller_id in sy.advertised, f"controller {md.controller_id} is not a virtual node"
    t = md.topics[topic]
    assert t.error is None and sorted(t.partitions) == list(range(PARTITIONS)), f"topic metadata: {t}"
    for p in t.partitions.values():
        assert p.leader in sy.advertised, f"partition {p.id} leader {p.leader} is not a virtual node"
        assert set(p.replicas) <= set(sy.advertised), f"partition {p.id} replicas {p.replicas}"
        assert set(p.isrs) <= set(sy.advertised), f"partition {p.id} isrs {p.isrs}"


@pytest.mark.timeout(120, method="signal")
def test_clients_see_only_the_virtual_cluster(switchyard, site, kcat_bin):
    upstream = site(cluster_id=unique_name("upstream-cluster"))
    sy = switchyard([upstream], cluster_id=unique_name("virtual-cluster"), virtual_nodes=3)
    topic = unique_name("vc")
    create_topic(sy.bootstrap, topic, PARTITIONS)

    # confluent-kafka
    _assert_confluent_view(sy, topic, upstream.port, upstream.cluster_id)

    # kafka-python (its own Metadata/DescribeCluster encoding)
    admin = KafkaAdminClient(bootstrap_servers=sy.bootstrap, request_timeout_ms=15000)
    try:
        cluster = admin.describe_cluster()
        kp_brokers = {b["broker_id"]: f"{b['host']}:{b['port']}" for b in cluster["brokers"]}
        assert kp_brokers == sy.advertised, f"kafka-python describe_cluster brokers {kp_brokers} != {sy.advertised}"
        assert cluster["cluster_id"] == sy.cluster_id, f"kafka-python cluster id {cluster['cluster_id']!r}"
        assert cluster["controller_id"] in sy.advertised, f"kafka-python controller {cluster['controller_id']}"
        [desc] = admin.describe_topics([topic])
        assert desc["error_code"] == 0, desc
        leaders = {p["partition_index"]: p["leader_id"] for p in desc["partitions"]}
        assert set(leaders) == set(range(PARTITIONS)), desc
        assert set(leaders.values()) <= set(sy.advertised), f"kafka-python sees leaders {leaders}"
        for p in desc["partitions"]:
            assert set(p["replica_nodes"]) <= set(sy.advertised), p
            assert set(p["isr_nodes"]) <= set(sy.advertised), p
        # the cluster view kafka-python's network client keeps internally
        kp_internal = {b.node_id: f"{b.host}:{b.port}" for b in admin._client.cluster.brokers()}
        assert kp_internal == sy.advertised, f"kafka-python cluster.brokers() {kp_internal}"
    finally:
        admin.close()

    # kcat -L -J
    res = subprocess.run(
        [kcat_bin, "-b", sy.bootstrap, "-L", "-J", "-m", "15"], capture_output=True, timeout=60
    )
    assert res.returncode == 0, f"kcat -L failed: {res.stderr.decode(errors='replace')[-2000:]}"
    raw = res.stdout.decode()
    md = json.loads(raw)
    kc_brokers = {b["id"]: b["name"] for b in md["brokers"]}
    assert kc_brokers == sy.advertised, f"kcat brokers {kc_brokers} != {sy.advertised}"
    assert md["controllerid"] in sy.advertised, f"kcat controller {md['controllerid']}"
    [kt] = [t for t in md["topics"] if t["topic"] == topic]
    assert {p["partition"] for p in kt["partitions"]} == set(range(PARTITIONS)), kt
    assert all(p["leader"] in sy.advertised for p in kt["partitions"]), kt
    assert not re.search(rf":{upstream.port}\b", raw), f"kcat -L output mentions the upstream port {upstream.port}"


@pytest.mark.timeout(120, method="signal")
def test_group_coordinator_is_a_virtual_node(switchyard):
    sy = switchyard()
    topic = unique_name("vc-coord")
    create_topic(sy.bootstrap, topic, PARTITIONS)
    group = unique_name("vc-group")
    c = Consumer(confluent_consumer_conf(sy.bootstrap, group))
    try:
        c.subscribe([topic])
        confluent_wait_for_assignment(c, 30)
        c.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    finally:
        c.close()
    admin = admin_client(sy.bootstrap)  # keep a reference until the future resolves
    desc = admin.describe_consumer_groups([group], request_timeout=15)[group].result(timeout=20)
    node = desc.coordinator
    assert node.id in sy.advertised, f"coordinator {node.id} is not a virtual node ({sorted(sy.advertised)})"
    assert f"{node.host}:{node.port}" == sy.advertised[node.id], f"coordinator address {node.host}:{node.port}"
    assert node.port != sy.broker.port


@pytest.mark.timeout(120, method="signal")
def test_advertised_host_and_node_count_are_configurable(switchyard):
    """advertised_host replaces the bind host in metadata, virtual_nodes sets
    how many brokers clients see, and clients can use those addresses."""
    sy = switchyard(virtual_nodes=5, overrides={"listen": {"advertised_host": "localhost"}})
    topic = unique_name("vc-adv")
    create_topic(sy.bootstrap, topic, PARTITIONS)
    md = admin_client(sy.bootstrap).list_topics(timeout=15)
    brokers = {b.id: f"{b.host}:{b.port}" for b in md.brokers.values()}
    want = {i: f"localhost:{sy.port + 1 + i}" for i in range(5)}
    assert brokers == want, f"brokers {brokers} != {want}"

    records = make_records(200, tag=topic)
    producer = Producer({"bootstrap.servers": sy.bootstrap, "acks": "all", "linger.ms": 5})
    reports = confluent_produce(producer, topic, records)
    c = Consumer(confluent_consumer_conf(sy.bootstrap))
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        got = confluent_consume(c, len(records), timeout=60, settle=1.0, context="via localhost addresses")
    finally:
        c.close()
    verify_exactly_once(
        records,
        got,
        num_partitions=PARTITIONS,
        expected_partition={k: p for k, (_, p, _) in reports.items()},
        expected_offset={k: o for k, (_, _, o) in reports.items()},
        context="advertised_host=localhost",
    )
