"""The Apache Kafka harness (kafka_cluster.py) fails clearly: a port taken,
no Java, a node that cannot start — each an error naming what and why, with
the broker's own words where it has any. And a node comes back on its ports
with its data after a SIGKILL."""

from __future__ import annotations

import os
import socket

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from helpers import allocate_ports, create_topic, unique_name
from kafka_cluster import KafkaCluster, KafkaError, java_bin


def test_a_taken_port_is_named(tmp_path):
    port = allocate_ports(1)
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        cluster = KafkaCluster(tmp_path / "k", 1, ports=[port], allocate=allocate_ports)
        with pytest.raises(KafkaError, match=rf"port {port} is taken"):
            cluster.start()
    assert not cluster.running()


def test_missing_java_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KafkaError, match=r"java not found .*Java 17"):
        java_bin()
    with pytest.raises(KafkaError, match=r"java not found"):
        KafkaCluster(tmp_path / "k", 1, allocate=allocate_ports)


def test_missing_jars_are_named(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_LIBS", str(tmp_path / "nothing-here"))
    with pytest.raises(KafkaError, match=r"Apache Kafka is not installed: .*scripts/setup.sh"):
        KafkaCluster(tmp_path / "k", 1, allocate=allocate_ports)


@pytest.mark.timeout(120, method="signal")
def test_a_node_that_cannot_start_reports_the_brokers_words(tmp_path):
    # A broker property Kafka refuses at start-up.
    cluster = KafkaCluster(tmp_path / "k", 1, allocate=allocate_ports, properties={"num.io.threads": "0"})
    with pytest.raises(KafkaError) as exc:
        cluster.start(timeout=60)
    text = str(exc.value)
    assert "kafka node 1" in text and "num.io.threads" in text, text
    assert not cluster.running(), "a node that failed to start is left running"


@pytest.mark.timeout(150, method="signal")
def test_a_killed_node_restarts_with_its_data(kafka):
    cluster = kafka()
    topic = unique_name("harness")
    create_topic(cluster.bootstrap, topic, 1)
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all"})
    for i in range(10):
        p.produce(topic, value=str(i).encode())
    assert p.flush(30) == 0
    pid = cluster.nodes[0].pid
    cluster.kill()
    assert not cluster.running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    cluster.restart()
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": unique_name("g"),
                  "enable.auto.commit": False})
    try:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
    finally:
        c.close()
    assert (lo, hi) == (0, 10), f"after the restart the log is {lo}..{hi}, expected 0..10"
