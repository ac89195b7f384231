//! TLS with rustls, both ways:
//!
//! * client listeners ([`ServerTls`]): a certificate chain and key, TLS 1.2
//!   and 1.3, client certificates none / optional / required against a CA
//!   bundle (mTLS), the client's principal read from its certificate by a
//!   configured rule ([`principal`]), and the files re-read when they change
//!   ([`ServerTls::refresh`]) so a renewed certificate is served without a
//!   restart; connections already open keep the session they made;
//! * sites ([`ClientTls`]): brokers verified against a CA bundle or the
//!   system's roots, by each broker's host name (or one configured name),
//!   with a client certificate for brokers that require mTLS.
//!
//! Files are PEM. What can be wrong with them is found when a config is
//! loaded ([`load`], by `switchyard check` and at start alike) and named by
//! its config key, so an operator learns which file and why before anything
//! runs.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x509_parser::extensions::GeneralName;

use crate::config::{
    ClientAuth, ConfigError, ListenerTlsConfig, PrincipalFrom, SiteTlsConfig, TlsVersion, Validated,
};

/// A TLS setting that cannot be used: the config key under the TLS block
/// (`cert`, `key`, `client_ca`, ...) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    pub key: &'static str,
    pub reason: String,
}

impl TlsError {
    fn new(key: &'static str, reason: impl Into<String>) -> Self {
        TlsError {
            key,
            reason: reason.into(),
        }
    }
}

/// ring: it builds with a C compiler alone. rustls deprecates it for lacking
/// post-quantum key exchange, which Kafka's clients (Java 17's JSSE,
/// librdkafka's OpenSSL defaults) do not offer either.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn versions(v: TlsVersion) -> &'static [&'static rustls::SupportedProtocolVersion] {
    match v {
        TlsVersion::V1_2 => rustls::ALL_VERSIONS,
        TlsVersion::V1_3 => TLS13_ONLY,
    }
}

/// The certificates of a PEM file; at least one, each a parseable X.509
/// certificate that is valid now.
fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let read: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {path}: {e}"))?
        .collect();
    let certs = read.map_err(|e| format!("{path}: not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no PEM certificate in it"));
    }
    for (i, c) in certs.iter().enumerate() {
        let (_, x) = x509_parser::parse_x509_certificate(c.as_ref())
            .map_err(|e| format!("{path}: certificate {} does not parse: {e}", i + 1))?;
        if !x.validity().is_valid() {
            return Err(format!(
                "{path}: certificate {} ({}) is not valid now (valid {} to {})",
                i + 1,
                x.subject(),
                x.validity().not_before,
                x.validity().not_after
            ));
        }
    }
    Ok(certs)
}

fn key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("{path}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)")
        }
        e => format!("cannot read a private key from {path}: {e}"),
    })
}

fn roots(path: &str) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    for c in certs(path)? {
        store
            .add(c)
            .map_err(|e| format!("{path}: not a usable CA certificate: {e}"))?;
    }
    Ok(store)
}

/// The system's trusted roots, read once.
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no trusted roots found on this system ({} errors); give `ca`",
                    found.errors.len()
                ));
            }
            Ok(Arc::new(store))
        })
        .clone()
}

/// The server side of a listener's TLS, from its files.
pub fn server_config(t: &ListenerTlsConfig) -> Result<ServerConfig, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions(t.min_version))
        .map_err(|e| TlsError::new("min_version", e.to_string()))?;
    let builder = match t.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        auth => {
            let ca = t.client_ca.as_deref().ok_or_else(|| {
                TlsError::new(
                    "client_ca",
                    "required when client_auth is optional or required",
                )
            })?;
            let roots = Arc::new(roots(ca).map_err(|e| TlsError::new("client_ca", e))?);
            let v = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let v = if auth == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(
                v.build()
                    .map_err(|e| TlsError::new("client_ca", e.to_string()))?,
            )
        }
    };
    let chain = certs(&t.cert).map_err(|e| TlsError::new("cert", e))?;
    let key = key(&t.key).map_err(|e| TlsError::new("key", e))?;
    builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::new(
            "key",
            format!("not usable with the certificate in `cert`: {e}"),
        )
    })
}

