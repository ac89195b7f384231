"""TLS on both sides of Switchyard, with real clients and a real broker.

One Apache Kafka node whose client listener is TLS and requires client
certificates, and one Switchyard in front of it (module-scoped: the tests
only add topics of their own): clients reach Switchyard over TLS with their
own certificates (mTLS required), and Switchyard reaches Kafka over TLS with
its own (the site's `tls`), health checks included (the proxy is ready only
if they pass). Certificates come from tests/tls_pki.py.

What a user checks: every client library (confluent-kafka/librdkafka,
kafka-python, kcat, the Java client) produces and consumes every record; a
client that speaks plaintext to the TLS port, has no certificate, an
untrusted or an expired one is refused at the handshake, writes nothing,
is counted, and costs the other clients nothing; a renewed certificate is
served without a restart while open connections keep working.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from helpers import TEARDOWN_GRACE, allocate_ports, metric_sum, start_switchyard, unique_name
from kafka_cluster import KafkaCluster, KafkaError, jvm_argv
from tls_pki import P12_PASSWORD, Pki, kafka_tls_listener, peer_certificate_serial

N = 200


class Secured:
    """The module's Kafka, Switchyard and certificates."""

    def __init__(self, pki: Pki, kafka: KafkaCluster, sy, server_cert, app, dir: Path):
        self.pki, self.kafka, self.sy, self.server_cert, self.app, self.dir = pki, kafka, sy, server_cert, app, dir

    def conf(self, client=None, **extra) -> dict:
        """librdkafka settings for a TLS client of Switchyard (with `client`'s
        certificate; default the app's)."""
        client = client or self.app
        c = {
            "bootstrap.servers": self.sy.bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(self.pki.ca_pem),
            "ssl.certificate.location": str(client.cert),
            "ssl.key.location": str(client.key),
            "ssl.endpoint.identification.algorithm": "https",
        }
        c.update(extra)
        return c

    def tls_handshake_failures(self) -> float:
        samples, _ = self.sy.metrics()
        return metric_sum(samples, "switchyard_errors_total", kind="tls_handshake")


@pytest.fixture(scope="module")
def secured(tmp_path_factory, switchyard_bin):
    dir = tmp_path_factory.mktemp("tls")
    pki = Pki(dir / "pki", "shop")
    broker_cert = pki.issue("kafka-broker", ["localhost", "127.0.0.1"])
    server_cert = pki.issue("switchyard", ["localhost", "127.0.0.1"])
    upstream_client = pki.issue("switchyard-upstream")
    app = pki.issue("orders-app")
    try:
        kafka = KafkaCluster(dir / "kafka", 1, allocate=allocate_ports, name="tls",
                             properties=kafka_tls_listener(broker_cert, pki, client_auth="required"))
        kafka.start()
    except KafkaError as e:
        pytest.fail(str(e))
    sy = None
    try:
        sy = start_switchyard(
            switchyard_bin, dir, [kafka], cluster_id="tls-test",
            overrides={
                "listen": {
                    # Clients verify the name they connect to: the advertised host.
                    "advertised_host": "localhost",
                    "tls": {"cert": str(server_cert.cert), "key": str(server_cert.key),
                            "client_auth": "required", "client_ca": str(pki.ca_pem)},
                },
                "sites": [{
                    "name": "local",
                    "bootstrap": [n.bootstrap for n in kafka.nodes],
                    "tls": {"ca": str(pki.ca_pem), "cert": str(upstream_client.cert),
                            "key": str(upstream_client.key)},
                }],
            },
        )
        yield Secured(pki, kafka, sy, server_cert, app, dir)
    finally:
        if sy is not None:
            sy.process.terminate(TEARDOWN_GRACE)
        kafka.kill()


def create(s: Secured, topic: str, partitions: int = 3) -> None:
    admin = AdminClient(s.conf())
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                        operation_timeout=30)[topic].result(timeout=30)


def produce_confluent(s: Secured, topic: str, values: list[bytes], **conf) -> int:
    p = Producer(s.conf(**{"enable.idempotence": True, "acks": "all", **conf}))
    acked, errors = [], []
    for v in values:
        p.produce(topic, v, on_delivery=lambda e, m: (errors if e else acked).append(e or m.value()))
    remaining = p.flush(30)
    assert remaining == 0 and not errors, f"{remaining} not delivered, errors {errors[:3]}"
    return len(acked)


