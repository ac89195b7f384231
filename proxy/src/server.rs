//! The running proxy: shared state, listeners, and the shutdown sequence.
//!
//! `run` binds everything first (so a port clash fails fast, before any client
//! is served), then accepts until SIGTERM/SIGINT. Shutdown: stop accepting,
//! tell sessions to stop reading, let in-flight requests finish within
//! `timeouts.shutdown_grace_ms`, exit.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::api::versions::VersionTable;
use crate::config::Validated;
use crate::identity::Identity;
use crate::metrics::{kind, Metrics};
use crate::upstream::{Site, SiteSettings};
use crate::{admin, session};

/// State shared by every connection.
pub struct Proxy {
    pub cfg: Validated,
    pub identity: Arc<Identity>,
    pub site: Arc<Site>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// Built once the upstream's versions are known.
    versions: ArcSwapOption<VersionTable>,
    connections_total: AtomicU64,
}

impl Proxy {
    pub fn new(cfg: Validated) -> Arc<Self> {
        let c = &cfg.config;
        let identity = Arc::new(Identity::new(
            &c.cluster_id,
            cfg.bootstrap_bind,
            &cfg.advertised_host,
            c.listen.virtual_nodes,
            c.listen.rack.clone(),
        ));
        let metrics = Arc::new(Metrics::new());
        let site_cfg = cfg.active_site();
        let site = Arc::new(Site::new(
            &site_cfg.name,
            site_cfg.bootstrap.clone(),
            SiteSettings {
                connect_timeout: Duration::from_millis(c.timeouts.connect_ms),
                request_timeout: Duration::from_millis(c.timeouts.request_ms),
                max_frame_bytes: c.limits.max_frame_bytes,
            },
            identity.clone(),
            metrics.clone(),
        ));
        Arc::new(Proxy {
            cfg,
            identity,
            site,
            metrics,
            started: Instant::now(),
            versions: ArcSwapOption::empty(),
            connections_total: AtomicU64::new(0),
        })
    }

    pub fn request_timeout(&self) -> Duration {
        self.site.settings.request_timeout
    }

    pub fn connections_total(&self) -> u64 {
        self.connections_total.load(Ordering::Relaxed)
    }

    /// The versions clients may use. Until the upstream has told us its
    /// versions, a client asking waits (bounded) for a refresh; if the upstream
    /// stays silent it gets Switchyard's own table, and requests will fail
    /// upstream the way they would against a down broker.
    pub async fn version_table(&self) -> Arc<VersionTable> {
        if let Some(t) = self.versions.load_full() {
            return t;
        }
        if self.site.versions().is_none() {
            let _ = self.site.refresh().await;
        }
        match self.site.versions() {
            Some(up) => {
                let t = Arc::new(VersionTable::build(Some(&up)));
                self.versions.store(Some(t.clone()));
                t
            }
            None => Arc::new(VersionTable::build(None)),
        }
    }
}

/// Raises the open-file soft limit to the hard limit, and warns when even
/// that cannot hold `max_connections` clients: each client socket can come
/// with one upstream socket per broker it talks to, and running out of file
/// descriptors under load fails accepts and upstream connects alike.
fn ensure_file_limit(max_connections: u32) {
    let want = u64::from(max_connections) * 2 + 256;
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if limit < want => tracing::warn!(
            open_file_limit = limit,
            max_connections,
            "open-file limit is below 2 x limits.max_connections + 256; raise it (ulimit -n, LimitNOFILE=) or lower limits.max_connections"
        ),
        Ok(limit) => tracing::debug!(open_file_limit = limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not read or raise the open-file limit"),
    }
}

/// Runs the proxy until a shutdown signal. Returns after a clean shutdown.
pub async fn run(cfg: Validated) -> anyhow::Result<()> {
    ensure_file_limit(cfg.config.limits.max_connections);
    let proxy = Proxy::new(cfg);
    let (stop_tx, stop_rx) = watch::channel(false);

    // Bind everything before serving anything.
    let mut listeners = Vec::new();
    let bootstrap = bind(proxy.identity.bootstrap_bind).await?;
    listeners.push((bootstrap, "bootstrap".to_string()));
    for n in &proxy.identity.nodes {
        listeners.push((bind(n.bind).await?, format!("node {}", n.node_id)));
    }
    let admin_listener = bind(proxy.cfg.admin_bind).await?;

    tokio::spawn(proxy.site.clone().maintain(
        Duration::from_millis(proxy.cfg.config.metadata.refresh_interval_ms),
        stop_rx.clone(),
    ));
    let admin_task = tokio::spawn(admin::serve(proxy.clone(), admin_listener, stop_rx.clone()));

    // Every session holds a permit; getting all of them back at shutdown
    // means every session has finished.
    let max = proxy.cfg.config.limits.max_connections;
    let limit = Arc::new(Semaphore::new(max as usize));
    let mut accept_tasks = JoinSet::new();
    for (l, name) in listeners {
        tracing::info!(listener = %name, addr = %l.local_addr()?, "listening");
        let (proxy, stop, limit) = (proxy.clone(), stop_rx.clone(), limit.clone());
        accept_tasks.spawn(accept_loop(proxy, l, stop, limit));
    }
    tracing::info!(
        cluster_id = %proxy.identity.cluster_id,
        site = %proxy.site.name,
        admin = %proxy.cfg.admin_bind,
        version = env!("CARGO_PKG_VERSION"),
        "switchyard started"
    );

    shutdown_signal().await;
    tracing::info!("shutdown requested: no new connections, finishing in-flight requests");
    let _ = stop_tx.send(true);
    while accept_tasks.join_next().await.is_some() {}
    // Sessions stop reading on the signal and flush within the grace period;
    // one extra second covers the last writes.
    let grace = Duration::from_millis(proxy.cfg.config.timeouts.shutdown_grace_ms);
    let drained =
        tokio::time::timeout(grace + Duration::from_secs(1), limit.acquire_many(max)).await;
    if drained.is_err() {
        tracing::warn!("shutdown grace expired with sessions still open; closing them");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    tracing::info!("switchyard stopped");
    Ok(())
}

/// Listen backlog: room for a reconnect storm (every client of a site coming
/// back at once after a failover) without SYN drops, which cost clients a
/// one-second retransmit each.
const LISTEN_BACKLOG: u32 = 1024;

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let err = |e: std::io::Error| anyhow::anyhow!("cannot listen on {addr}: {e}");
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(err)?;
    // Restarting must not wait for TIME_WAIT sockets of the previous process.
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(LISTEN_BACKLOG).map_err(err)
}

/// Accepts until shutdown; each connection becomes a session task.
async fn accept_loop(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    limit: Arc<Semaphore>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            proxy.metrics.error(kind::CONNECTION_LIMIT);
            tracing::warn!(client = %peer, limit = proxy.cfg.config.limits.max_connections,
                "refusing client connection: connection limit reached");
            drop(stream);
            continue;
        };
        proxy.connections_total.fetch_add(1, Ordering::Relaxed);
        proxy.metrics.client_connections_total.inc();
        proxy.metrics.client_connections.inc();
        let (proxy, stop) = (proxy.clone(), stop.clone());
        tokio::spawn(async move {
            serve_one(proxy.clone(), stream, peer, stop).await;
            proxy.metrics.client_connections.dec();
            drop(permit);
        });
    }
}

async fn serve_one(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    tracing::debug!(client = %peer, "client connected");
    session::serve(proxy, stream, peer, stop).await;
    tracing::debug!(client = %peer, "client disconnected");
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