/// A listener's TLS: the current server config, swapped when its files
/// change. Handshakes in progress and connections open keep the config
/// they started with.
pub struct ServerTls {
    /// Where it is configured (`listen.tls`), for log lines.
    key: String,
    cfg: ListenerTlsConfig,
    current: ArcSwap<ServerConfig>,
    /// The files' modification times the current config was built from.
    stamps: Mutex<Vec<Option<SystemTime>>>,
}

impl ServerTls {
    pub fn new(key: &str, cfg: &ListenerTlsConfig) -> Result<Arc<Self>, TlsError> {
        let stamps = Self::stamps_of(cfg);
        let built = server_config(cfg)?;
        Ok(Arc::new(ServerTls {
            key: key.to_string(),
            cfg: cfg.clone(),
            current: ArcSwap::from_pointee(built),
            stamps: Mutex::new(stamps),
        }))
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// How client certificates name principals here.
    pub fn principal_from(&self) -> PrincipalFrom {
        self.cfg.principal
    }

    fn stamps_of(cfg: &ListenerTlsConfig) -> Vec<Option<SystemTime>> {
        std::iter::once(&cfg.cert)
            .chain(std::iter::once(&cfg.key))
            .chain(cfg.client_ca.iter())
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Re-reads the files if any of them changed since the current config
    /// was built. New connections get the new certificate; a set that does
    /// not load (a key written before its certificate, say) keeps the old
    /// one, logged, and is tried again next time. Reads files: call it off
    /// the async workers. True if the config was replaced.
    pub fn refresh(&self) -> bool {
        let now = Self::stamps_of(&self.cfg);
        let Ok(mut stamps) = self.stamps.lock() else {
            return false;
        };
        if *stamps == now {
            return false;
        }
        match server_config(&self.cfg) {
            Ok(c) => {
                self.current.store(Arc::new(c));
                *stamps = now;
                tracing::info!(listener_tls = %self.key, cert = %self.cfg.cert,
                    "TLS certificate files changed; new connections use them");
                true
            }
            Err(e) => {
                tracing::warn!(listener_tls = %self.key, key = e.key, reason = %e.reason,
                    "TLS files changed but do not load; still serving the previous certificate");
                false
            }
        }
    }
}

/// The principal a client certificate names, by `from`; `None` when the
/// certificate has no such part.
pub fn principal(cert: &CertificateDer<'_>, from: PrincipalFrom) -> Option<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = |pick: fn(&GeneralName<'_>) -> Option<String>| {
        let ext = x.subject_alternative_name().ok()??;
        ext.value.general_names.iter().find_map(pick)
    };
    match from {
        PrincipalFrom::SubjectCn => x
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        PrincipalFrom::Subject => Some(x.subject().to_string()),
        PrincipalFrom::SanDns => san(|g| match g {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        }),
        PrincipalFrom::SanUri => san(|g| match g {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        }),
        PrincipalFrom::SanEmail => san(|g| match g {
            GeneralName::RFC822Name(e) => Some(e.to_string()),
            _ => None,
        }),
    }
}

/// A site's TLS: how Switchyard connects to its brokers.
pub struct ClientTls {
    connector: TlsConnector,
    /// One name for every broker (`server_name`), else each broker's host.
    server_name: Option<ServerName<'static>>,
}

impl ClientTls {
    pub fn new(t: &SiteTlsConfig) -> Result<Arc<Self>, TlsError> {
        let roots = match &t.ca {
            Some(ca) => Arc::new(roots(ca).map_err(|e| TlsError::new("ca", e))?),
            None => system_roots().map_err(|e| TlsError::new("ca", e))?,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .map_err(|e| TlsError::new("ca", e.to_string()))?
            .with_root_certificates(roots);
        let config = match (&t.cert, &t.key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key_file)) => {
                let chain = certs(cert).map_err(|e| TlsError::new("cert", e))?;
                let k = key(key_file).map_err(|e| TlsError::new("key", e))?;
                builder.with_client_auth_cert(chain, k).map_err(|e| {
                    TlsError::new(
                        "key",
                        format!("not usable with the certificate in `cert`: {e}"),
                    )
                })?
            }
            (Some(_), None) => return Err(TlsError::new("key", "required with `cert`")),
            (None, Some(_)) => return Err(TlsError::new("cert", "required with `key`")),
        };
        let server_name = match &t.server_name {
            Some(n) => Some(
                ServerName::try_from(n.clone())
                    .map_err(|e| TlsError::new("server_name", format!("`{n}`: {e}")))?,
            ),
            None => None,
        };
        Ok(Arc::new(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        }))
    }

    /// The TLS handshake on a connection to `addr` (`host:port`), the
    /// broker's certificate checked against its host (or `server_name`).
    pub async fn connect(
        &self,
        addr: &str,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => ServerName::try_from(host_of(addr).to_string())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        };
        self.connector.connect(name, tcp).await
    }
}

