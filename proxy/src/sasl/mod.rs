//! SASL termination: Switchyard authenticates clients itself (PLAIN,
//! SCRAM-SHA-256, SCRAM-SHA-512) against a credentials file of salted SCRAM
//! credentials, one connection at a time ([`Conversation`]); the Kafka
//! messages around it (SaslHandshake, SaslAuthenticate, the gate before
//! authentication) are `api::sasl`'s.
//!
//! The credentials file (YAML), written by `switchyard credentials add`:
//!
//! ```yaml
//! users:
//!   alice:
//!     SCRAM-SHA-256: {salt: ..., iterations: 8192, stored_key: ..., server_key: ...}
//!     SCRAM-SHA-512: {...}
//! ```
//!
//! It holds no passwords. PLAIN is checked against the user's SCRAM
//! credential (SHA-256 first), so one file serves all three mechanisms. It
//! is re-read when it changes ([`ServerSasl::refresh`]): users added or
//! removed take effect for the next authentication.

pub mod client;
pub mod oauth;
pub mod scram;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use crate::config::{ListenerSaslConfig, SaslMechanism};
use scram::{Credential, Hash};

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default)]
    pub users: BTreeMap<String, BTreeMap<Hash, Credential>>,
}

impl Credentials {
    pub fn load(path: &str) -> Result<Credentials, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let c: Credentials = serde_norway::from_str(&text)
            .map_err(|e| format!("{path}: not a credentials file: {e}"))?;
        for (user, creds) in &c.users {
            for (hash, cred) in creds {
                if cred.iterations < Hash::MIN_ITERATIONS {
                    return Err(format!(
                        "{path}: user `{user}` {}: {} iterations, fewer than {}",
                        hash.mechanism(),
                        cred.iterations,
                        Hash::MIN_ITERATIONS
                    ));
                }
            }
        }
        Ok(c)
    }

    fn get(&self, user: &str, hash: Hash) -> Option<&Credential> {
        self.users.get(user)?.get(&hash)
    }
}

