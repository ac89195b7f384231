"""Switchyard authenticating to its sites: SASL over TLS (SASL_SSL), with a
real broker and real clients.

One Apache Kafka node (module-scoped) whose client listener is SASL_SSL
with PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 and OAUTHBEARER enabled, SCRAM
users created when the node is formatted (as KRaft keeps them), and KIP-368
session limits (`connections.max.reauth.ms`): every connection must
authenticate again within seconds or the broker closes it. Switchyard's
clients speak plaintext to it; only the site side is secured.

What an operator checks: with each mechanism (passwords from an environment
variable or a file, tokens from a file or a command) clients produce and
consume every record through Switchyard; Switchyard's connections outlive
no session (clients keep working across many session ends, nothing
re-sent twice); a wrong password makes Switchyard not ready, says why in its
log and in a metric, and never disturbs the broker for others; `check`
names a missing secret's key; and an active-passive route between this
site and a second secured one (its own CA, user and mechanism) tees every
record across and fails over with the group's place kept.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from failover import FAILOVER_SETTINGS, failover
from helpers import TEARDOWN_GRACE, allocate_ports, http_get, metric_sum, start_switchyard, unique_name, wait_until
from kafka_cluster import KafkaCluster, KafkaError
from tls_pki import Pki, kafka_tls_listener

pytestmark = pytest.mark.brokers("kafka")

# Each connection's SASL session lasts this long on the broker (KIP-368).
REAUTH_MS = 4000
USERS = {"SCRAM-SHA-256": ("sy-256", "pw-256-secret"), "SCRAM-SHA-512": ("sy-512", "pw-512-secret")}
PLAIN_USER = ("sy-plain", "plain-secret")
EXAMPLE_USER = ("switchyard-dc1", "dc1-secret-512")


def unsecured_jwt(sub: str, lifetime_s: int = 3600) -> str:
    """A token Kafka's default (unsecured) OAUTHBEARER validator accepts."""
    def b64(d: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    now = int(time.time())
    return f"{b64({'alg': 'none'})}.{b64({'sub': sub, 'iat': now, 'exp': now + lifetime_s})}."


def kafka_sasl_ssl_listener(server, pki: Pki) -> dict[str, str]:
    p = "listener.name.client."
    props = kafka_tls_listener(server, pki, client_auth="none")
    props.update({
        "listener.security.protocol.map": "CLIENT:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512,OAUTHBEARER",
        p + "plain.sasl.jaas.config": "org.apache.kafka.common.security.plain.PlainLoginModule required "
                                      f'user_{PLAIN_USER[0]}="{PLAIN_USER[1]}";',
        p + "scram-sha-256.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        p + "scram-sha-512.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        p + "oauthbearer.sasl.jaas.config":
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;",
        "connections.max.reauth.ms": str(REAUTH_MS),
    })
    return props


class Site:
    def __init__(self, kafka: KafkaCluster, pki: Pki, dir: Path, switchyard_bin: Path):
        self.kafka, self.pki, self.dir, self.bin = kafka, pki, dir, switchyard_bin
        self.started: list = []

    def site(self, sasl: dict) -> dict:
        return {
            "name": "secured",
            "bootstrap": [n.bootstrap for n in self.kafka.nodes],
            "tls": {"ca": str(self.pki.ca_pem)},
            "sasl": sasl,
        }

    def switchyard(self, sasl: dict, **kw):
        sy = start_switchyard(self.bin, self.dir, [self.kafka], index=len(self.started) + 1,
                              cluster_id="site-sasl", overrides={"sites": [self.site(sasl)]},
                              launched=self.started.append, **kw)
        return sy

    def secret(self, name: str, text: str) -> str:
        path = self.dir / name
        path.write_text(text + "\n")
        return str(path)


@pytest.fixture(scope="module")
def secured(tmp_path_factory, switchyard_bin):
    dir = tmp_path_factory.mktemp("site-sasl")
    pki = Pki(dir / "pki", "shop")
    broker_cert = pki.issue("kafka-broker", ["localhost", "127.0.0.1"])
    scram = [f"--add-scram={mech}=[name={u},password={pw}]" for mech, (u, pw) in USERS.items()]
    # The user config/secured.yaml authenticates as.
    scram.append(f"--add-scram=SCRAM-SHA-512=[name={EXAMPLE_USER[0]},password={EXAMPLE_USER[1]}]")
    try:
        kafka = KafkaCluster(dir / "kafka", 1, allocate=allocate_ports, name="sasl",
                             properties=kafka_sasl_ssl_listener(broker_cert, pki), format_args=scram)
        kafka.start()
    except KafkaError as e:
        pytest.fail(str(e))
    site = Site(kafka, pki, dir, switchyard_bin)
    try:
        yield site
    finally:
        for sy in site.started:
            sy.process.terminate(TEARDOWN_GRACE)
        kafka.kill()


def roundtrip(sy, n: int = 200, seconds: float = 0.0) -> None:
    """Creates a topic through Switchyard, produces `n` records with an
    idempotent producer (spread over `seconds`), consumes them with a group,
    and checks every record arrived once, in order per partition."""
    topic = unique_name("sasl")
    admin = AdminClient({"bootstrap.servers": sy.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)],
                        operation_timeout=30)[topic].result(timeout=30)
    p = Producer({"bootstrap.servers": sy.bootstrap, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 5})
    acked, errors = [], []
    for i in range(n):
        p.produce(topic, key=str(i % 7).encode(), value=f"v-{i:05d}".encode(),
                  on_delivery=lambda e, m: (errors if e else acked).append(e or (m.partition(), m.offset(), m.value())))
        p.poll(0)
        if seconds:
            time.sleep(seconds / n)
    assert p.flush(60) == 0, "records not delivered"
    assert not errors, f"produce errors: {errors[:3]}"
    c = Consumer({"bootstrap.servers": sy.bootstrap, "group.id": unique_name("g"),
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got.append((m.partition(), m.offset(), m.value()))
    finally:
        c.close()
    assert sorted(got) == sorted(acked), f"consumed {len(got)} of {len(acked)} acked"
    assert sorted(v for _, _, v in got) == [f"v-{i:05d}".encode() for i in range(n)], "a record lost or twice"


def auths(sy, result: str) -> float:
    samples, _ = sy.metrics()
    return metric_sum(samples, "switchyard_upstream_sasl_authentications_total", result=result)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("how", ["PLAIN password_env", "SCRAM-SHA-256 password_file",
                                 "SCRAM-SHA-512 password_file", "OAUTHBEARER token_file",
                                 "OAUTHBEARER token_command"])
def test_each_mechanism_carries_client_traffic_to_a_sasl_ssl_site(secured, how, monkeypatch):
    mechanism, source = how.split()
    sasl: dict = {"mechanism": mechanism}
    if mechanism == "PLAIN":
        monkeypatch.setenv("SY_SITE_PASSWORD", PLAIN_USER[1])
        sasl |= {"username": PLAIN_USER[0], "password_env": "SY_SITE_PASSWORD"}
    elif mechanism.startswith("SCRAM"):
        user, pw = USERS[mechanism]
        sasl |= {"username": user, "password_file": secured.secret(f"{mechanism}.pw", pw)}
    elif source == "token_file":
        sasl |= {"token_file": secured.secret("token.jwt", unsecured_jwt("switchyard"))}
    else:
        sasl |= {"token_command": ["cat", secured.secret("token-cmd.jwt", unsecured_jwt("switchyard"))]}
    sy = secured.switchyard(sasl)
    roundtrip(sy)
    assert auths(sy, "ok") >= 2, "control, health and client connections all authenticate"
    assert auths(sy, "failed") == 0
    log = sy.process.log_path.read_text()
    for secret in (PLAIN_USER[1], *(pw for _, pw in USERS.values())):
        assert secret not in log, "a password in the log"


@pytest.mark.timeout(240)
def test_connections_are_renewed_before_the_broker_ends_their_session(secured):
    """The broker ends each session after REAUTH_MS; a client producing and
    consuming through Switchyard for several times that long sees every
    record once and no error: Switchyard opens new connections in time and
    lets the old ones finish what they carry."""
    user, pw = USERS["SCRAM-SHA-512"]
    sy = secured.switchyard({"mechanism": "SCRAM-SHA-512", "username": user,
                             "password_file": secured.secret("renew.pw", pw)})
    before = auths(sy, "ok")
    roundtrip(sy, n=300, seconds=3 * REAUTH_MS / 1000)
    renewed = auths(sy, "ok") - before
    assert renewed >= 3, f"only {renewed} new authentications over three session lifetimes"
    samples, _ = sy.metrics()
    closed = metric_sum(samples, "switchyard_upstream_broker_failures_total", reason="closed")
    assert closed == 0, "the broker closed a connection Switchyard still used (session expired)"


@pytest.mark.timeout(180)
def test_a_wrong_password_keeps_switchyard_unready_and_says_why(secured):
    user, _ = USERS["SCRAM-SHA-256"]
    sy = secured.switchyard({"mechanism": "SCRAM-SHA-256", "username": user,
                             "password_file": secured.secret("wrong.pw", "not-the-password")},
                            wait_ready=False)
    wait_until(lambda: auths(sy, "failed") > 0, 30, "failed authentications are counted")
    code, _ = http_get(sy.admin + "/readyz", timeout=2)
    assert code != 200, "ready without being able to authenticate to its only site"
    log = sy.process.log_path.read_text()
    assert "SASL_AUTHENTICATION_FAILED" in log or "Authentication failed" in log, log[-2000:]
    assert "sites[].sasl" in log, "the log points at the config block"
    assert "not-the-password" not in log
    # The broker still serves everyone else: a correct Switchyard next to it.
    good = secured.switchyard({"mechanism": "SCRAM-SHA-256", "username": user,
                               "password_file": secured.secret("right.pw", USERS["SCRAM-SHA-256"][1])})
    roundtrip(good, n=20)


def test_check_names_a_missing_secret(secured, tmp_path):
    cfg = tmp_path / "sy.yaml"
    cfg.write_text(json.dumps({
        "cluster_id": "check",
        "listen": {"bind": "127.0.0.1:1"},
        "sites": [{"name": "s", "bootstrap": ["127.0.0.1:9"],
                   "sasl": {"mechanism": "SCRAM-SHA-512", "username": "u",
                            "password_env": "SY_SURELY_UNSET_PASSWORD"}},
                  {"name": "t", "bootstrap": ["127.0.0.1:9"],
                   "sasl": {"mechanism": "OAUTHBEARER", "token_file": str(tmp_path / "missing.jwt")}}],
    }))
    env = {k: v for k, v in os.environ.items() if k != "SY_SURELY_UNSET_PASSWORD"}
    r = subprocess.run([str(secured.bin), "check", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=30, env=env)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "sites[0].sasl.password_env" in out and "SY_SURELY_UNSET_PASSWORD" in out, out
    assert "sites[1].sasl.token_file" in out and "missing.jwt" in out, out


def consume(bootstrap: str, topic: str, group: str, want: int, timeout: float = 60.0) -> list[bytes]:
    """`want` records of `topic` for `group`, committed; the consumer leaves."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < want and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            got.append(m.value())
            c.commit(message=m, asynchronous=False)
    finally:
        c.close()
    return got


@pytest.mark.timeout(300)
def test_failover_and_tee_between_two_secured_sites_with_their_own_credentials(secured, tmp_path):
    """Site `east` is the module's Kafka (SCRAM-SHA-256 user, its CA);
    `west` a second one with another CA, another user and SCRAM-SHA-512.
    A synchronous tee copies every acked record to west with west's
    credentials; a planned failover moves clients there, and the group
    goes on from where it committed on east: nothing lost, nothing twice."""
    west_pki = Pki(tmp_path / "west-pki", "west")
    west_cert = west_pki.issue("kafka-west", ["localhost", "127.0.0.1"])
    west_user, west_pw = "sy-west", "west-secret-512"
    west = KafkaCluster(tmp_path / "west", 1, allocate=allocate_ports, name="sasl-west",
                        properties=kafka_sasl_ssl_listener(west_cert, west_pki),
                        format_args=[f"--add-scram=SCRAM-SHA-512=[name={west_user},password={west_pw}]"])
    try:
        west.start()
        east_user, east_pw = USERS["SCRAM-SHA-256"]
        sites = [
            {"name": "east", "bootstrap": [n.bootstrap for n in secured.kafka.nodes],
             "tls": {"ca": str(secured.pki.ca_pem)},
             "sasl": {"mechanism": "SCRAM-SHA-256", "username": east_user,
                      "password_file": secured.secret("east.pw", east_pw)}},
            {"name": "west", "bootstrap": [n.bootstrap for n in west.nodes],
             "tls": {"ca": str(west_pki.ca_pem)},
             "sasl": {"mechanism": "SCRAM-SHA-512", "username": west_user,
                      "password_file": secured.secret("west.pw", west_pw)}},
        ]
        route = {"name": "main", "topics": {"regex": ".*"}, "groups": {"regex": ".*"}, "site": "east",
                 "tee": [{"site": "west", "mode": "sync"}],
                 "failover": {"standby": "west", "automatic": False}}
        sy = start_switchyard(secured.bin, tmp_path, [secured.kafka], cluster_id="two-secured",
                              overrides={"sites": sites, "default_site": "east", "routes": [route],
                                         "failover": FAILOVER_SETTINGS},
                              launched=secured.started.append)
        topic, group = unique_name("sasl-fo"), unique_name("sasl-fo-g")
        admin = AdminClient({"bootstrap.servers": sy.bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)],
                            operation_timeout=30)[topic].result(timeout=30)

        def produce(values: list[bytes]) -> None:
            p = Producer({"bootstrap.servers": sy.bootstrap, "enable.idempotence": True, "acks": "all"})
            errors: list = []
            for v in values:
                p.produce(topic, value=v, on_delivery=lambda e, m: e and errors.append(e))
            assert p.flush(60) == 0 and not errors, f"produce: {errors[:3]}"

        before = [f"before-{i:04d}".encode() for i in range(200)]
        after = [f"after-{i:04d}".encode() for i in range(50)]
        produce(before)
        first = consume(sy.bootstrap, topic, group, 120)
        assert len(first) == 120, f"consumed {len(first)} of 120 before the failover"

        code, body = failover(sy, route="main")
        assert code == 200 and body.get("state") == "standby" and body.get("active") == "west", (code, body)
        produce(after)
        rest = consume(sy.bootstrap, topic, group, len(before) + len(after) - len(first))
        assert sorted(first + rest) == sorted(before + after), (
            f"{len(first)} + {len(rest)} consumed; missing "
            f"{sorted(set(before + after) - set(first + rest))[:5]}, twice "
            f"{sorted(v for v in set(first + rest) if (first + rest).count(v) > 1)[:5]}")
        samples, _ = sy.metrics()
        for site in ("east", "west"):
            ok = metric_sum(samples, "switchyard_upstream_sasl_authentications_total", site=site, result="ok")
            assert ok >= 1, f"no authentication to {site}"
        assert metric_sum(samples, "switchyard_upstream_sasl_authentications_total", result="failed") == 0
    finally:
        west.kill()


def test_the_secured_example_config_serves_sasl_ssl_clients(secured, tmp_path):
    """config/secured.yaml as written (addresses substituted), with the
    files it names made here: SASL_SSL clients in, SASL_SSL to the site, an
    HTTPS admin API that wants its token."""
    import shutil

    from multisite import CONFIG_DIR, substitute_words

    gw = tmp_path / "gw"
    (gw / "tls").mkdir(parents=True)
    (gw / "secrets").mkdir()
    cert = secured.pki.issue("switchyard-gateway", ["localhost", "127.0.0.1"])
    shutil.copy(cert.cert, gw / "tls" / "switchyard.pem")
    shutil.copy(cert.key, gw / "tls" / "switchyard.key")
    shutil.copy(secured.pki.ca_pem, gw / "tls" / "dc1-ca.pem")
    (gw / "secrets" / "dc1-password").write_text(EXAMPLE_USER[1] + "\n")
    token = "ops-" + "5" * 40
    (gw / "secrets" / "admin-tokens").write_text(token + "\n")
    app, app_pw = "orders-app", "orders-app-secret"
    r = subprocess.run([str(secured.bin), "credentials", "--file", str(gw / "users.yaml"), "--user", app,
                        "--password-env", "APP_PW"], env={**os.environ, "APP_PW": app_pw},
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

    bind_port, admin_port = allocate_ports(4), allocate_ports(1)
    text = substitute_words((CONFIG_DIR / "secured.yaml").read_text(), {
        "127.0.0.1:9092": f"127.0.0.1:{bind_port}",
        "127.0.0.1:9644": f"127.0.0.1:{admin_port}",
        "127.0.0.1:19092": secured.kafka.nodes[0].bootstrap,
    })
    check = gw / "check.yaml"
    check.write_text(text)
    r = subprocess.run([str(secured.bin), "check", "--config", str(check)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, f"check: {r.stdout}{r.stderr}"
    sy = start_switchyard(secured.bin, gw, [secured.kafka], cluster_id="orders-secured", config_text=text,
                          overrides={"listen": {"bind": f"127.0.0.1:{bind_port}", "virtual_nodes": 3,
                                                "advertised_host": "localhost"},
                                     "admin": {"bind": f"127.0.0.1:{admin_port}", "tls": {"cert": "x"}}},
                          launched=secured.started.append)
    conf = {"bootstrap.servers": f"localhost:{bind_port}", "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": app, "sasl.password": app_pw,
            "ssl.ca.location": str(secured.pki.ca_pem)}
    topic = unique_name("orders.example")
    admin = AdminClient(conf)
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)],
                        operation_timeout=30)[topic].result(timeout=30)
    p = Producer({**conf, "enable.idempotence": True, "acks": "all"})
    values = [f"r-{i:04d}".encode() for i in range(100)]
    for v in values:
        p.produce(topic, value=v)
    assert p.flush(60) == 0
    c = Consumer({**conf, "group.id": unique_name("orders-g"), "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(got) < len(values) and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value())
    c.close()
    assert sorted(got) == values
    # Its ACLs: a topic outside its prefix cannot even be created.
    other = unique_name("payments")
    with pytest.raises(KafkaException) as e:
        admin.create_topics([NewTopic(other, num_partitions=1, replication_factor=1)],
                            operation_timeout=30)[other].result(timeout=30)
    assert e.value.args[0].name() == "TOPIC_AUTHORIZATION_FAILED", e.value
    wrong = Producer({**conf, "sasl.password": "wrong", "message.timeout.ms": 5000})
    outcome: list = []
    wrong.produce(topic, value=b"never", on_delivery=lambda e, m: outcome.append(e))
    wrong.flush(15)
    assert outcome and outcome[0] is not None, f"a wrong password wrote a record: {outcome}"
    status = sy.admin + "/api/v1/status"
    assert http_get(status)[0] == 401
    assert http_get(status, headers={"Authorization": f"Bearer {token}"})[0] == 200
    assert http_get(sy.admin + "/metrics")[0] == 200, "open_metrics"


def test_a_mapped_principal_reaches_the_site_as_its_own_user(switchyard_bin, tmp_path):
    """sites[].principals: client alice (SASL to Switchyard) writes to the
    site as its own user there, sy-alice, which the site's ACLs let write
    topic T; client bob has no mapping and writes as Switchyard's user,
    which may only describe T: the site refuses him
    (TOPIC_AUTHORIZATION_FAILED, passed on), nothing of his is written."""
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, ResourcePatternType,
                                       ResourceType)

    users = {"sy-default": "default-pw-0123", "sy-alice": "alice-site-pw-0123", "sy-admin": "admin-pw-0123"}
    c = "listener.name.client."
    kafka = KafkaCluster(tmp_path / "acl-kafka", 1, allocate=allocate_ports, name="acl", properties={
        "listener.security.protocol.map": "CLIENT:SASL_PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "sasl.enabled.mechanisms": "SCRAM-SHA-256",
        c + "scram-sha-256.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        # The plaintext broker-to-broker and controller listeners, and the test's admin.
        "super.users": "User:ANONYMOUS;User:sy-admin",
    }, format_args=[f"--add-scram=SCRAM-SHA-256=[name={u},password={p}]" for u, p in users.items()])
    try:
        kafka.start()
        direct = {"bootstrap.servers": kafka.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                  "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "sy-admin", "sasl.password": users["sy-admin"]}
        topic = unique_name("mapped")
        admin = AdminClient(direct)
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(timeout=30)

        def acl(user: str, op) -> AclBinding:
            return AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, f"User:{user}", "*",
                              op, AclPermissionType.ALLOW)

        for f in admin.create_acls([acl("sy-default", AclOperation.DESCRIBE), acl("sy-alice", AclOperation.WRITE),
                                    acl("sy-alice", AclOperation.DESCRIBE)]).values():
            f.result(timeout=30)

        creds = tmp_path / "clients.yaml"
        for user, pw in (("alice", "alice-pw"), ("bob", "bob-pw")):
            r = subprocess.run([str(switchyard_bin), "credentials", "--file", str(creds), "--user", user],
                               input=pw + "\n", capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
        secret = tmp_path / "pw"
        secret.mkdir()
        (secret / "default").write_text(users["sy-default"])
        (secret / "alice").write_text(users["sy-alice"])
        sy = start_switchyard(switchyard_bin, tmp_path, [kafka], cluster_id="mapped", overrides={
            "listen": {"sasl": {"mechanisms": ["PLAIN"], "credentials": str(creds)}},
            "sites": [{"name": "local", "bootstrap": [kafka.bootstrap],
                       "sasl": {"mechanism": "SCRAM-SHA-256", "username": "sy-default",
                                "password_file": str(secret / "default")},
                       "principals": {"User:alice": {"mechanism": "SCRAM-SHA-256", "username": "sy-alice",
                                                     "password_file": str(secret / "alice")}}}],
        })
        try:
            def produce(user: str, pw: str, n: int) -> list:
                p = Producer({"bootstrap.servers": sy.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                              "sasl.mechanism": "PLAIN", "sasl.username": user, "sasl.password": pw,
                              "acks": "all", "message.timeout.ms": 15000})
                out: list = []
                for i in range(n):
                    p.produce(topic, f"{user}-{i}".encode(), on_delivery=lambda e, m: out.append(e))
                p.flush(30)
                return out

            alice = produce("alice", "alice-pw", 20)
            assert len(alice) == 20 and all(e is None for e in alice), f"alice refused: {alice[:2]}"
            bob = produce("bob", "bob-pw", 5)
            assert bob and all(e is not None and e.name() == "TOPIC_AUTHORIZATION_FAILED" for e in bob), \
                f"bob was not refused by the site as Switchyard's own user: {bob[:2]}"
        finally:
            sy.process.terminate(TEARDOWN_GRACE)
        cons = Consumer({**direct, "group.id": unique_name("check"), "auto.offset.reset": "earliest"})
        cons.subscribe([topic])
        got: list = []
        deadline = time.monotonic() + 30
        while len(got) < 20 and time.monotonic() < deadline:
            m = cons.poll(0.5)
            if m is not None and not m.error():
                got.append(m.value())
        extra = cons.poll(2)
        cons.close()
        assert sorted(got) == sorted(f"alice-{i}".encode() for i in range(20)), got[:3]
        assert extra is None or extra.error(), f"more in the topic than alice's records: {extra.value()}"
    finally:
        kafka.kill()