def producer_with_one_record(s: Secured, value: bytes) -> tuple[Producer, str]:
    """A one-partition topic and an idempotent producer whose connections
    are open (one record acked)."""
    topic = unique_name("tls")
    create(s, topic, partitions=1)
    p = Producer(s.conf(**{"enable.idempotence": True, "acks": "all"}))
    p.produce(topic, value)
    assert p.flush(30) == 0
    return p, topic


def consume_confluent(s: Secured, topic: str, n: int, timeout: float = 60) -> list[bytes]:
    c = Consumer(s.conf(**{"group.id": unique_name("g"), "auto.offset.reset": "earliest"}))
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None, m.error()
            got.append(m.value())
    finally:
        c.close()
    return got


def java_tool(s: Secured, main: str, args: list[str], timeout: float = 120) -> list[dict]:
    """Runs one of Kafka's Verifiable* tools over TLS (PEM trust store, the
    app's PKCS#12 key store) and returns its JSON events."""
    props = s.dir / f"{main.rsplit('.', 1)[1]}-{time.monotonic_ns()}.properties"
    props.write_text("".join(f"{k}={v}\n" for k, v in {
        "security.protocol": "SSL",
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": s.pki.ca_pem,
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": s.app.p12,
        "ssl.keystore.password": P12_PASSWORD,
        "ssl.key.password": P12_PASSWORD,
    }.items()))
    argv = [*jvm_argv("128m"), main,
            "--bootstrap-server", s.sy.bootstrap, "--command-config", str(props), *args]
    r = subprocess.run(argv, capture_output=True, timeout=timeout)
    out = r.stdout.decode("utf-8", "replace")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert r.returncode == 0, f"{main} exited {r.returncode}:\n{out[-3000:]}\n{r.stderr.decode()[-2000:]}"
    return events


def test_every_client_library_over_tls_with_client_certificates(secured, kcat_bin):
    s = secured
    # confluent-kafka: idempotent acks=all producer, a consumer group.
    topic = unique_name("tls-confluent")
    create(s, topic)
    values = [f"c-{i}".encode() for i in range(N)]
    assert produce_confluent(s, topic, values) == N
    assert sorted(consume_confluent(s, topic, N)) == sorted(values)

    # kafka-python.
    from kafka import KafkaConsumer, KafkaProducer
    topic = unique_name("tls-kafka-python")
    create(s, topic)
    tls = dict(security_protocol="SSL", ssl_cafile=str(s.pki.ca_pem), ssl_certfile=str(s.app.cert),
               ssl_keyfile=str(s.app.key), ssl_check_hostname=True)
    p = KafkaProducer(bootstrap_servers=s.sy.bootstrap, acks="all", **tls)
    futures = [p.send(topic, f"k-{i}".encode()) for i in range(N)]
    for f in futures:
        f.get(timeout=30)
    p.close()
    c = KafkaConsumer(topic, bootstrap_servers=s.sy.bootstrap, group_id=unique_name("g"),
                      auto_offset_reset="earliest", consumer_timeout_ms=20000, **tls)
    got = []
    for m in c:
        got.append(m.value)
        if len(got) == N:
            break
    c.close()
    assert sorted(got) == sorted(f"k-{i}".encode() for i in range(N))

    # kcat.
    topic = unique_name("tls-kcat")
    create(s, topic)
    kc = ["-b", s.sy.bootstrap, "-X", "security.protocol=ssl", "-X", f"ssl.ca.location={s.pki.ca_pem}",
          "-X", f"ssl.certificate.location={s.app.cert}", "-X", f"ssl.key.location={s.app.key}"]
    lines = "".join(f"kc-{i}\n" for i in range(N)).encode()
    subprocess.run([kcat_bin, *kc, "-P", "-t", topic], input=lines, check=True, timeout=60)
    out = subprocess.run([kcat_bin, *kc, "-C", "-t", topic, "-o", "beginning", "-e", "-q"],
                         capture_output=True, check=True, timeout=60).stdout.decode()
    assert sorted(out.split()) == sorted(f"kc-{i}" for i in range(N))

    # The Java client (Kafka's own Verifiable tools: idempotent acks=all
    # producer by default, a consumer group).
    topic = unique_name("tls-java")
    create(s, topic)
    produced = java_tool(s, "org.apache.kafka.tools.VerifiableProducer",
                         ["--topic", topic, "--max-messages", str(N), "--throughput", "-1"])
    acked = [e for e in produced if e.get("name") == "producer_send_success"]
    failed = [e for e in produced if e.get("name") == "producer_send_error"]
    assert len(acked) == N and not failed, f"{len(acked)} acked, errors {failed[:3]}"
    consumed = java_tool(s, "org.apache.kafka.tools.VerifiableConsumer",
                         ["--topic", topic, "--group-id", unique_name("g"), "--max-messages", str(N),
                          "--reset-policy", "earliest", "--verbose"])
    records = [e for e in consumed if e.get("name") == "record_data"]
    assert sorted(e["value"] for e in records) == sorted(e["value"] for e in acked)
    assert s.tls_handshake_failures() == 0


