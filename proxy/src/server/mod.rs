//! The running proxy: shared state, listeners, and the shutdown sequence.
//!
//! `run` binds everything first (so a port clash fails fast, before any client
//! is served), then accepts until SIGTERM/SIGINT. Shutdown: stop accepting,
//! tell sessions to stop reading, let in-flight requests finish within
//! `timeouts.shutdown_grace_ms`, exit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::metrics::kind;
use crate::shared::{Listener, Loaded, Proxy};
use crate::{admin, session};

mod io_threads;
pub use io_threads::IoThreads;

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
pub async fn run(loaded: Loaded) -> anyhow::Result<()> {
    ensure_file_limit(loaded.cfg.config.limits.max_connections);
    let proxy = Proxy::new(loaded);
    let (stop_tx, stop_rx) = watch::channel(false);

    // Bind everything before serving anything.
    let mut listeners = Vec::new();
    for l in &proxy.listeners {
        let bootstrap = bind(l.identity.bootstrap_bind).await?;
        listeners.push((bootstrap, l.clone(), "bootstrap".to_string()));
        for n in l.identity.nodes.iter().filter(|_| !l.identity.shared_port) {
            listeners.push((
                bind(n.bind).await?,
                l.clone(),
                format!("node {}", n.node_id),
            ));
        }
    }
    let admin_listener = bind(proxy.cfg.admin_bind).await?;

    for site in proxy.plane.sites.iter() {
        tokio::spawn(site.clone().maintain(
            Duration::from_millis(proxy.cfg.config.metadata.refresh_interval_ms),
            stop_rx.clone(),
        ));
    }
    // Failover state first: a restart while failed over must not serve
    // (or tee from) the old primary for even a moment.
    proxy.plane.failover.start(stop_rx.clone()).await;
    // Plugins before the tee and before any client: a route's chain must be
    // runnable from its first batch.
    let c = &proxy.cfg.config;
    if !c.plugins.is_empty() {
        let Some(reg) = &proxy.plane.plugins else {
            anyhow::bail!("the config lists plugins but the WASM plugin host did not start");
        };
        if let Err(errs) = reg.apply_config(&c.plugins, &c.routes).await {
            anyhow::bail!("plugins did not load: {}", errs.join("; "));
        }
    }
    if let Some(reg) = &proxy.plane.plugins {
        proxy.plane.tee.set_plugins(reg.clone());
    }
    proxy.plane.tee.start(stop_rx.clone());
    tokio::spawn(reload_on_sighup(proxy.clone(), stop_rx.clone()));
    for l in proxy.listeners.iter() {
        if let Some(tls) = l.tls.clone() {
            tokio::spawn(refresh_files(
                Arc::new(move || tls.refresh()),
                stop_rx.clone(),
            ));
        }
        if let Some(sasl) = l.sasl.clone() {
            tokio::spawn(refresh_files(
                Arc::new(move || sasl.refresh()),
                stop_rx.clone(),
            ));
        }
    }
    if let Some(tls) = proxy.admin_tls.clone() {
        tokio::spawn(refresh_files(
            Arc::new(move || tls.refresh()),
            stop_rx.clone(),
        ));
    }
    let admin_task = tokio::spawn(admin::serve(proxy.clone(), admin_listener, stop_rx.clone()));

    // Every session holds a permit; getting all of them back at shutdown
    // means every session has finished.
    let max = proxy.cfg.config.limits.max_connections;
    let limit = Arc::new(Semaphore::new(max as usize));
    let io = Arc::new(IoThreads::start(io_thread_count(
        proxy.cfg.config.limits.io_threads,
    ))?);
    let mut accept_tasks = JoinSet::new();
    for (l, listener, name) in listeners {
        tracing::info!(listener = %listener.name, socket = %name, addr = %l.local_addr()?, "listening");
        let (proxy, stop, limit, io) = (proxy.clone(), stop_rx.clone(), limit.clone(), io.clone());
        accept_tasks.spawn(accept_loop(proxy, l, listener, stop, limit, io));
    }
    tracing::info!(
        cluster_id = %proxy.plane.identity.cluster_id,
        default_site = %proxy.plane.site.name,
        sites = proxy.plane.sites.len(),
        routes = proxy.plane.router.routes().len(),
        io_threads = io.len(),
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
    proxy.plane.tee.finish(Duration::from_secs(5)).await;
    // After the tee's last writes: a shared upstream connection a session
    // opened runs on that session's I/O thread.
    drop(io);
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

/// `limits.io_threads`, where 0 means one per CPU.
fn io_thread_count(configured: u32) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    }
}