/// Adds (or replaces) `user` in the credentials file at `path` (created if
/// missing), with a credential per hash. The file is replaced atomically
/// and readable by its owner only.
pub fn add_user(
    path: &Path,
    user: &str,
    password: &[u8],
    hashes: &[Hash],
    iterations: u32,
) -> Result<(), String> {
    if user.is_empty() || user.contains(char::is_control) {
        return Err("a user name must not be empty or contain control characters".into());
    }
    if iterations < Hash::MIN_ITERATIONS {
        return Err(format!(
            "at least {} iterations, as Kafka requires",
            Hash::MIN_ITERATIONS
        ));
    }
    let mut c = if path.exists() {
        Credentials::load(&path.to_string_lossy())?
    } else {
        Credentials::default()
    };
    let entry = c.users.entry(user.to_string()).or_default();
    for h in hashes {
        entry.insert(*h, Credential::new(*h, password, iterations));
    }
    let text = serde_norway::to_string(&c).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        #[cfg(unix)]
        use std::os::unix::fs::OpenOptionsExt;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        #[cfg(unix)]
        o.mode(0o600);
        let mut f = o
            .open(&tmp)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

/// A listener's SASL: its mechanisms, session lifetime and credentials
/// (swapped when the file changes).
pub struct ServerSasl {
    key: String,
    cfg: ListenerSaslConfig,
    credentials: ArcSwap<Credentials>,
    stamp: Mutex<Option<SystemTime>>,
    /// OAUTHBEARER's token validation, when offered.
    oauth: Option<Arc<oauth::Validator>>,
}

impl ServerSasl {
    /// `key`: where it is configured (`listen.sasl`), for errors and logs.
    pub fn new(key: &str, cfg: &ListenerSaslConfig) -> Result<Arc<Self>, (&'static str, String)> {
        if cfg.mechanisms.is_empty() {
            return Err(("mechanisms", "at least one mechanism".into()));
        }
        let passwords = cfg
            .mechanisms
            .iter()
            .any(|m| *m != SaslMechanism::OauthBearer);
        let bearer = cfg.mechanisms.contains(&SaslMechanism::OauthBearer);
        let (stamp, credentials) = match (&cfg.credentials, passwords) {
            (Some(f), _) => (
                modified(f),
                Credentials::load(f).map_err(|e| ("credentials", e))?,
            ),
            (None, true) => {
                return Err((
                    "credentials",
                    "PLAIN and SCRAM need a credentials file".into(),
                ))
            }
            (None, false) => (None, Credentials::default()),
        };
        let oauth = match (&cfg.oauthbearer, bearer) {
            (Some(o), true) => Some(Arc::new(
                oauth::Validator::new(o).map_err(|e| ("oauthbearer.jwks_file", e))?,
            )),
            (None, true) => {
                return Err((
                    "oauthbearer",
                    "OAUTHBEARER needs `oauthbearer` (jwks_file, issuer, audience)".into(),
                ))
            }
            (Some(_), false) => {
                return Err((
                    "oauthbearer",
                    "set, but OAUTHBEARER is not among the mechanisms".into(),
                ))
            }
            (None, false) => None,
        };
        Ok(Arc::new(ServerSasl {
            key: key.to_string(),
            cfg: cfg.clone(),
            credentials: ArcSwap::from_pointee(credentials),
            stamp: Mutex::new(stamp),
            oauth,
        }))
    }

    pub fn mechanisms(&self) -> Vec<&'static str> {
        self.cfg.mechanisms.iter().map(|m| m.name()).collect()
    }

    /// The session lifetime given to clients (KIP-368); `None`: unlimited.
    pub fn session_lifetime(&self) -> Option<Duration> {
        (self.cfg.session_lifetime_ms > 0)
            .then(|| Duration::from_millis(self.cfg.session_lifetime_ms))
    }

    /// Re-reads the credentials file if it changed; a file that does not
    /// load keeps the previous users (logged). Reads a file: call it off the
    /// async workers.
    pub fn refresh(&self) -> bool {
        let keys = self.oauth.as_ref().is_some_and(|o| o.refresh());
        let Some(path) = &self.cfg.credentials else {
            return keys;
        };
        let now = modified(path);
        let Ok(mut stamp) = self.stamp.lock() else {
            return keys;
        };
        if *stamp == now {
            return keys;
        }
        match Credentials::load(path) {
            Ok(c) => {
                let users = c.users.len();
                self.credentials.store(Arc::new(c));
                *stamp = now;
                tracing::info!(listener_sasl = %self.key, users, "SASL credentials file changed; reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(listener_sasl = %self.key, error = %e,
                    "SASL credentials file changed but does not load; keeping the previous users");
                false
            }
        }
    }

    /// A new conversation for `mechanism` (as the client named it in
    /// SaslHandshake); `None` if this listener does not offer it.
    pub fn start(&self, mechanism: &str) -> Option<Conversation> {
        let m = *self.cfg.mechanisms.iter().find(|m| m.name() == mechanism)?;
        Some(Conversation {
            mechanism: m,
            credentials: self.credentials.load_full(),
            scram: None,
            oauth: self.oauth.clone(),
            bearer_refused: None,
        })
    }
}

