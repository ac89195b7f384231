"""Who may use Switchyard's admin API: bearer tokens, HTTPS and client
certificates, and the refusal to serve it openly beyond loopback.

What an operator checks: with `admin.token_file` every endpoint but
/healthz and /readyz (and /metrics with `open_metrics`) answers 401 without
the token or with a wrong one, and a refused failover changes nothing;
the right token (or a verified client certificate) gets through; a rotated
token file takes effect without a restart; plaintext to the HTTPS port gets
nothing; `check` and `run` refuse a non-loopback admin bind without
authentication and say which key to set.
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import http_get, metric_sum, parse_prometheus, unique_name, wait_until
from tls_pki import Pki

# The API does not depend on the broker: the session's shared Kafka node.
pytestmark = [pytest.mark.brokers("kafka"), pytest.mark.shared_site]

TOKEN = "adm-" + "7" * 40
OTHER = "adm-" + "8" * 40


def request(url: str, method: str = "GET", token: str | None = None, context=None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def metrics_with(sy, token: str, context=None):
    code, body = http_get(sy.admin + "/metrics", headers={"Authorization": f"Bearer {token}"}, context=context)
    assert code == 200, code
    return parse_prometheus(body)


def active_pair(tmp_path: Path, kafka_bootstrap: str) -> dict:
    """A route that could fail over (to the same cluster under another site
    name): what a refused failover must leave alone."""
    return {
        "sites": [{"name": "a", "bootstrap": kafka_bootstrap.split(",")},
                  {"name": "b", "bootstrap": kafka_bootstrap.split(",")}],
        "default_site": "a",
        "routes": [{"name": "main", "topics": {"prefix": "auth-"}, "groups": {"prefix": "auth-"}, "site": "a",
                    "tee": [{"site": "b", "mode": "async"}],
                    "failover": {"standby": "b", "automatic": False}}],
    }


def test_a_token_guards_everything_but_health(switchyard, tmp_path):
    tokens = tmp_path / "admin-tokens"
    tokens.write_text(f"# operators\n{TOKEN}\n")
    sy = switchyard(cluster_id=unique_name("auth"),
                    overrides={"admin": {"token_file": str(tokens)}})
    base = sy.admin
    assert request(base + "/healthz") == 200
    assert request(base + "/readyz") == 200
    for path in ("/api/v1/status", "/metrics", "/api/v1/plugins"):
        assert request(base + path) == 401, path
        assert request(base + path, token=OTHER) == 401, path
        assert request(base + path, token=TOKEN) == 200, path
    assert request(base + "/api/v1/reload", "POST") == 401
    refused = metric_sum(metrics_with(sy, TOKEN)[0], "switchyard_errors_total", kind="admin_unauthorized")
    assert refused >= 7, refused
    assert TOKEN not in sy.process.log_path.read_text(), "a token in the log"

    # Rotation: the file is re-read when it changes; the old token stops working.
    tokens.write_text(f"{OTHER}\n")
    wait_until(lambda: request(base + "/api/v1/status", token=OTHER) == 200, 10, "the new token is not accepted")
    assert request(base + "/api/v1/status", token=TOKEN) == 401


def test_a_refused_failover_changes_nothing(switchyard, shared_kafka, tmp_path):
    kafka_bootstrap = shared_kafka.bootstrap
    tokens = tmp_path / "admin-tokens"
    tokens.write_text(TOKEN + "\n")
    sy = switchyard(cluster_id=unique_name("auth-fo"), upstreams=[shared_kafka],
                    overrides={**active_pair(tmp_path, kafka_bootstrap),
                               "admin": {"token_file": str(tokens), "open_metrics": True}})
    url = sy.admin + "/api/v1/routes/main/failover"
    assert request(url, "POST") == 401
    assert request(url, "POST", token=OTHER) == 401
    code, body = http_get(sy.admin + "/api/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
    route = [r for r in json.loads(body)["failover"] if r["route"] == "main"][0]
    assert (route["state"], route["active"]) == ("primary", "a"), route
    assert request(sy.admin + "/metrics") == 200, "open_metrics"
    assert request(url, "POST", token=TOKEN) == 200


def test_https_with_client_certificates_or_a_token(switchyard, tmp_path):
    pki = Pki(tmp_path / "pki", "ops")
    server = pki.issue("switchyard-admin", ["localhost", "127.0.0.1"])
    operator = pki.issue("operator")
    tokens = tmp_path / "admin-tokens"
    tokens.write_text(TOKEN + "\n")
    sy = switchyard(cluster_id=unique_name("auth-tls"), overrides={"admin": {
        "tls": {"cert": str(server.cert), "key": str(server.key), "client_auth": "optional",
                "client_ca": str(pki.ca_pem)},
        "token_file": str(tokens)}})
    assert sy.admin.startswith("https://")
    verified = ssl.create_default_context(cafile=str(pki.ca_pem))
    with_cert = ssl.create_default_context(cafile=str(pki.ca_pem))
    with_cert.load_cert_chain(str(operator.cert), str(operator.key))
    status = sy.admin + "/api/v1/status"
    assert request(status, context=with_cert) == 200, "a verified client certificate authorizes"
    assert request(status, context=verified) == 401, "no certificate, no token"
    assert request(status, token=TOKEN, context=verified) == 200
    assert request(sy.admin + "/healthz", context=verified) == 200
    # Plaintext HTTP to the HTTPS port gets no answer from the API.
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, OSError)):
        urllib.request.urlopen(status.replace("https://", "http://"), timeout=5).read()


@pytest.mark.parametrize("admin, words", [
    ({"bind": "0.0.0.0:{port}"}, "admin.tls"),
    ({"bind": "0.0.0.0:{port}", "tls": "TLS"}, "admin.token_file"),
])
def test_an_open_admin_api_beyond_loopback_is_refused(switchyard_bin, tmp_path, admin, words):
    pki = Pki(tmp_path / "pki", "ops")
    server = pki.issue("switchyard-admin", ["localhost"])
    admin = {k: (v.format(port=19644) if isinstance(v, str) and v != "TLS" else v) for k, v in admin.items()}
    if admin.get("tls") == "TLS":
        admin["tls"] = {"cert": str(server.cert), "key": str(server.key)}
    cfg = tmp_path / "sy.yaml"
    cfg.write_text(json.dumps({"cluster_id": "c", "listen": {"bind": "127.0.0.1:1"},
                               "sites": [{"name": "s", "bootstrap": ["127.0.0.1:9"]}], "admin": admin}))
    for sub in ("check", "run"):
        r = subprocess.run([str(switchyard_bin), sub, "--config", str(cfg)], capture_output=True, text=True,
                           timeout=30)
        out = r.stdout + r.stderr
        assert r.returncode != 0, f"{sub} accepted it: {out}"
        assert "admin.bind" in out and "not a loopback address" in out and words in out, out
