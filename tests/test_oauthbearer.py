"""OAUTHBEARER terminated by Switchyard: clients present JWTs that
Switchyard checks against a local JWKS file (signature, issuer, audience,
expiry), with real clients, in front of the session's shared Kafka node.

The tests are their own identity provider: an RSA key pair (cryptography),
its public half published as a JWKS file, tokens signed with the private
half.

What a user checks: confluent-kafka (with a token callback, and with
librdkafka's own OIDC client-credentials flow against a token endpoint the
test serves), kafka-python and the Java client (its
OAuthBearerLoginCallbackHandler reading the token from a file) authenticate with a valid token and produce and consume every record; an expired token, one for
another audience or issuer, one signed by another key, one naming a key the
JWKS does not hold, and garbage are each refused (SASL_AUTHENTICATION_FAILED)
and write nothing; a session ends with its token, and a client that
refreshes its token keeps working past several of them; a rotated JWKS is
picked up without a restart; `check` names an unusable JWKS file.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from helpers import metric_sum, unique_name, wait_until
from kafka_cluster import jvm_argv

pytestmark = [pytest.mark.shared_site, pytest.mark.brokers("kafka")]

ISSUER = "https://idp.shop.example/"
AUDIENCE = "kafka-gateway"
N = 100


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Idp:
    """A signing key and its JWKS."""

    def __init__(self, kid: str):
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwk(self) -> dict:
        pub = self.key.public_key().public_numbers()
        n = pub.n.to_bytes((pub.n.bit_length() + 7) // 8, "big")
        e = pub.e.to_bytes((pub.e.bit_length() + 7) // 8, "big")
        return {"kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256", "n": b64url(n), "e": b64url(e)}

    def token(self, sub: str = "orders-app", lifetime: float = 3600, iss: str = ISSUER, aud: str = AUDIENCE,
              kid: str | None = None) -> tuple[str, float]:
        now = time.time()
        header = {"alg": "RS256", "typ": "JWT", "kid": kid or self.kid}
        claims = {"sub": sub, "iss": iss, "aud": aud, "iat": int(now), "exp": int(now + lifetime)}
        signing = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        sig = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{b64url(sig)}", now + lifetime


def write_jwks(path, *idps: Idp) -> None:
    path.write_text(json.dumps({"keys": [i.jwk() for i in idps]}))


@pytest.fixture
def oauth(switchyard, tmp_path):
    idp = Idp("key-1")
    jwks = tmp_path / "jwks.json"
    write_jwks(jwks, idp)
    sy = switchyard(overrides={"listen": {"sasl": {
        "mechanisms": ["OAUTHBEARER"],
        "oauthbearer": {"jwks_file": str(jwks), "issuer": ISSUER, "audience": AUDIENCE, "clock_skew_ms": 0},
    }}})
    return sy, idp, jwks


def conf(sy, make_token, **extra) -> dict:
    return {"bootstrap.servers": sy.bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "OAUTHBEARER", "oauth_cb": lambda _cfg: make_token(), **extra}


def authentications(sy, result: str) -> float:
    samples, _ = sy.metrics()
    return metric_sum(samples, "switchyard_sasl_authentications_total", mechanism="OAUTHBEARER", result=result)


def create(sy, idp: Idp, topic: str) -> None:
    admin = AdminClient(conf(sy, idp.token))
    admin.poll(1)  # serves the token callback
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=-1)],
                        operation_timeout=30)[topic].result(timeout=30)


def consume_all(sy, idp: Idp, topic: str, n: int) -> list[bytes]:
    c = Consumer(conf(sy, idp.token, **{"group.id": unique_name("g"), "auto.offset.reset": "earliest"}))
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(got) < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got.append(m.value())
    c.close()
    return got


def test_valid_tokens_with_confluent_and_kafka_python(oauth):
    sy, idp, _ = oauth
    topic = unique_name("oauth")
    create(sy, idp, topic)
    p = Producer(conf(sy, idp.token, **{"enable.idempotence": True, "acks": "all"}))
    errors: list = []
    for i in range(N):
        p.produce(topic, f"c-{i}".encode(), on_delivery=lambda e, m: e and errors.append(e))
    assert p.flush(30) == 0 and not errors, errors[:3]

    from kafka import KafkaConsumer, KafkaProducer
    from kafka.net.sasl.oauth import AbstractTokenProvider

    class Provider(AbstractTokenProvider):
        def token(self):
            return idp.token(sub="reporting")[0]

    auth = dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=Provider())
    kp = KafkaProducer(bootstrap_servers=sy.bootstrap, acks="all", **auth)
    for f in [kp.send(topic, f"k-{i}".encode()) for i in range(N)]:
        f.get(timeout=30)
    kp.close()
    kc = KafkaConsumer(topic, bootstrap_servers=sy.bootstrap, group_id=unique_name("g"),
                       auto_offset_reset="earliest", consumer_timeout_ms=20000, **auth)
    got = [m.value for _, m in zip(range(2 * N), kc)]
    kc.close()
    want = sorted([f"c-{i}".encode() for i in range(N)] + [f"k-{i}".encode() for i in range(N)])
    assert sorted(got) == want
    assert sorted(consume_all(sy, idp, topic, 2 * N)) == want
    assert authentications(sy, "failed") == 0


def test_the_java_client_with_a_token_from_a_file(oauth, tmp_path):
    sy, idp, _ = oauth
    topic = unique_name("oauth-java")
    create(sy, idp, topic)
    token = tmp_path / "token.jwt"
    token.write_text(idp.token(sub="java-app")[0])
    props = tmp_path / "java-oauth.properties"
    props.write_text(
        "security.protocol=SASL_PLAINTEXT\n"
        "sasl.mechanism=OAUTHBEARER\n"
        "sasl.login.callback.handler.class="
        "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler\n"
        f"sasl.oauthbearer.token.endpoint.url={token.as_uri()}\n"
        "sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;\n")

    def run(main: str, *args: str) -> list[dict]:
        argv = [*jvm_argv("128m"),
                # Kafka 4 reads token files only from URLs it is told to trust.
                f"-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls={token.as_uri()}", main, "--bootstrap-server", sy.bootstrap,
                "--command-config", str(props), *args]
        r = subprocess.run(argv, capture_output=True, timeout=120)
        out = r.stdout.decode("utf-8", "replace")
        assert r.returncode == 0, f"{main} exited {r.returncode}:\n{out[-3000:]}\n{r.stderr.decode()[-2000:]}"
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    produced = run("org.apache.kafka.tools.VerifiableProducer", "--topic", topic, "--max-messages", str(N))
    acked = [e for e in produced if e.get("name") == "producer_send_success"]
    assert len(acked) == N and not [e for e in produced if e.get("name") == "producer_send_error"]
    consumed = run("org.apache.kafka.tools.VerifiableConsumer", "--topic", topic, "--group-id", unique_name("g"),
                   "--max-messages", str(N), "--reset-policy", "earliest", "--verbose")
    assert sorted(e["value"] for e in consumed if e.get("name") == "record_data") == \
        sorted(e["value"] for e in acked)
    assert authentications(sy, "failed") == 0


def test_librdkafkas_oidc_token_fetch(oauth):
    """librdkafka's `sasl.oauthbearer.method=oidc`: it fetches its token
    from an OAuth token endpoint (client-credentials grant); the test serves
    one that hands out the test's signed tokens. (The kcat installed here is
    built without OIDC, so confluent-kafka's librdkafka stands in for it.)"""
    import http.server
    import threading

    sy, idp, _ = oauth
    topic = unique_name("oauth-oidc")
    create(sy, idp, topic)
    asked: list[str] = []

    class TokenEndpoint(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            asked.append(body)
            answer = json.dumps({"access_token": idp.token(sub="orders-app")[0], "token_type": "bearer",
                                 "expires_in": 3600}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), TokenEndpoint)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        oidc = {"bootstrap.servers": sy.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "OAUTHBEARER", "sasl.oauthbearer.method": "oidc",
                "sasl.oauthbearer.client.id": "orders-app", "sasl.oauthbearer.client.secret": "app-secret",
                "sasl.oauthbearer.token.endpoint.url": f"http://127.0.0.1:{server.server_port}/token"}
        p = Producer({**oidc, "enable.idempotence": True, "acks": "all"})
        errors: list = []
        for i in range(N):
            p.produce(topic, f"oidc-{i}".encode(), on_delivery=lambda e, m: e and errors.append(e))
        assert p.flush(30) == 0 and not errors, errors[:3]
        assert sorted(consume_all(sy, idp, topic, N)) == sorted(f"oidc-{i}".encode() for i in range(N))
        assert asked and "grant_type=client_credentials" in asked[0], asked[:1]
        assert authentications(sy, "failed") == 0
    finally:
        server.shutdown()


