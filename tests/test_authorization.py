"""Authorization in the proxy: the config's ACL rules enforced by Switchyard
for SASL principals, with real clients, in front of a plain Apache Kafka
node (the session's shared one; these tests only add topics of their own).

What a user checks: a principal writes and reads what its rules allow; a
produce to a topic it may not write gets TOPIC_AUTHORIZATION_FAILED and
nothing reaches the broker; a consumer in a group it may not use gets
GROUP_AUTHORIZATION_FAILED; a transactional id it may not use gets
TRANSACTIONAL_ID_AUTHORIZATION_FAILED; topic listings hide what it may not
describe; every decision is counted and denials are logged; the rules are
reloaded without a restart.
"""

from __future__ import annotations

import copy
import subprocess
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import to_yaml
from helpers import admin_reload, metric_sum, unique_name, wait_until
from kafka_cluster import json_events, kafka_tool

pytestmark = [pytest.mark.shared_site, pytest.mark.brokers("kafka")]

USERS = {"alice": "alice-pw-1", "bob": "bob-pw-2", "root": "root-pw-3"}
MECHANISM = "SCRAM-SHA-256"
OPEN, GROUPS, TXNS = "authz-open-", "authz-g-", "authz-tx-"

RULES = {
    "super_users": ["User:root"],
    "rules": [
        # alice: the open topics (read and write), its groups and
        # transactional ids.
        {"principals": ["User:alice"], "topics": {"prefix": OPEN}, "operations": ["read", "write"]},
        {"principals": ["User:alice", "User:bob"], "groups": {"prefix": GROUPS}, "operations": ["read"]},
        {"principals": ["User:alice"], "transactional_ids": {"prefix": TXNS}, "operations": ["write"]},
        # bob: reads the open topics, may not write them.
        {"principals": ["User:bob"], "topics": {"prefix": OPEN}, "operations": ["read"]},
    ],
}


@pytest.fixture
def guarded(switchyard, switchyard_bin, tmp_path):
    creds = tmp_path / "users.yaml"
    for user, password in USERS.items():
        r = subprocess.run([str(switchyard_bin), "credentials", "--file", str(creds), "--user", user],
                           input=f"{password}\n".encode(), capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr.decode()
    return switchyard(overrides={
        "listen": {"sasl": {"mechanisms": [MECHANISM], "credentials": str(creds)}},
        "authorization": RULES,
    })


def conf(sy, user: str, **extra) -> dict:
    c = {"bootstrap.servers": sy.bootstrap, "security.protocol": "SASL_PLAINTEXT",
         "sasl.mechanism": MECHANISM, "sasl.username": user, "sasl.password": USERS[user]}
    c.update(extra)
    return c


def create(sy, *topics: str) -> None:
    admin = AdminClient(conf(sy, "root"))  # alive until the topics exist
    futures = admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=-1) for t in topics],
                                  operation_timeout=30)
    for f in futures.values():
        f.result(timeout=30)


def produce(sy, user: str, topic: str, n: int, **extra) -> tuple[int, list[str]]:
    """Records acked and the delivery errors' names."""
    p = Producer(conf(sy, user, **{"acks": "all", "message.timeout.ms": 20000, **extra}))
    acked, errors = [0], []

    def done(err, _msg):
        if err is None:
            acked[0] += 1
        else:
            errors.append(err.name())
    for i in range(n):
        p.produce(topic, f"{user}-{i}".encode(), on_delivery=done)
    assert p.flush(40) == 0, "records left undelivered"
    return acked[0], errors


def read_all(sy, user: str, topic: str, expect: int, timeout: float = 60) -> list[bytes]:
    c = Consumer(conf(sy, user, **{"group.id": unique_name(GROUPS.rstrip("-")),
                                    "auto.offset.reset": "earliest", "enable.auto.commit": False}))
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None:
            assert m.error() is None, m.error()
            got.append(m.value())
    # Anything more would be a record that should not be there.
    end = time.monotonic() + 2
    while time.monotonic() < end:
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            got.append(m.value())
    c.close()
    return got


def decisions(sy, result: str, **labels) -> float:
    samples, _ = sy.metrics()
    return metric_sum(samples, "switchyard_authorization_decisions_total", result=result, **labels)


def java(tmp_path, sy, user: str, main: str, args: list[str]) -> str:
    return kafka_tool(main, sy.bootstrap, {
        "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": MECHANISM,
        "sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required "
                            f'username="{user}" password="{USERS[user]}";'}, args, tmp_path)


