"""Certificates for the TLS tests, made with `cryptography`: a CA, server and
client certificates signed by it (PEM files, and PKCS#12 key stores for the
Java client and Kafka), expired ones, and Kafka's server.properties for a
TLS client listener.

    pki = Pki(tmp_path / "pki", "shop")
    server = pki.issue("localhost", sans=["localhost", "127.0.0.1"])
    server.cert, server.key, server.p12, pki.ca_pem
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

P12_PASSWORD = "changeit"


@dataclass
class Issued:
    name: str
    cert: Path  # PEM: the certificate (leaf only)
    key: Path  # PEM: PKCS#8, unencrypted
    p12: Path  # PKCS#12 with key and chain, password P12_PASSWORD
    serial: int


class Pki:
    """A CA in `dir`: `ca_pem` is its certificate (what trusts it)."""

    def __init__(self, dir: Path, name: str):
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_pem = self.dir / f"{name}-ca.pem"
        self.ca_pem.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, sans: Sequence[str] = (), *, expired: bool = False,
              file: Optional[str] = None) -> Issued:
        """A leaf for `cn` with `sans` (host names, IPs, `uri:`/`email:`
        prefixed), usable by servers and clients; `expired`: valid only last
        year. Written as `<file or cn>.pem/.key/.p12` (an existing set is
        replaced: a renewal)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = ((now - datetime.timedelta(days=400), now - datetime.timedelta(days=35)) if expired
                      else (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=20)))
        alt = []
        for s in sans:
            if s.startswith("uri:"):
                alt.append(x509.UniformResourceIdentifier(s[4:]))
            elif s.startswith("email:"):
                alt.append(x509.RFC822Name(s[6:]))
            else:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(s)))
                except ValueError:
                    alt.append(x509.DNSName(s))
        serial = x509.random_serial_number()
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Shop")]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if alt:
            b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = b.sign(self._key, hashes.SHA256())
        stem = self.dir / (file or cn)
        out = Issued(cn, stem.with_suffix(".pem"), stem.with_suffix(".key"), stem.with_suffix(".p12"), serial)
        out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        out.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
        out.p12.write_bytes(pkcs12.serialize_key_and_certificates(
            cn.encode(), key, cert, [self._cert],
            serialization.BestAvailableEncryption(P12_PASSWORD.encode())))
        return out


def kafka_tls_listener(server: Issued, pki: Pki, client_auth: str = "none") -> dict[str, str]:
    """server.properties making a KafkaCluster's CLIENT listener TLS (the
    broker-to-broker INTERNAL one stays plaintext)."""
    p = "listener.name.client."
    return {
        "listener.security.protocol.map": "CLIENT:SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT",
        p + "ssl.keystore.type": "PKCS12",
        p + "ssl.keystore.location": str(server.p12),
        p + "ssl.keystore.password": P12_PASSWORD,
        p + "ssl.key.password": P12_PASSWORD,
        p + "ssl.truststore.type": "PEM",
        p + "ssl.truststore.location": str(pki.ca_pem),
        p + "ssl.client.auth": client_auth,
    }


def peer_certificate_serial(host: str, port: int, ca: Path, client: Optional[Issued] = None,
                            timeout: float = 5.0) -> int:
    """The serial number of the certificate a TLS server presents."""
    import socket
    import ssl
    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            der = s.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number