def test_bad_tokens_are_refused_and_write_nothing(oauth):
    sy, idp, _ = oauth
    topic = unique_name("oauth-bad")
    create(sy, idp, topic)
    stranger = Idp("key-1")  # the same key id, another key
    bad = {
        "expired": lambda: idp.token(lifetime=-60)[0],
        "another audience": lambda: idp.token(aud="someone-else")[0],
        "another issuer": lambda: idp.token(iss="https://evil.example/")[0],
        "another key": lambda: stranger.token()[0],
        "unknown key id": lambda: idp.token(kid="key-9")[0],
        "garbage": lambda: "not.a.jwt",
    }
    for what, jwt in bad.items():
        # librdkafka itself refuses a token it knows to be expired: it is
        # told each lives an hour, so only Switchyard judges them.
        def make(jwt=jwt):
            return jwt(), time.time() + 3600
        before = authentications(sy, "failed")
        p = Producer(conf(sy, make, **{"message.timeout.ms": 4000}))
        outcome: list = []
        p.produce(topic, f"bad-{what}".encode(), on_delivery=lambda e, m: outcome.append(e))
        p.flush(10)
        assert outcome and outcome[0] is not None, f"{what}: a record was written with a bad token"
        wait_until(lambda: authentications(sy, "failed") > before, 10, f"{what}: refusal not counted")
    p = Producer(conf(sy, idp.token))
    p.produce(topic, b"good")
    assert p.flush(30) == 0
    assert consume_all(sy, idp, topic, 1) == [b"good"], "only the good record is in the topic"


