//! SASL as a client: how Switchyard authenticates to a site's brokers
//! (`sites[].sasl`), on every connection it opens there. The Kafka messages
//! around it (SaslHandshake, SaslAuthenticate over a fresh connection) are
//! `upstream::auth`'s; this module holds the credentials and computes each
//! mechanism's messages.
//!
//! Secrets are never in the config and never logged: a password comes from
//! an environment variable (read once, at load) or a file, and a token from
//! a file or a command; files and commands are read again for new
//! connections, so a rotated secret is used without a restart.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{SiteSaslConfig, SiteSaslMechanism};
use crate::sasl::scram;

/// How long a token command may run.
const TOKEN_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Who Switchyard is on a site: its own identity (`sites[].sasl`), and the
/// identities of client principals mapped to their own
/// (`sites[].principals`).
#[derive(Default, Clone)]
pub struct SiteIdentities {
    pub default: Option<Arc<ClientSasl>>,
    /// By principal name (`User:` taken off).
    pub principals: std::collections::HashMap<String, Arc<ClientSasl>>,
}

/// A site's SASL credentials.
pub struct ClientSasl {
    mechanism: SiteSaslMechanism,
    username: String,
    secret: Secret,
}

enum Secret {
    /// From the environment, read at load.
    Password(String),
    PasswordFile(String),
    TokenFile(String),
    TokenCommand {
        argv: Vec<String>,
        reuse: Duration,
        last: Mutex<Option<(Instant, String)>>,
    },
}

impl std::fmt::Debug for ClientSasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientSasl({} as {:?})",
            self.mechanism.name(),
            self.username
        )
    }
}

/// The messages of one authentication, in order: `first` is sent, each
/// server answer goes to `next` until it says done.
pub enum Exchange {
    /// One message, no answer to check (PLAIN, OAUTHBEARER).
    Single,
    Scram {
        client: scram::Client,
        password: String,
        fin: Option<scram::ClientFinal>,
    },
}

/// What to do after a server message.
pub enum Next {
    Send(Vec<u8>),
    Done,
}

impl ClientSasl {
    /// From a checked `sites[].sasl` block: the config's validation
    /// already named missing keys, unset variables and unreadable files
    /// (`config::site_sasl_problems`), so nothing is read twice here.
    pub fn new(cfg: &SiteSaslConfig) -> Result<ClientSasl, (&'static str, String)> {
        let secret = match cfg.mechanism {
            SiteSaslMechanism::OauthBearer => match (&cfg.token_file, &cfg.token_command) {
                (Some(f), None) => Secret::TokenFile(f.clone()),
                (None, Some(argv)) if !argv.is_empty() => Secret::TokenCommand {
                    argv: argv.clone(),
                    reuse: Duration::from_millis(cfg.token_refresh_ms),
                    last: Mutex::new(None),
                },
                _ => {
                    return Err((
                        "token_file",
                        "exactly one of token_file and token_command".into(),
                    ))
                }
            },
            _ => match (&cfg.password_env, &cfg.password_file) {
                (Some(var), None) => Secret::Password(std::env::var(var).map_err(|_| {
                    (
                        "password_env",
                        format!("environment variable `{var}` is not set"),
                    )
                })?),
                (None, Some(f)) => Secret::PasswordFile(f.clone()),
                _ => {
                    return Err((
                        "password_env",
                        "exactly one of password_env and password_file".into(),
                    ))
                }
            },
        };
        Ok(ClientSasl {
            mechanism: cfg.mechanism,
            username: cfg.username.clone().unwrap_or_default(),
            secret,
        })
    }

    pub fn mechanism(&self) -> &'static str {
        self.mechanism.name()
    }

    pub fn username(&self) -> &str {
        &self.username
    }

    /// Starts an authentication: its first message. Reads the secret's
    /// file or runs its command (blocking: call it off the async workers).
    pub fn start(&self) -> Result<(Exchange, Vec<u8>), String> {
        match self.mechanism {
            SiteSaslMechanism::Plain => {
                let pw = self.password()?;
                let mut m = Vec::with_capacity(self.username.len() + pw.len() + 2);
                m.push(0);
                m.extend_from_slice(self.username.as_bytes());
                m.push(0);
                m.extend_from_slice(pw.as_bytes());
                Ok((Exchange::Single, m))
            }
            SiteSaslMechanism::ScramSha256 | SiteSaslMechanism::ScramSha512 => {
                let hash = if self.mechanism == SiteSaslMechanism::ScramSha256 {
                    scram::Hash::Sha256
                } else {
                    scram::Hash::Sha512
                };
                let password = self.password()?;
                let (client, first) = scram::Client::start(hash, &self.username);
                Ok((
                    Exchange::Scram {
                        client,
                        password,
                        fin: None,
                    },
                    first,
                ))
            }
            SiteSaslMechanism::OauthBearer => {
                let token = self.token()?;
                // RFC 7628 initial client response, as Kafka's clients send it.
                Ok((
                    Exchange::Single,
                    format!("n,,\x01auth=Bearer {token}\x01\x01").into_bytes(),
                ))
            }
        }
    }

    fn password(&self) -> Result<String, String> {
        match &self.secret {
            Secret::Password(p) => Ok(p.clone()),
            Secret::PasswordFile(f) => read_secret(f),
            _ => Err("no password configured".into()),
        }
    }

    fn token(&self) -> Result<String, String> {
        let token = match &self.secret {
            Secret::TokenFile(f) => read_secret(f)?,
            Secret::TokenCommand { argv, reuse, last } => {
                if let Ok(l) = last.lock() {
                    if let Some((_, t)) = l.as_ref().filter(|(at, _)| at.elapsed() < *reuse) {
                        return Ok(t.clone());
                    }
                }
                let t = run_token_command(argv)?;
                if let Ok(mut l) = last.lock() {
                    *l = Some((Instant::now(), t.clone()));
                }
                t
            }
            _ => return Err("no token configured".into()),
        };
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("the token is empty or has spaces or control characters".into());
        }
        Ok(token)
    }
}