/// Accepts until shutdown; each connection becomes a session task on one
/// of the I/O threads.
async fn accept_loop(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    which: Arc<Listener>,
    mut stop: watch::Receiver<bool>,
    limit: Arc<Semaphore>,
    io: Arc<IoThreads>,
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
            proxy.plane.metrics.error(kind::CONNECTION_LIMIT);
            tracing::warn!(client = %peer, limit = proxy.cfg.config.limits.max_connections,
                "refusing client connection: connection limit reached");
            drop(stream);
            continue;
        };
        proxy.connection_accepted();
        proxy.plane.metrics.client_connections_total.inc();
        proxy.plane.metrics.client_connections.inc();
        // Moved to its thread's reactor: registered there, not here.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                proxy.plane.metrics.client_connections.dec();
                tracing::warn!(client = %peer, error = %e, "accepted connection unusable");
                continue;
            }
        };
        let (proxy, stop, which) = (proxy.clone(), stop.clone(), which.clone());
        io.spawn(move || async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve_one(proxy.clone(), stream, peer, which, stop).await,
                Err(e) => {
                    tracing::warn!(client = %peer, error = %e, "accepted connection unusable")
                }
            }
            proxy.plane.metrics.client_connections.dec();
            drop(permit);
        });
    }
}

/// How long a client has to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a listener's certificate and credentials files are checked
/// for changes.
const FILES_REFRESH_EVERY: Duration = Duration::from_secs(10);

async fn serve_one(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = listener.tls.clone() else {
        tracing::debug!(client = %peer, listener = %listener.name, "client connected");
        session::serve(proxy, stream.into_split(), peer, listener, None, stop).await;
        tracing::debug!(client = %peer, "client disconnected");
        return;
    };
    let handshake =
        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream)).await;
    let stream = match handshake {
        Ok(Ok(s)) => s,
        // Closed before finishing a handshake (a load balancer's TCP health
        // check, a port scan): the client's business, not a TLS failure.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            proxy.plane.metrics.error(kind::CLIENT_IO);
            tracing::debug!(client = %peer, listener = %listener.name,
                "client closed the connection before a TLS handshake");
            return;
        }
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no handshake within {TLS_HANDSHAKE_TIMEOUT:?}"),
            };
            proxy.plane.metrics.error(kind::TLS_HANDSHAKE);
            proxy.plane.metrics.client_closed(kind::TLS_HANDSHAKE);
            tracing::debug!(client = %peer, listener = %listener.name, error = %why,
                "client TLS handshake failed; connection closed");
            return;
        }
    };
    // A client certificate names the principal (an X.509 parse, only for
    // clients that present one).
    let (_, session) = stream.get_ref();
    let principal: Option<Arc<str>> = session
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| crate::tls::principal(c, tls.principal_from()))
        .map(Arc::from);
    tracing::debug!(client = %peer, listener = %listener.name, tls = ?session.protocol_version(),
        sni = session.server_name().unwrap_or("-"),
        principal = principal.as_deref().unwrap_or("-"), "client connected");
    session::serve(
        proxy,
        tokio::io::split(stream),
        peer,
        listener,
        principal,
        stop,
    )
    .await;
    tracing::debug!(client = %peer, "client disconnected");
}

/// Re-reads a listener's security files when they change (`refresh`: TLS
/// certificates, SASL credentials), so a renewed certificate or a new user
/// takes effect without a restart; file reads off the async workers.
async fn refresh_files<F>(refresh: Arc<F>, mut stop: watch::Receiver<bool>)
where
    F: Fn() -> bool + Send + Sync + 'static,
{
    let mut every = tokio::time::interval(FILES_REFRESH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {
                let f = refresh.clone();
                let _ = tokio::task::spawn_blocking(move || f()).await;
            }
            _ = stop.changed() => return,
        }
    }
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

#[cfg(unix)]
async fn reload_on_sighup(p: Arc<Proxy>, mut stop: watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                if let Err(r) = crate::shared::reload(&p).await {
                    tracing::warn!(errors = ?r.errors, "reload not applied");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(_p: Arc<Proxy>, _stop: watch::Receiver<bool>) {}
