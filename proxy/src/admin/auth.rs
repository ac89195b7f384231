//! Who may use the admin API: HTTPS (`admin.tls`), bearer tokens
//! (`admin.token_file`) and client certificates (`admin.tls.client_auth`).
//!
//! `/healthz` and `/readyz` are always open (orchestrators probe them);
//! `/metrics` too with `admin.open_metrics`. Everything else (status,
//! failover and failback, plugins, reload) needs a token from the file or a
//! verified client certificate, once either is configured. With neither the
//! API is open, which the config allows only on a loopback bind.
//!
//! TLS handshakes run in their own tasks, a bounded number at once, so one
//! slow or silent client never holds up the accept loop.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

use crate::metrics::Metrics;
use crate::tls::ServerTls;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once; connections beyond wait in the
/// kernel's backlog.
const MAX_HANDSHAKES: usize = 64;
/// Refused requests are logged at most this often.
const DENIAL_LOG_GAP: Duration = Duration::from_secs(10);

/// A connection to the admin API: where from, and the verified client
/// certificate's principal if it showed one.
#[derive(Clone, Debug)]
pub struct AdminPeer {
    pub addr: SocketAddr,
    pub principal: Option<String>,
}

/// A finished handshake (`None`: it failed, its slot is free again).
type Handshaken = Option<(AdminIo, AdminPeer)>;

/// The admin listener: plain TCP, or TLS with handshakes off the accept loop.
pub struct AdminListener {
    tcp: TcpListener,
    tls: Option<Arc<ServerTls>>,
    done: (mpsc::Sender<Handshaken>, mpsc::Receiver<Handshaken>),
    handshakes: Arc<Semaphore>,
}