impl Exchange {
    /// The server's answer to our last message. Slow for SCRAM (PBKDF2):
    /// call it off the async workers.
    pub fn next(&mut self, server: &[u8]) -> Result<Next, String> {
        match self {
            Exchange::Single => Ok(Next::Done),
            Exchange::Scram {
                client,
                password,
                fin,
            } => match fin {
                None => {
                    let f = client
                        .answer(server, password.as_bytes())
                        .map_err(scram_failure)?;
                    let msg = f.message.clone();
                    *fin = Some(f);
                    Ok(Next::Send(msg))
                }
                Some(f) => {
                    f.verify(server).map_err(scram_failure)?;
                    Ok(Next::Done)
                }
            },
        }
    }
}

fn scram_failure(f: scram::Failure) -> String {
    match f {
        scram::Failure::Malformed(m) => format!("SCRAM: {m}"),
        scram::Failure::BadCredentials => "SCRAM: bad credentials".into(),
    }
}

/// A secret file's content, without its trailing newline.
fn read_secret(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let s = text.trim_end_matches(['\n', '\r']).to_string();
    if s.is_empty() {
        return Err(format!("{path} is empty"));
    }
    Ok(s)
}

/// Runs a token command (no shell) with a time limit; its stdout, trimmed.
fn run_token_command(argv: &[String]) -> Result<String, String> {
    let (prog, args) = argv.split_first().ok_or("token_command is empty")?;
    let mut child = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("token_command `{prog}`: {e}"))?;
    let deadline = Instant::now() + TOKEN_COMMAND_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut out = String::new();
                if let Some(mut o) = child.stdout.take() {
                    use std::io::Read;
                    // A token is small; more than this is not one.
                    let _ = (&mut o).take(64 * 1024).read_to_string(&mut out);
                }
                if !status.success() {
                    return Err(format!("token_command `{prog}` failed: {status}"));
                }
                return Ok(out.trim().to_string());
            }
            Ok(None) if Instant::now() < deadline => {
                // A blocking-pool thread waiting for a child: polled, as
                // std offers no wait with a timeout.
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "token_command `{prog}` did not finish within {TOKEN_COMMAND_TIMEOUT:?}"
                ));
            }
            Err(e) => return Err(format!("token_command `{prog}`: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh scratch directory, removed when dropped.
    struct Scratch(std::path::PathBuf);
    impl Scratch {
        fn new(name: &str) -> Scratch {
            let d = std::env::temp_dir().join(format!(
                "switchyard-sasl-client-{name}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
        fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn cfg(mechanism: SiteSaslMechanism) -> SiteSaslConfig {
        SiteSaslConfig {
            mechanism,
            token_refresh_ms: 60_000,
            ..Default::default()
        }
    }

    #[test]
    fn plain_sends_user_and_password_from_a_file_read_each_time() {
        let dir = Scratch::new("plain");
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret\n").unwrap();
        let mut c = cfg(SiteSaslMechanism::Plain);
        c.username = Some("sy".into());
        c.password_file = Some(f.to_string_lossy().into_owned());
        let sasl = ClientSasl::new(&c).unwrap();
        assert_eq!(sasl.start().unwrap().1, b"\0sy\0s3cret");
        std::fs::write(&f, "rotated").unwrap();
        assert_eq!(sasl.start().unwrap().1, b"\0sy\0rotated");
        assert!(
            !format!("{sasl:?}").contains("rotated"),
            "no secret in Debug"
        );
    }

    #[test]
    fn oauthbearer_sends_the_token_of_a_command_and_reuses_it() {
        let dir = Scratch::new("bearer");
        let counter = dir.path().join("n");
        let mut c = cfg(SiteSaslMechanism::OauthBearer);
        c.token_command = Some(vec![
            "sh".into(),
            "-c".into(),
            format!(
                "echo x >> {0}; echo tok.$(wc -l < {0} | tr -d ' ')",
                counter.display()
            ),
        ]);
        let sasl = ClientSasl::new(&c).unwrap();
        let first = sasl.start().unwrap().1;
        assert_eq!(first, b"n,,\x01auth=Bearer tok.1\x01\x01");
        assert_eq!(
            sasl.start().unwrap().1,
            first,
            "reused within token_refresh_ms"
        );

        c.token_command = Some(vec!["false".into()]);
        let failing = ClientSasl::new(&c).unwrap();
        assert!(failing.start().err().unwrap().contains("failed"));
    }
}