def test_denied_writes_groups_and_transactions_with_every_client_library(guarded, tmp_path, kcat_bin):
    sy = guarded
    open_topic, secret = unique_name(OPEN.rstrip("-")), unique_name("authz-secret")
    create(sy, open_topic, secret)

    # Allowed: alice writes, bob reads in a group of his.
    assert produce(sy, "alice", open_topic, 50) == (50, [])
    assert sorted(read_all(sy, "bob", open_topic, 50)) == sorted(f"alice-{i}".encode() for i in range(50))

    # bob may read the topic but not write it: the produce itself is
    # denied (his metadata shows the topic), and nothing is written.
    acked, errors = produce(sy, "bob", open_topic, 10, **{"enable.idempotence": False, "retries": 0})
    assert acked == 0 and set(errors) == {"TOPIC_AUTHORIZATION_FAILED"}, errors
    # alice may not even describe the secret topic.
    # (librdkafka fails a record it could not yet place on a partition of
    # a topic it may not describe with _UNKNOWN_PARTITION; direct too)
    acked, errors = produce(sy, "alice", secret, 10)
    assert acked == 0 and "TOPIC_AUTHORIZATION_FAILED" in errors, errors
    assert set(errors) <= {"TOPIC_AUTHORIZATION_FAILED", "_UNKNOWN_PARTITION"}, errors
    assert len(read_all(sy, "root", secret, 0, timeout=5)) == 0, "a denied record reached the broker"
    assert len(read_all(sy, "root", open_topic, 50)) == 50, "a denied record reached the broker"

    # A group she may not use.
    c = Consumer(conf(sy, "alice", **{"group.id": unique_name("payments"), "auto.offset.reset": "earliest"}))
    c.subscribe([open_topic])
    seen = []
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is not None:
            seen.append(m.error().name())
    c.close()
    assert "GROUP_AUTHORIZATION_FAILED" in seen, seen

    # A transactional id she may not use; then one she may, end to end.
    p = Producer(conf(sy, "alice", **{"transactional.id": unique_name("other")}))
    with pytest.raises(KafkaException) as e:
        p.init_transactions(20)
    assert e.value.args[0].name() == "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", e.value
    p = Producer(conf(sy, "alice", **{"transactional.id": unique_name(TXNS.rstrip("-"))}))
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(5):
        p.produce(open_topic, f"tx-{i}".encode())
    p.commit_transaction(30)

    # Listings hide what the principal may not describe; the super user
    # sees everything.
    alice_topics = AdminClient(conf(sy, "alice")).list_topics(timeout=20).topics
    assert open_topic in alice_topics and secret not in alice_topics
    root_topics = AdminClient(conf(sy, "root")).list_topics(timeout=20).topics
    assert {open_topic, secret} <= set(root_topics)
    # The operations a client is told it may do are its own under these
    # rules (not those of Switchyard's identity on the site).
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AclOperation
    alice_admin = AdminClient(conf(sy, "alice"))
    d = alice_admin.describe_topics(TopicCollection([open_topic]), include_authorized_operations=True,
                                    request_timeout=20)[open_topic].result(timeout=30)
    assert set(d.authorized_operations) == {AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE}, \
        d.authorized_operations
    cluster = alice_admin.describe_cluster(include_authorized_operations=True, request_timeout=20).result(timeout=30)
    assert not cluster.authorized_operations, cluster.authorized_operations

    # kafka-python.
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
    auth = dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism=MECHANISM)
    kp = KafkaProducer(bootstrap_servers=sy.bootstrap, acks="all", retries=0, max_block_ms=20000,
                       sasl_plain_username="bob", sasl_plain_password=USERS["bob"], **auth)
    with pytest.raises(TopicAuthorizationFailedError):
        kp.send(open_topic, b"kafka-python").get(timeout=30)
    kp.close()
    kc = KafkaConsumer(open_topic, bootstrap_servers=sy.bootstrap, group_id=unique_name("payments"),
                       sasl_plain_username="alice", sasl_plain_password=USERS["alice"], **auth)
    with pytest.raises(GroupAuthorizationFailedError):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            kc.poll(timeout_ms=500)
    kc.close()

    # kcat (librdkafka's CLI): the write fails and says why.
    r = subprocess.run([kcat_bin, "-b", sy.bootstrap, "-X", "security.protocol=sasl_plaintext",
                        "-X", f"sasl.mechanisms={MECHANISM}", "-X", "sasl.username=bob",
                        "-X", f"sasl.password={USERS['bob']}", "-P", "-t", open_topic],
                       input=b"kcat\n", capture_output=True, timeout=60)
    assert r.returncode != 0 and b"authorization failed" in r.stderr.lower(), r.stderr.decode()[-2000:]

    # The Java client: a denied send fails with TopicAuthorizationException;
    # the topic listing (AdminClient) hides the secret topic.
    out = java(tmp_path, sy, "bob", "org.apache.kafka.tools.VerifiableProducer",
               ["--topic", open_topic, "--max-messages", "3"])
    events = json_events(out)
    sent = [e for e in events if e.get("name") == "producer_send_success"]
    failed = [e for e in events if e.get("name") == "producer_send_error"]
    assert not sent and failed and all("TopicAuthorization" in e.get("exception", "") for e in failed), events
    listed = java(tmp_path, sy, "alice", "org.apache.kafka.tools.TopicCommand", ["--list"]).split()
    assert open_topic in listed and secret not in listed, listed

    # Still exactly what was allowed on the broker.
    values = read_all(sy, "root", open_topic, 55)
    assert sorted(values) == sorted([f"alice-{i}".encode() for i in range(50)] + [f"tx-{i}".encode() for i in range(5)])

    # Every decision counted; denials named in the log.
    assert decisions(sy, "deny", resource="topic", operation="write") >= 3
    # (the group and the transactional id are refused at FindCoordinator,
    # which needs DESCRIBE, as Kafka's is)
    assert decisions(sy, "deny", resource="group") >= 1
    assert decisions(sy, "deny", resource="transactional_id") >= 1
    assert decisions(sy, "allow", resource="topic", operation="write") >= 1
    log = sy.log_path.read_text(errors="replace")
    assert "authorization denied" in log and "User:bob" in log and open_topic in log


