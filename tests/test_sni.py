"""SNI routing: one TLS port for the whole virtual cluster.

With `tls.sni_domain`, Switchyard opens only the bootstrap port and names
its virtual brokers `broker-<id>.<domain>` on that port, so one DNS
wildcard, one certificate (`*.<domain>`) and one port (a TLS-passthrough
load balancer, an ingress) serve every broker.

The names must resolve: the clients run in a mount namespace of their own
(`unshare --mount`) whose /etc/hosts maps them to 127.0.0.1, so nothing
outside the test sees the change.

What a user checks: clients bootstrap from `bootstrap.<domain>`, see
`broker-<id>.<domain>` at the one port in metadata, produce and consume
every record; no per-node port is open; `check` refuses a domain that is
not one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from helpers import tcp_accepts, unique_name
from tls_pki import Pki

pytestmark = [pytest.mark.shared_site, pytest.mark.brokers("kafka")]

DOMAIN = "kafka.test"
N = 100


def in_namespace(tmp_path, hosts: list[str], argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs argv with `hosts` resolving to 127.0.0.1 (its own /etc/hosts)."""
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text("127.0.0.1 localhost\n" + "".join(f"127.0.0.1 {h}\n" for h in hosts))
    script = f'mount --bind "{hosts_file}" /etc/hosts && exec "$@"'
    return subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", *argv], capture_output=True,
                          text=True, timeout=timeout)


def test_every_broker_on_one_port_by_name(switchyard, tmp_path, kcat_bin):
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to give the clients their own /etc/hosts")
    pki = Pki(tmp_path / "pki", "sni")
    cert = pki.issue("switchyard", [f"*.{DOMAIN}", f"bootstrap.{DOMAIN}"])
    sy = switchyard(virtual_nodes=3, overrides={"listen": {
        "advertised_host": f"bootstrap.{DOMAIN}",
        "tls": {"cert": str(cert.cert), "key": str(cert.key), "sni_domain": DOMAIN}}})
    port = sy.port
    assert not any(tcp_accepts("127.0.0.1", port + 1 + i) for i in range(3)), "a per-node port is open"
    names = [f"bootstrap.{DOMAIN}"] + [f"broker-{i}.{DOMAIN}" for i in range(3)]
    bootstrap = f"bootstrap.{DOMAIN}:{port}"
    tls = ["-X", "security.protocol=ssl", "-X", f"ssl.ca.location={pki.ca_pem}"]

    listing = in_namespace(tmp_path, names, [kcat_bin, "-b", bootstrap, *tls, "-L", "-J"])
    assert listing.returncode == 0, listing.stderr[-2000:]
    brokers = sorted((b["name"]) for b in json.loads(listing.stdout)["brokers"])
    assert brokers == [f"broker-{i}.{DOMAIN}:{port}" for i in range(3)], brokers

    topic = unique_name("sni")
    client = textwrap.dedent(f"""
        import sys, time
        from confluent_kafka import Consumer, Producer
        from confluent_kafka.admin import AdminClient, NewTopic
        conf = {{"bootstrap.servers": "{bootstrap}", "security.protocol": "SSL",
                 "ssl.ca.location": "{pki.ca_pem}"}}
        admin = AdminClient(conf)  # referenced until its future is done
        admin.create_topics([NewTopic("{topic}", num_partitions=3, replication_factor=-1)],
                            operation_timeout=30)["{topic}"].result(timeout=30)
        p = Producer({{**conf, "enable.idempotence": True, "acks": "all"}})
        errors = []
        for i in range({N}):
            p.produce("{topic}", f"sni-{{i}}".encode(), on_delivery=lambda e, m: e and errors.append(e))
        assert p.flush(30) == 0 and not errors, errors[:3]
        c = Consumer({{**conf, "group.id": "g-{topic}", "auto.offset.reset": "earliest"}})
        c.subscribe(["{topic}"])
        got = []
        deadline = time.monotonic() + 60
        while len(got) < {N} and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                got.append(m.value().decode())
        c.close()
        print(" ".join(sorted(got)))
    """)
    r = in_namespace(tmp_path, names, [sys.executable, "-c", client])
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == sorted(f"sni-{i}" for i in range(N))


def test_check_refuses_a_domain_that_is_not_one(switchyard_bin, tmp_path):
    pki = Pki(tmp_path / "pki", "sni")
    cert = pki.issue("switchyard", [f"*.{DOMAIN}"])
    cfg = tmp_path / "sy.yaml"
    cfg.write_text(json.dumps({
        "cluster_id": "c", "sites": [{"name": "s", "bootstrap": ["127.0.0.1:9"]}],
        "listen": {"bind": "127.0.0.1:1", "tls": {"cert": str(cert.cert), "key": str(cert.key),
                                                   "sni_domain": "bad_domain..test"}}}))
    r = subprocess.run([str(switchyard_bin), "check", "--config", str(cfg)], capture_output=True, text=True,
                       timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "listen.tls.sni_domain" in out and "not a DNS domain" in out, out