def kafka_api_versions_frame() -> bytes:
    body = struct.pack(">hhi", 18, 0, 1) + struct.pack(">h", 4) + b"test"
    return struct.pack(">i", len(body)) + body


def test_bad_tls_clients_are_refused_and_cost_others_nothing(secured):
    s = secured
    # A good producer with its connections open before, during and after.
    good, topic = producer_with_one_record(s, b"before")
    before = s.tls_handshake_failures()

    # Plaintext to the TLS port: no Kafka answer, the connection is closed.
    with socket.create_connection((s.sy.host, s.sy.port), timeout=10) as raw:
        raw.sendall(kafka_api_versions_frame())
        raw.settimeout(10)
        try:
            reply = raw.recv(4096)
        except (ConnectionResetError, socket.timeout):
            reply = b""
        assert not reply.startswith(b"\x00\x00"), f"a plaintext client got a Kafka answer: {reply[:40]!r}"

    # Certificates that must be refused: none, another CA's, an expired one.
    stranger = Pki(s.dir / "other-pki", "stranger").issue("intruder")
    expired = s.pki.issue("old-app", expired=True)
    for name, client in [("no certificate", None), ("untrusted", stranger), ("expired", expired)]:
        ctx = ssl.create_default_context(cafile=str(s.pki.ca_pem))
        if client is not None:
            ctx.load_cert_chain(str(client.cert), str(client.key))
        with socket.create_connection((s.sy.host, s.sy.port), timeout=10) as raw:
            try:
                with ctx.wrap_socket(raw, server_hostname="localhost") as t:
                    # TLS 1.3: the server's verdict on the client certificate
                    # arrives with the first read.
                    t.sendall(kafka_api_versions_frame())
                    data = t.recv(4096)
                    refused = data == b""
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                refused = True
        assert refused, f"a client with {name} was served"
    # And through a real client library: librdkafka with the untrusted
    # certificate never gets metadata, and writes nothing.
    p = Producer(s.conf(stranger, **{"message.timeout.ms": 5000}))
    p.produce(topic, b"from-the-intruder")
    p.flush(10)
    with pytest.raises(KafkaException):
        AdminClient(s.conf(stranger)).list_topics(timeout=5)

    deadline = time.monotonic() + 10
    while s.tls_handshake_failures() < before + 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert s.tls_handshake_failures() >= before + 5, "refused handshakes are not counted"
    # The good producer's connection was never disturbed; the log holds
    # only what good clients wrote.
    good.produce(topic, b"after")
    assert good.flush(30) == 0
    assert sorted(consume_confluent(s, topic, 2, timeout=30)) == [b"after", b"before"]
    assert s.sy.running()


def test_a_renewed_certificate_is_served_without_a_restart(secured):
    s = secured
    p, topic = producer_with_one_record(s, b"old-cert")
    old = peer_certificate_serial("localhost", s.sy.port, s.pki.ca_pem, s.app)
    assert old == s.server_cert.serial
    renewed = s.pki.issue("switchyard", ["localhost", "127.0.0.1"])  # same files, new key and serial
    deadline = time.monotonic() + 30  # checked every 10 s
    served = old
    while served != renewed.serial and time.monotonic() < deadline:
        time.sleep(0.5)
        served = peer_certificate_serial("localhost", s.sy.port, s.pki.ca_pem, s.app)
    assert served == renewed.serial, "the renewed certificate is not served within 30 s"
    # The producer's connections (made with the old certificate) still work,
    # and new clients connect with the new one.
    p.produce(topic, b"new-cert")
    assert p.flush(30) == 0
    assert sorted(consume_confluent(s, topic, 2, timeout=30)) == [b"new-cert", b"old-cert"]
    assert s.sy.running()