def test_sessions_end_with_their_token_and_refreshed_tokens_go_on(oauth):
    """Tokens valid for 4 s: Switchyard gives each session that long
    (KIP-368); librdkafka fetches a new token and re-authenticates, and its
    producer keeps delivering across several token lifetimes."""
    sy, idp, _ = oauth
    topic = unique_name("oauth-reauth")
    create(sy, idp, topic)
    before = authentications(sy, "ok")
    p = Producer(conf(sy, lambda: idp.token(lifetime=4), **{"enable.idempotence": True, "acks": "all"}))
    errors: list = []
    deadline = time.monotonic() + 13
    n = 0
    while time.monotonic() < deadline:
        p.produce(topic, f"r-{n}".encode(), on_delivery=lambda e, m: e and errors.append(e))
        n += 1
        p.poll(0.05)
    assert p.flush(30) == 0 and not errors, errors[:3]
    assert authentications(sy, "ok") - before >= 3, "no re-authentication within three token lifetimes"
    assert sorted(consume_all(sy, idp, topic, n)) == sorted(f"r-{i}".encode() for i in range(n))


def test_a_rotated_jwks_is_used_without_a_restart(oauth):
    sy, old, jwks = oauth
    new = Idp("key-2")
    write_jwks(jwks, new)  # the provider rotated: key-1 retired

    def accepted(idp: Idp) -> bool:
        p = Producer(conf(sy, idp.token, **{"message.timeout.ms": 3000}))
        out: list = []
        p.produce(unique_name("oauth-rot"), b"x", on_delivery=lambda e, m: out.append(e))
        p.flush(8)
        return bool(out) and out[0] is None

    wait_until(lambda: accepted(new), 30, "a token of the new key is refused after the JWKS changed")
    assert not accepted(old), "a token of the retired key still accepted"


def test_check_names_an_unusable_jwks(switchyard_bin, tmp_path):
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    cfg = tmp_path / "sy.yaml"
    cfg.write_text(json.dumps({
        "cluster_id": "c", "sites": [{"name": "s", "bootstrap": ["127.0.0.1:9"]}],
        "listen": {"bind": "127.0.0.1:1", "sasl": {
            "mechanisms": ["OAUTHBEARER"],
            "oauthbearer": {"jwks_file": str(jwks), "issuer": ISSUER, "audience": AUDIENCE}}}}))
    r = subprocess.run([str(switchyard_bin), "check", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "listen.sasl.oauthbearer.jwks_file" in out and "no key" in out, out