/// Every listener's SASL, per `Validated::listeners` entry, loaded from a
/// checked config; one error per unusable block, under its config key.
pub fn load(
    cfg: &crate::config::Validated,
) -> Result<Vec<Option<Arc<ServerSasl>>>, Vec<crate::config::ConfigError>> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for l in &cfg.listeners {
        out.push(match &l.sasl {
            None => None,
            Some((at, s)) => match ServerSasl::new(at, s) {
                Ok(s) => Some(s),
                Err((key, reason)) => {
                    errors.push(crate::config::ConfigError {
                        key: format!("{at}.{key}"),
                        reason,
                    });
                    None
                }
            },
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Every site's identities (`sites[].sasl`, `sites[].principals`), in
/// config order; one error per unusable block, under its config key.
pub fn load_sites(
    cfg: &crate::config::Validated,
) -> Result<Vec<client::SiteIdentities>, Vec<crate::config::ConfigError>> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut load = |at: String, c: &crate::config::SiteSaslConfig| match client::ClientSasl::new(c)
    {
        Ok(c) => Some(Arc::new(c)),
        Err((key, reason)) => {
            errors.push(crate::config::ConfigError {
                key: format!("{at}.{key}"),
                reason,
            });
            None
        }
    };
    for (i, s) in cfg.config.sites.iter().enumerate() {
        let default = s
            .sasl
            .as_ref()
            .and_then(|c| load(format!("sites[{i}].sasl"), c));
        let principals = s
            .principals
            .iter()
            .filter_map(|(p, c)| {
                let name = p.strip_prefix("User:").unwrap_or(p).to_string();
                load(format!("sites[{i}].principals.\"{p}\""), c).map(|c| (name, c))
            })
            .collect();
        out.push(client::SiteIdentities {
            default,
            principals,
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn modified(path: &str) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// One authentication in progress on a connection.
pub struct Conversation {
    mechanism: SaslMechanism,
    credentials: Arc<Credentials>,
    scram: Option<scram::Server>,
    oauth: Option<Arc<oauth::Validator>>,
    /// OAUTHBEARER refused the token and sent its error challenge (RFC
    /// 7628): the client's next message only acknowledges it, and the
    /// authentication fails with this reason.
    bearer_refused: Option<String>,
}

/// What one client token leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes; the client has more to say.
    Continue(Vec<u8>),
    /// Authenticated as `principal` (the user name); send these bytes. The
    /// credential itself may end the session sooner than the listener's
    /// lifetime (an OAUTHBEARER token's expiry): `lifetime`.
    Done {
        principal: String,
        reply: Vec<u8>,
        lifetime: Option<Duration>,
    },
    /// Authentication failed; the message is for the client (it never says
    /// whether the user exists).
    Failed(String),
}

impl Conversation {
    pub fn mechanism(&self) -> SaslMechanism {
        self.mechanism
    }

    /// Takes the client's next token. PLAIN derives a salted password
    /// (PBKDF2): the caller runs this off the async workers for PLAIN.
    pub fn step(&mut self, token: &[u8]) -> Step {
        let failed = |m: &str| Step::Failed(format!("Authentication failed: {m}"));
        let invalid = || {
            Step::Failed(format!(
                "Authentication failed during authentication due to invalid credentials with SASL mechanism {}",
                self.mechanism.name()
            ))
        };
        match self.mechanism {
            SaslMechanism::Plain => {
                // authzid NUL authcid NUL password
                let mut parts = token.split(|b| *b == 0);
                let (Some(authz), Some(user), Some(password), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return failed("PLAIN expects authzid, user and password separated by NUL");
                };
                let Ok(user) = std::str::from_utf8(user) else {
                    return invalid();
                };
                if !authz.is_empty() && authz != user.as_bytes() {
                    return failed("an authorization id other than the user is not supported");
                }
                let cred = [Hash::Sha256, Hash::Sha512]
                    .into_iter()
                    .find_map(|h| self.credentials.get(user, h).map(|c| (h, c)));
                match cred {
                    Some((h, c)) if c.verify_password(h, password) => Step::Done {
                        principal: user.to_string(),
                        reply: Vec::new(),
                        lifetime: None,
                    },
                    _ => invalid(),
                }
            }
            SaslMechanism::OauthBearer => {
                if let Some(why) = self.bearer_refused.take() {
                    return failed(&why);
                }
                let Some(validator) = &self.oauth else {
                    return failed("OAUTHBEARER is not configured");
                };
                let Some(jwt) = oauth::bearer(token) else {
                    return failed("OAUTHBEARER expects `n,,^Aauth=Bearer <token>^A^A`");
                };
                match validator.validate(jwt) {
                    Ok(t) => Step::Done {
                        principal: t.principal,
                        reply: Vec::new(),
                        lifetime: Some(t.remaining),
                    },
                    Err(why) => {
                        tracing::debug!(reason = %why, "OAUTHBEARER token refused");
                        // RFC 7628: an error challenge the client answers with
                        // ^A; the reason goes into the failure that follows.
                        self.bearer_refused = Some(why);
                        Step::Continue(br#"{"status":"invalid_token"}"#.to_vec())
                    }
                }
            }
            SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
                let hash = if self.mechanism == SaslMechanism::ScramSha256 {
                    Hash::Sha256
                } else {
                    Hash::Sha512
                };
                match self.scram.take() {
                    None => {
                        let first = match scram::ClientFirst::parse(token) {
                            Ok(f) => f,
                            Err(scram::Failure::Malformed(m)) => return failed(&m),
                            Err(scram::Failure::BadCredentials) => return invalid(),
                        };
                        let Some(cred) = self.credentials.get(&first.user, hash).cloned() else {
                            tracing::debug!(user = %first.user, mechanism = hash.mechanism(),
                                "SCRAM for a user without such a credential");
                            return invalid();
                        };
                        let (server, reply) = scram::Server::start(hash, first, cred);
                        self.scram = Some(server);
                        Step::Continue(reply)
                    }
                    Some(server) => {
                        let user = server.user().to_string();
                        match server.finish(token) {
                            Ok(reply) => Step::Done {
                                principal: user,
                                reply,
                                lifetime: None,
                            },
                            Err(scram::Failure::Malformed(m)) => failed(&m),
                            Err(scram::Failure::BadCredentials) => invalid(),
                        }
                    }
                }
            }
        }
    }
}

/// Where a connection stands with SASL (listeners with `sasl` only).
pub enum Auth {
    /// Nothing yet: ApiVersions and SaslHandshake only.
    Start,
    /// SaslHandshake chose a mechanism; SaslAuthenticate tokens follow.
    Talking(Conversation),
    /// Authenticated; `until` is when the session ends (KIP-368). During a
    /// re-authentication `again` holds its conversation, and requests keep
    /// flowing under the current session.
    Done {
        principal: Arc<str>,
        mechanism: SaslMechanism,
        until: Option<Instant>,
        again: Option<Conversation>,
    },
    /// Authentication failed: the connection is closed at its next request.
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("users.yaml");
        add_user(
            &p,
            "alice",
            b"alice-secret",
            &[Hash::Sha256, Hash::Sha512],
            4096,
        )
        .unwrap();
        add_user(&p, "bob", b"bob-secret", &[Hash::Sha512], 4096).unwrap();
        p
    }

    fn sasl(path: &Path, mechanisms: Vec<SaslMechanism>) -> Arc<ServerSasl> {
        ServerSasl::new(
            "listen.sasl",
            &ListenerSaslConfig {
                mechanisms,
                credentials: Some(path.display().to_string()),
                oauthbearer: None,
                session_lifetime_ms: 0,
            },
        )
        .unwrap()
    }

    #[test]
    fn plain_against_scram_credentials() {
        let d = std::env::temp_dir().join(format!("switchyard-sasl-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = file(&d);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains("secret"), "no password in the file:\n{text}");
        let s = sasl(&p, vec![SaslMechanism::Plain]);
        assert!(
            s.start("SCRAM-SHA-256").is_none(),
            "only what is configured"
        );
        for (token, ok) in [
            (&b"\0alice\0alice-secret"[..], true),
            (b"alice\0alice\0alice-secret", true),
            (b"\0bob\0bob-secret", true),
            (b"\0alice\0wrong", false),
            (b"\0nobody\0x", false),
            (b"mallory\0alice\0alice-secret", false),
            (b"no separators", false),
        ] {
            let got = s.start("PLAIN").unwrap().step(token);
            assert_eq!(matches!(got, Step::Done { .. }), ok, "{token:?}: {got:?}");
        }
        // A user added later is known after a refresh.
        add_user(&p, "carol", b"carol-secret", &[Hash::Sha256], 4096).unwrap();
        let later = SystemTime::now() + Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(s.refresh());
        let got = s.start("PLAIN").unwrap().step(b"\0carol\0carol-secret");
        assert!(matches!(got, Step::Done { .. }), "{got:?}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn scram_needs_the_users_credential_for_that_hash() {
        let d = std::env::temp_dir().join(format!("switchyard-sasl-scram-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = file(&d);
        let s = sasl(
            &p,
            vec![SaslMechanism::ScramSha256, SaslMechanism::ScramSha512],
        );
        // bob has SHA-512 only.
        let mut c = s.start("SCRAM-SHA-256").unwrap();
        assert!(
            matches!(c.step(b"n,,n=bob,r=abc"), Step::Failed(m) if m.contains("invalid credentials"))
        );
        let mut c = s.start("SCRAM-SHA-512").unwrap();
        assert!(matches!(c.step(b"n,,n=bob,r=abc"), Step::Continue(_)));
        // Malformed client messages are named.
        let mut c = s.start("SCRAM-SHA-256").unwrap();
        assert!(matches!(c.step(b"garbage"), Step::Failed(m) if m.contains("GS2")));
        let _ = std::fs::remove_dir_all(&d);
    }
}