impl AdminListener {
    pub fn new(tcp: TcpListener, tls: Option<Arc<ServerTls>>) -> Self {
        AdminListener {
            tcp,
            tls,
            done: mpsc::channel(MAX_HANDSHAKES),
            handshakes: Arc::new(Semaphore::new(MAX_HANDSHAKES)),
        }
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = AdminIo;
    type Addr = AdminPeer;

    async fn accept(&mut self) -> (AdminIo, AdminPeer) {
        loop {
            let Some(tls) = self.tls.clone() else {
                match self.tcp.accept().await {
                    Ok((s, addr)) => {
                        return (
                            AdminIo::Plain(s),
                            AdminPeer {
                                addr,
                                principal: None,
                            },
                        )
                    }
                    Err(e) => {
                        accept_failed(e).await;
                        continue;
                    }
                }
            };
            let room = self.handshakes.available_permits() > 0;
            tokio::select! {
                done = self.done.1.recv() => {
                    if let Some(Some(conn)) = done {
                        return conn;
                    }
                    // A failed handshake freed its slot: accept again.
                }
                accepted = self.tcp.accept(), if room => {
                    let (s, addr) = match accepted {
                        Ok(x) => x,
                        Err(e) => {
                            accept_failed(e).await;
                            continue;
                        }
                    };
                    let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
                        continue;
                    };
                    let out = self.done.0.clone();
                    tokio::spawn(async move {
                        let _permit = permit;
                        let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(s)).await {
                            Ok(Ok(s)) => {
                                let principal = s
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .and_then(|c| crate::tls::principal(c, tls.principal_from()));
                                Some((AdminIo::Tls(Box::new(s)), AdminPeer { addr, principal }))
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(client = %addr, error = %e, "admin TLS handshake failed");
                                None
                            }
                            Err(_) => {
                                tracing::debug!(client = %addr, "admin TLS handshake timed out");
                                None
                            }
                        };
                        let _ = out.send(conn).await;
                    });
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<AdminPeer> {
        Ok(AdminPeer {
            addr: self.tcp.local_addr()?,
            principal: None,
        })
    }
}

/// Out of file descriptors and the like: wait a little rather than spin.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "admin listener accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

impl Connected<axum::serve::IncomingStream<'_, AdminListener>> for AdminPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, AdminListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// An admin connection's stream.
pub enum AdminIo {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for AdminIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AdminIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            AdminIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for AdminIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            AdminIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            AdminIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AdminIo::Plain(s) => Pin::new(s).poll_flush(cx),
            AdminIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            AdminIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            AdminIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The admin API's authorization: its tokens (re-read when the file
/// changes) and whether a client certificate suffices.
pub struct AdminAuth {
    token_file: Option<String>,
    tokens: Mutex<(Option<SystemTime>, Vec<String>)>,
    /// A verified client certificate authorizes (`admin.tls.client_auth`).
    certificates: bool,
    open_metrics: bool,
    metrics: Arc<Metrics>,
    last_denial_log: Mutex<Option<Instant>>,
}

impl AdminAuth {
    pub fn new(cfg: &crate::config::AdminConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let certificates = cfg
            .tls
            .as_ref()
            .is_some_and(|t| t.client_auth != crate::config::ClientAuth::None);
        let tokens = cfg
            .token_file
            .as_deref()
            .map(|f| {
                (
                    modified(f),
                    crate::config::admin_tokens(f).unwrap_or_default(),
                )
            })
            .unwrap_or((None, Vec::new()));
        Arc::new(AdminAuth {
            token_file: cfg.token_file.clone(),
            tokens: Mutex::new(tokens),
            certificates,
            open_metrics: cfg.open_metrics,
            metrics,
            last_denial_log: Mutex::new(None),
        })
    }

    /// Whether any authentication is configured (else the API is open).
    fn required(&self) -> bool {
        self.token_file.is_some() || self.certificates
    }

    fn open(&self, path: &str) -> bool {
        matches!(path, "/healthz" | "/readyz") || (self.open_metrics && path == "/metrics")
    }

    /// The tokens, re-read if the file changed (a file that became
    /// unusable keeps the last good tokens, and says so).
    fn tokens(&self) -> Vec<String> {
        let Some(path) = &self.token_file else {
            return Vec::new();
        };
        let Ok(mut t) = self.tokens.lock() else {
            return Vec::new();
        };
        let now = modified(path);
        if now != t.0 {
            match crate::config::admin_tokens(path) {
                Ok(tokens) => {
                    tracing::info!(file = %path, tokens = tokens.len(), "admin tokens re-read");
                    *t = (now, tokens);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin.token_file unusable; keeping the tokens read before");
                    t.0 = now;
                }
            }
        }
        t.1.clone()
    }

    /// Why a request is refused, if it is.
    fn refusal(
        &self,
        peer: &AdminPeer,
        path: &str,
        headers: &axum::http::HeaderMap,
    ) -> Option<&'static str> {
        if !self.required() || self.open(path) {
            return None;
        }
        if self.certificates && peer.principal.is_some() {
            return None;
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let Some(presented) = presented else {
            return Some("no credentials");
        };
        // Every token is compared, in constant time each, so the answer's
        // timing says nothing about which one nearly matched.
        let mut ok = false;
        for t in self.tokens() {
            ok |= bool::from(t.as_bytes().ct_eq(presented.as_bytes()));
        }
        (!ok).then_some("wrong token")
    }
}

fn modified(path: &str) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The middleware in front of every admin route.
pub async fn authorize(
    State(auth): State<Arc<AdminAuth>>,
    ConnectInfo(peer): ConnectInfo<AdminPeer>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    let Some(why) = auth.refusal(&peer, &path, req.headers()) else {
        return next.run(req).await;
    };
    auth.metrics
        .errors_total
        .with_label_values(&["admin_unauthorized"])
        .inc();
    let now = Instant::now();
    if let Ok(mut last) = auth.last_denial_log.lock() {
        if last.is_none_or(|t| now.duration_since(t) >= DENIAL_LOG_GAP) {
            *last = Some(now);
            tracing::warn!(client = %peer.addr, method = %req.method(), path, reason = why,
                "admin request refused (401)");
        }
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"switchyard\"")],
        axum::Json(serde_json::json!({ "error": format!("unauthorized: {why}") })),
    )
        .into_response()
}