def test_rules_reload_without_a_restart(guarded):
    sy = guarded
    topic = unique_name(OPEN.rstrip("-"))
    create(sy, topic)
    acked, errors = produce(sy, "bob", topic, 5, **{"enable.idempotence": False, "retries": 0})
    assert acked == 0 and errors, errors

    # bob is allowed to write: a reload applies it, connections stay.
    cfg = copy.deepcopy(sy.config)
    cfg["authorization"]["rules"].append(
        {"principals": ["User:bob"], "topics": {"exact": topic}, "operations": ["write"]})
    sy.config_path.write_text(to_yaml(cfg))
    code, answer = admin_reload(sy.admin)
    assert code == 200 and answer["applied"], answer
    assert any(c.startswith("authorization:") for c in answer["changes"]), answer
    wait_until(lambda: produce(sy, "bob", topic, 5)[0] == 5, timeout=30,
               message="bob's write still denied after the reload")

    # A broken rule: refused with its key, the rules in force stay.
    broken = copy.deepcopy(cfg)
    broken["authorization"]["rules"].append(
        {"principals": ["bob"], "topics": {"exact": topic}, "operations": ["write"]})
    sy.config_path.write_text(to_yaml(broken))
    code, answer = admin_reload(sy.admin)
    assert code == 400 and any("authorization.rules[5].principals[0]" in e for e in answer["errors"]), answer
    assert produce(sy, "bob", topic, 1)[0] == 1
    assert produce(sy, "alice", topic, 1)[0] == 1



def test_certificate_principals_are_authorized_too(switchyard, tmp_path):
    """mTLS: the principal is read from the client certificate (its CN
    here), and the same rules apply to it."""
    from tls_pki import Pki

    pki = Pki(tmp_path / "pki", "authz")
    server = pki.issue("switchyard", ["localhost", "127.0.0.1"])
    app, other = pki.issue("orders-app"), pki.issue("intruder")
    sy = switchyard(overrides={
        "listen": {"advertised_host": "localhost",
                   "tls": {"cert": str(server.cert), "key": str(server.key), "client_auth": "required",
                           "client_ca": str(pki.ca_pem), "principal": "subject_cn"}},
        "authorization": {"rules": [
            {"principals": ["User:orders-app"], "topics": {"prefix": OPEN}, "operations": ["all"]},
            {"principals": ["User:orders-app"], "groups": {"prefix": GROUPS}, "operations": ["read"]},
            {"principals": ["User:orders-app"], "cluster": True, "operations": ["create"]},
        ]},
    })

    def tls(cert, **extra):
        return {"bootstrap.servers": sy.bootstrap, "security.protocol": "SSL",
                "ssl.ca.location": str(pki.ca_pem), "ssl.certificate.location": str(cert.cert),
                "ssl.key.location": str(cert.key), **extra}

    topic = unique_name(OPEN.rstrip("-"))
    admin = AdminClient(tls(app))
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=-1)],
                        operation_timeout=30)[topic].result(timeout=30)
    outcome: dict[str, list] = {"app": [], "intruder": []}
    for who, cert in (("app", app), ("intruder", other)):
        p = Producer(tls(cert, **{"acks": "all", "message.timeout.ms": 20000}))
        p.produce(topic, who.encode(), on_delivery=lambda e, m, who=who: outcome[who].append(e))
        assert p.flush(40) == 0
    assert outcome["app"] == [None], outcome
    assert [e.name() for e in outcome["intruder"]] == ["TOPIC_AUTHORIZATION_FAILED"], outcome
    c = Consumer(tls(app, **{"group.id": unique_name(GROUPS.rstrip("-")), "auto.offset.reset": "earliest"}))
    c.subscribe([topic])
    got, deadline = [], time.monotonic() + 30
    while time.monotonic() < deadline and len(got) < 2:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got.append(m.value())
        elif got and m is None:
            break
    c.close()
    assert got == [b"app"], got
    log = sy.log_path.read_text(errors="replace")
    assert "principal=User:intruder" in log