/// The host of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Every listener's and site's TLS, loaded from a checked config: what
/// `switchyard check` reports and what `run` serves are the same load.
#[derive(Default)]
pub struct TlsSet {
    /// Per `Validated::listeners` entry.
    pub listeners: Vec<Option<Arc<ServerTls>>>,
    /// Per `config.sites` entry.
    pub sites: Vec<Option<Arc<ClientTls>>>,
    /// The admin listener's (`admin.tls`).
    pub admin: Option<Arc<ServerTls>>,
}

/// Loads every TLS block of `cfg`: one error per unusable file, under its
/// config key (`listen.tls.cert`, `sites[1].tls.ca`, ...).
pub fn load(cfg: &Validated) -> Result<TlsSet, Vec<ConfigError>> {
    let mut errors = Vec::new();
    let mut set = TlsSet::default();
    for l in &cfg.listeners {
        set.listeners.push(match &l.tls {
            None => None,
            Some((at, t)) => match ServerTls::new(at, t) {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.push(ConfigError {
                        key: format!("{at}.{}", e.key),
                        reason: e.reason,
                    });
                    None
                }
            },
        });
    }
    for (i, s) in cfg.config.sites.iter().enumerate() {
        set.sites.push(match &s.tls {
            None => None,
            Some(t) => match ClientTls::new(t) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.push(ConfigError {
                        key: format!("sites[{i}].tls.{}", e.key),
                        reason: e.reason,
                    });
                    None
                }
            },
        });
    }
    if let Some(t) = &cfg.config.admin.tls {
        match ServerTls::new("admin.tls", t) {
            Ok(s) => set.admin = Some(s),
            Err(e) => errors.push(ConfigError {
                key: format!("admin.tls.{}", e.key),
                reason: e.reason,
            }),
        }
    }
    if errors.is_empty() {
        Ok(set)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
pub mod testing {
    //! Certificates for tests, made in memory and written to a directory.

    use std::path::{Path, PathBuf};

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType,
    };

    pub struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
        pub pem: PathBuf,
    }

    /// A CA written to `dir/<name>-ca.pem`.
    pub fn ca(dir: &Path, name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { cert, key, pem }
    }

    /// A leaf signed by `ca`, with subject CN `cn` and `sans` (DNS names,
    /// IPs, `uri:` and `email:` prefixed), written to `dir/<cn>.pem` and
    /// `dir/<cn>.key`; `expired` makes it valid only in the past.
    pub fn leaf(dir: &Path, ca: &Ca, cn: &str, sans: &[&str], expired: bool) -> (PathBuf, PathBuf) {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name.push(DnType::OrganizationName, "Shop");
        for s in sans {
            p.subject_alt_names
                .push(if let Some(u) = s.strip_prefix("uri:") {
                    SanType::URI(u.try_into().unwrap())
                } else if let Some(e) = s.strip_prefix("email:") {
                    SanType::Rfc822Name(e.try_into().unwrap())
                } else if let Ok(ip) = s.parse() {
                    SanType::IpAddress(ip)
                } else {
                    SanType::DnsName((*s).try_into().unwrap())
                });
        }
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
        let (c, k) = (dir.join(format!("{cn}.pem")), dir.join(format!("{cn}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{ca, leaf};
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("switchyard-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn listener(cert: &std::path::Path, key: &std::path::Path) -> ListenerTlsConfig {
        ListenerTlsConfig {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            client_auth: ClientAuth::None,
            client_ca: None,
            principal: PrincipalFrom::SubjectCn,
            min_version: TlsVersion::V1_2,
            sni_domain: None,
        }
    }

    #[test]
    fn principals_by_rule() {
        let d = dir("principals");
        let ca = ca(&d, "p");
        let (c, _) = leaf(
            &d,
            &ca,
            "orders-app",
            &[
                "app.shop.example",
                "uri:spiffe://shop/orders",
                "email:ops@shop.example",
            ],
            false,
        );
        let cert = CertificateDer::from_pem_file(&c).unwrap();
        let p = |from| principal(&cert, from);
        assert_eq!(p(PrincipalFrom::SubjectCn).as_deref(), Some("orders-app"));
        assert_eq!(
            p(PrincipalFrom::Subject).as_deref(),
            Some("CN=orders-app, O=Shop")
        );
        assert_eq!(
            p(PrincipalFrom::SanDns).as_deref(),
            Some("app.shop.example")
        );
        assert_eq!(
            p(PrincipalFrom::SanUri).as_deref(),
            Some("spiffe://shop/orders")
        );
        assert_eq!(
            p(PrincipalFrom::SanEmail).as_deref(),
            Some("ops@shop.example")
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn unusable_files_are_named_by_key() {
        let d = dir("check");
        let ca1 = ca(&d, "one");
        let (c, k) = leaf(&d, &ca1, "server", &["localhost"], false);
        let (old, old_key) = leaf(&d, &ca1, "old", &["localhost"], true);
        let (_, other_key) = leaf(&d, &ca1, "other", &["localhost"], false);
        assert!(server_config(&listener(&c, &k)).is_ok());
        let fails = |t: ListenerTlsConfig| server_config(&t).err().map(|e| (e.key, e.reason));
        let missing = fails(listener(&d.join("nope.pem"), &k)).unwrap();
        assert_eq!(missing.0, "cert");
        assert!(missing.1.contains("nope.pem"), "{}", missing.1);
        let expired = fails(listener(&old, &old_key)).unwrap();
        assert!(expired.1.contains("not valid now"), "{}", expired.1);
        assert_eq!(fails(listener(&c, &other_key)).unwrap().0, "key");
        assert_eq!(fails(listener(&c, &c)).unwrap().0, "key");
        let mut mtls = listener(&c, &k);
        mtls.client_auth = ClientAuth::Required;
        assert_eq!(fails(mtls.clone()).unwrap().0, "client_ca");
        mtls.client_ca = Some(ca1.pem.display().to_string());
        assert!(server_config(&mtls).is_ok());
        let site = SiteTlsConfig {
            ca: Some(k.display().to_string()),
            ..Default::default()
        };
        assert_eq!(ClientTls::new(&site).err().unwrap().key, "ca");
        let site = SiteTlsConfig {
            ca: Some(ca1.pem.display().to_string()),
            cert: Some(c.display().to_string()),
            ..Default::default()
        };
        assert_eq!(ClientTls::new(&site).err().unwrap().key, "key");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn host_names_of_addresses() {
        assert_eq!(host_of("broker-1.example:9093"), "broker-1.example");
        assert_eq!(host_of("127.0.0.1:9093"), "127.0.0.1");
        assert_eq!(host_of("[::1]:9093"), "::1");
    }

    /// A handshake over loopback: the server's certificate verified by the
    /// site side against the CA and the broker's name; with mTLS the
    /// client's certificate names its principal; a renewed certificate is
    /// served after `refresh` without touching the listener.
    #[tokio::test]
    async fn handshakes_mtls_and_reload() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let d = dir("handshake");
        let ca1 = ca(&d, "hs");
        let (c, k) = leaf(&d, &ca1, "localhost", &["localhost", "127.0.0.1"], false);
        let (cc, ck) = leaf(&d, &ca1, "orders-app", &[], false);
        let mut t = listener(&c, &k);
        t.client_auth = ClientAuth::Required;
        t.client_ca = Some(ca1.pem.display().to_string());
        let server = ServerTls::new("listen.tls", &t).unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let acceptor_server = server.clone();
        let accept = tokio::spawn(async move {
            let mut principals = Vec::new();
            for _ in 0..2 {
                let (s, _) = l.accept().await.unwrap();
                let mut tls = acceptor_server.acceptor().accept(s).await.unwrap();
                let (_, conn) = tls.get_ref();
                let leaf = conn.peer_certificates().and_then(|c| c.first().cloned());
                principals.push(leaf.and_then(|c| principal(&c, PrincipalFrom::SubjectCn)));
                let mut b = [0u8; 4];
                tls.read_exact(&mut b).await.unwrap();
                tls.write_all(&b).await.unwrap();
                tls.flush().await.unwrap();
            }
            principals
        });
        let site = ClientTls::new(&SiteTlsConfig {
            ca: Some(ca1.pem.display().to_string()),
            cert: Some(cc.display().to_string()),
            key: Some(ck.display().to_string()),
            server_name: None,
        })
        .unwrap();
        let mut serials = Vec::new();
        for round in 0..2 {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut tls = site
                .connect(&format!("localhost:{}", addr.port()), tcp)
                .await
                .unwrap();
            tls.write_all(b"ping").await.unwrap();
            tls.flush().await.unwrap();
            let mut b = [0u8; 4];
            tls.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
            let (_, conn) = tls.get_ref();
            let served = conn.peer_certificates().unwrap()[0].clone();
            serials.push(served);
            if round == 0 {
                assert!(!server.refresh(), "nothing changed yet");
                // A renewed certificate for the same name (written with a
                // later modification time, however coarse the clock).
                let (c2, k2) = leaf(&d, &ca1, "localhost", &["localhost", "127.0.0.1"], false);
                let later = SystemTime::now() + std::time::Duration::from_secs(2);
                for f in [&c2, &k2] {
                    let f = std::fs::File::options().write(true).open(f).unwrap();
                    f.set_modified(later).unwrap();
                }
                assert!(server.refresh(), "the renewed files are loaded");
            }
        }
        assert_ne!(
            serials[0], serials[1],
            "the second connection got the renewed certificate"
        );
        let principals = accept.await.unwrap();
        assert_eq!(principals, vec![Some("orders-app".to_string()); 2]);
        // A certificate for another name is refused by the site side.
        let wrong = ClientTls::new(&SiteTlsConfig {
            ca: Some(ca1.pem.display().to_string()),
            server_name: Some("broker.elsewhere".into()),
            ..Default::default()
        })
        .unwrap();
        let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a2 = l2.local_addr().unwrap();
        let plain = ServerTls::new("listen.tls", &listener(&c, &k)).unwrap();
        tokio::spawn(async move {
            let (s, _) = l2.accept().await.unwrap();
            let _ = plain.acceptor().accept(s).await;
        });
        let tcp = TcpStream::connect(a2).await.unwrap();
        let e = wrong.connect(&a2.to_string(), tcp).await.unwrap_err();
        assert!(e.to_string().contains("certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
