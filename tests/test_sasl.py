"""SASL terminated by Switchyard: PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512
against a credentials file made by `switchyard credentials`, with real
clients, in front of a plain Apache Kafka node (the session's shared one:
these tests only add topics of their own).

What a user checks: every client library authenticates with each mechanism
it offers and produces and consumes every record; a wrong password gets
SASL_AUTHENTICATION_FAILED and writes nothing; a request before
authentication, or after the session lifetime without re-authenticating
(KIP-368), closes the connection; the Java client re-authenticates by
itself and keeps working past the lifetime; TLS and SASL together
(SASL_SSL).
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from helpers import metric_sum, unique_name
from kafka_cluster import json_events, kafka_tool

pytestmark = [pytest.mark.shared_site, pytest.mark.brokers("kafka")]

N = 100
USERS = {"alice": "alice-pw-1", "bob": "bob-pw-2"}
MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def credentials(switchyard_bin, path):
    for user, password in USERS.items():
        r = subprocess.run([str(switchyard_bin), "credentials", "--file", str(path), "--user", user],
                           input=f"{password}\n".encode(), capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr.decode()
    text = path.read_text()
    assert all(p not in text for p in USERS.values()), "a password was written to the credentials file"


@pytest.fixture
def sasl_switchyard(switchyard, switchyard_bin, tmp_path):
    def start(lifetime_ms: int = 0, tls: dict | None = None):
        creds = tmp_path / "users.yaml"
        if not creds.exists():
            credentials(switchyard_bin, creds)
        listen = {"sasl": {"mechanisms": MECHANISMS, "credentials": str(creds),
                           "session_lifetime_ms": lifetime_ms}}
        if tls:
            listen.update({"advertised_host": "localhost", "tls": tls})
        return switchyard(overrides={"listen": listen})
    return start


def conf(sy, mechanism: str, user: str = "alice", password: str | None = None, **extra) -> dict:
    c = {"bootstrap.servers": sy.bootstrap, "security.protocol": "SASL_PLAINTEXT",
         "sasl.mechanism": mechanism, "sasl.username": user,
         "sasl.password": USERS[user] if password is None else password}
    c.update(extra)
    return c


def create(sy, topic: str, mechanism: str = "SCRAM-SHA-256", **extra) -> None:
    admin = AdminClient(conf(sy, mechanism, **extra))  # alive until the topic exists
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=-1)],
                        operation_timeout=30)[topic].result(timeout=30)


def round_trip_confluent(sy, mechanism: str, **extra) -> None:
    topic = unique_name(f"sasl-{mechanism.lower()}")
    create(sy, topic, mechanism, **extra)
    p = Producer(conf(sy, mechanism, **{"enable.idempotence": True, "acks": "all", **extra}))
    errors = []
    for i in range(N):
        p.produce(topic, f"{mechanism}-{i}".encode(), on_delivery=lambda e, m: e and errors.append(e))
    assert p.flush(30) == 0 and not errors, errors[:3]
    c = Consumer(conf(sy, mechanism, user="bob", **{"group.id": unique_name("g"),
                                                     "auto.offset.reset": "earliest", **extra}))
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + 60
    while len(got) < N and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None:
            assert m.error() is None, m.error()
            got.append(m.value())
    c.close()
    assert sorted(got) == sorted(f"{mechanism}-{i}".encode() for i in range(N))


def authentications(sy, result: str) -> float:
    samples, _ = sy.metrics()
    return metric_sum(samples, "switchyard_sasl_authentications_total", result=result)


def test_every_mechanism_with_every_client_library(sasl_switchyard, kcat_bin):
    sy = sasl_switchyard()
    for mechanism in MECHANISMS:
        round_trip_confluent(sy, mechanism)

    from kafka import KafkaConsumer, KafkaProducer
    for mechanism in MECHANISMS:
        topic = unique_name("sasl-kafka-python")
        create(sy, topic)
        auth = dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism,
                    sasl_plain_username="bob", sasl_plain_password=USERS["bob"])
        p = KafkaProducer(bootstrap_servers=sy.bootstrap, acks="all", **auth)
        for f in [p.send(topic, f"kp-{i}".encode()) for i in range(N)]:
            f.get(timeout=30)
        p.close()
        c = KafkaConsumer(topic, bootstrap_servers=sy.bootstrap, group_id=unique_name("g"),
                          auto_offset_reset="earliest", consumer_timeout_ms=20000, **auth)
        got = [m.value for _, m in zip(range(N), c)]
        c.close()
        assert sorted(got) == sorted(f"kp-{i}".encode() for i in range(N)), mechanism

    topic = unique_name("sasl-kcat")
    create(sy, topic)
    kc = ["-b", sy.bootstrap, "-X", "security.protocol=sasl_plaintext", "-X", "sasl.mechanisms=SCRAM-SHA-512",
          "-X", "sasl.username=alice", "-X", f"sasl.password={USERS['alice']}"]
    r = subprocess.run([kcat_bin, *kc, "-P", "-t", topic], input="".join(f"kc-{i}\n" for i in range(N)).encode(),
                       capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    out = subprocess.run([kcat_bin, *kc, "-C", "-t", topic, "-o", "beginning", "-e", "-q"],
                         capture_output=True, check=True, timeout=60).stdout.decode()
    assert sorted(out.split()) == sorted(f"kc-{i}" for i in range(N))
    assert authentications(sy, "failed") == 0
    assert authentications(sy, "ok") >= 9


def java_tool(tmp_path, sy, main: str, args: list[str], mechanism: str) -> list[dict]:
    module = "plain.PlainLoginModule" if mechanism == "PLAIN" else "scram.ScramLoginModule"
    return json_events(kafka_tool(main, sy.bootstrap, {
        "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": mechanism,
        "sasl.jaas.config": f"org.apache.kafka.common.security.{module} required "
                            f'username="alice" password="{USERS["alice"]}";'}, args, tmp_path))


def test_java_client_reauthenticates_past_the_session_lifetime(sasl_switchyard, tmp_path):
    # Sessions of 3 s; the Java producer runs ~10 s at 20 records/s and must
    # re-authenticate on its connections to keep going (KIP-368).
    sy = sasl_switchyard(lifetime_ms=3000)
    topic = unique_name("sasl-java")
    create(sy, topic)
    produced = java_tool(tmp_path, sy, "org.apache.kafka.tools.VerifiableProducer",
                         ["--topic", topic, "--max-messages", "200", "--throughput", "20"], "SCRAM-SHA-256")
    acked = [e for e in produced if e.get("name") == "producer_send_success"]
    failed = [e for e in produced if e.get("name") == "producer_send_error"]
    assert len(acked) == 200 and not failed, f"{len(acked)} acked, errors {failed[:3]}"
    consumed = java_tool(tmp_path, sy, "org.apache.kafka.tools.VerifiableConsumer",
                         ["--topic", topic, "--group-id", unique_name("g"), "--max-messages", "200",
                          "--reset-policy", "earliest", "--verbose"], "PLAIN")
    values = sorted(e["value"] for e in consumed if e.get("name") == "record_data")
    assert values == sorted(e["value"] for e in acked)
    # More authentications than connections: the producer re-authenticated.
    samples, _ = sy.metrics()
    assert authentications(sy, "ok") > metric_sum(samples, "switchyard_client_connections_total")
    assert authentications(sy, "failed") == 0


# A raw client for what no library does on purpose.

def _request(key: int, version: int, corr: int, body: bytes) -> bytes:
    header = struct.pack(">hhi", key, version, corr) + struct.pack(">h", 4) + b"test"
    return struct.pack(">i", len(header) + len(body)) + header + body


def _read(sock) -> bytes:
    head = b""
    while len(head) < 4:
        chunk = sock.recv(4 - len(head))
        if not chunk:
            return b""
        head += chunk
    (n,) = struct.unpack(">i", head)
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


def _string(s: bytes) -> bytes:
    return struct.pack(">h", len(s)) + s


def _plain_login(sock, user: str, password: str) -> int:
    """SaslHandshake v1 (PLAIN) then SaslAuthenticate v0; the error code."""
    sock.sendall(_request(17, 1, 1, _string(b"PLAIN")))
    resp = _read(sock)
    assert struct.unpack(">h", resp[4:6])[0] == 0, resp
    token = b"\0" + user.encode() + b"\0" + password.encode()
    sock.sendall(_request(36, 0, 2, struct.pack(">i", len(token)) + token))
    resp = _read(sock)
    return struct.unpack(">h", resp[4:6])[0]


METADATA_V1_ALL = _request(3, 1, 9, struct.pack(">i", -1))


def _closed(sock) -> bool:
    try:
        return _read(sock) == b""
    except (ConnectionResetError, socket.timeout):
        return True


def test_wrong_password_no_auth_and_expired_sessions_are_refused(sasl_switchyard):
    sy = sasl_switchyard(lifetime_ms=2000)
    topic = unique_name("sasl-bad")
    create(sy, topic)
    before = authentications(sy, "failed")

    # Wrong password through librdkafka: an authentication error, nothing written.
    errors = []
    p = Producer(conf(sy, "SCRAM-SHA-256", password="not-it", error_cb=errors.append,
                      **{"message.timeout.ms": 5000}))
    p.produce(topic, b"intruder")
    p.flush(10)
    assert any("Authentication failed" in str(e) or e.code() == -169 for e in errors), errors
    with pytest.raises(KafkaException):
        AdminClient(conf(sy, "PLAIN", password="not-it")).list_topics(timeout=5)
    assert authentications(sy, "failed") >= before + 2

    # Raw: a wrong password is SASL_AUTHENTICATION_FAILED (58), and the next
    # request closes the connection.
    with socket.create_connection((sy.host, sy.port), timeout=10) as s:
        assert _plain_login(s, "alice", "nope") == 58
        s.sendall(METADATA_V1_ALL)
        assert _closed(s), "a connection that failed to authenticate was served"
    # A request before authentication closes the connection.
    with socket.create_connection((sy.host, sy.port), timeout=10) as s:
        s.sendall(METADATA_V1_ALL)
        assert _closed(s), "a request before SASL authentication was served"
    # A session past its lifetime, without re-authenticating: served before,
    # closed after.
    with socket.create_connection((sy.host, sy.port), timeout=10) as s:
        assert _plain_login(s, "bob", USERS["bob"]) == 0
        s.sendall(METADATA_V1_ALL)
        assert _read(s) != b"", "an authenticated client was not served"
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            time.sleep(0.1)
        s.sendall(METADATA_V1_ALL)
        assert _closed(s), "a request after the session lifetime was served"

    # The topic holds nothing from any of them.
    c = Consumer(conf(sy, "PLAIN", **{"group.id": unique_name("g"), "auto.offset.reset": "earliest"}))
    c.subscribe([topic])
    end = time.monotonic() + 5
    while time.monotonic() < end:
        m = c.poll(0.5)
        assert m is None or m.error() is not None, f"a refused client wrote {m.value()!r}"
    c.close()


def test_sasl_over_tls(sasl_switchyard, tmp_path):
    from tls_pki import Pki

    pki = Pki(tmp_path / "pki", "sasl")
    server = pki.issue("switchyard", ["localhost", "127.0.0.1"])
    sy = sasl_switchyard(tls={"cert": str(server.cert), "key": str(server.key)})
    round_trip_confluent(sy, "SCRAM-SHA-512", **{"security.protocol": "SASL_SSL",
                                                 "ssl.ca.location": str(pki.ca_pem)})
