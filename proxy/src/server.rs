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
use crate::failover::Failover;
use crate::identity::Identity;
use crate::metrics::{kind, Metrics};
use crate::route::Router;
use crate::tee::Tee;
use crate::upstream::producer_ids::ProducerIds;
use crate::upstream::{Site, SiteSettings};
use crate::{admin, session};
use std::collections::HashMap;
use uuid::Uuid;

/// A client-facing listener: its name (for routes) and the virtual cluster
/// it presents (same cluster id and topic ids everywhere, its own endpoints).
pub struct Listener {
    pub name: String,
    pub identity: Arc<Identity>,
}

/// State shared by every connection.
pub struct Proxy {
    pub cfg: Validated,
    /// The main listener's identity (`listen`).
    pub identity: Arc<Identity>,
    pub listeners: Vec<Arc<Listener>>,
    /// Every configured site, in config order (indexes used by `route`).
    pub sites: Vec<Arc<Site>>,
    /// The site serving unrouted topics.
    pub site: Arc<Site>,
    pub router: Arc<Router>,
    pub tee: Arc<Tee>,
    pub failover: Arc<Failover>,
    pub producer_ids: Arc<ProducerIds>,
    /// WASM plugins (none when the plugin host could not start).
    pub plugins: Option<Arc<crate::plugin::registry::Registry>>,
    /// The config text last applied (start or reload).
    config_text: std::sync::Mutex<String>,
    pub metrics: Arc<Metrics>,
    pub started: Instant,
    /// Built once every site's versions are known.
    versions: ArcSwapOption<VersionTable>,
    /// Virtual topic id → virtual name, with the site generations it was built from.
    virtual_ids: ArcSwapOption<(Vec<u64>, HashMap<Uuid, String>)>,
    connections_total: AtomicU64,
}

impl Proxy {
    pub fn new(cfg: Validated) -> Arc<Self> {
        let c = &cfg.config;
        let listeners: Vec<Arc<Listener>> = cfg
            .listeners
            .iter()
            .map(|l| {
                Arc::new(Listener {
                    name: l.name.clone(),
                    identity: Arc::new(Identity::new(
                        &c.cluster_id,
                        l.bind,
                        &l.advertised_host,
                        c.listen.virtual_nodes,
                        c.listen.rack.clone(),
                    )),
                })
            })
            .collect();
        let identity = listeners[0].identity.clone();
        let metrics = Arc::new(Metrics::new());
        let sites: Vec<Arc<Site>> = c
            .sites
            .iter()
            .map(|s| {
                Site::new(
                    &s.name,
                    s.bootstrap.clone(),
                    SiteSettings {
                        connect_timeout: Duration::from_millis(c.timeouts.connect_ms),
                        request_timeout: Duration::from_millis(c.timeouts.request_ms),
                        max_frame_bytes: c.limits.max_frame_bytes,
                    },
                    metrics.clone(),
                )
            })
            .collect();
        let site = sites[cfg.active_site].clone();
        let router = cfg.router.clone();
        let tee = Tee::new(&cfg, &sites, metrics.clone());
        let producer_ids = Arc::new(ProducerIds::new());
        let failover = Failover::new(
            cfg.config.failover.clone(),
            router.clone(),
            tee.clone(),
            sites.clone(),
            producer_ids.clone(),
            metrics.clone(),
        );
        let plugins = match crate::plugin::Host::new(metrics.clone()) {
            Ok(host) => Some(crate::plugin::registry::Registry::new(
                host,
                c.sites
                    .iter()
                    .enumerate()
                    .map(|(i, s)| crate::plugin::Site {
                        id: i as u16,
                        name: s.name.clone(),
                        priority: s.priority,
                    })
                    .collect(),
                crate::plugin::conflict::Conflicts::new(sites.clone(), c.plugin_state.max_keys),
            )),
            Err(e) => {
                tracing::error!(error = %e, "WASM plugin host did not start; plugins are unavailable");
                None
            }
        };
        Arc::new(Proxy {
            config_text: std::sync::Mutex::new(cfg.text.clone()),
            plugins,
            cfg,
            identity,
            listeners,
            sites,
            site,
            router,
            tee,
            failover,
            producer_ids,
            metrics,
            started: Instant::now(),
            versions: ArcSwapOption::empty(),
            virtual_ids: ArcSwapOption::empty(),
            connections_total: AtomicU64::new(0),
        })
    }

    pub fn request_timeout(&self) -> Duration {
        self.site.settings.request_timeout
    }

    /// The virtual topic name behind a virtual topic id (Fetch v13+,
    /// Metadata v10+ by id). Ids are name-based, so the map is rebuilt from
    /// the sites' views whenever one of them changed, and once more on a miss.
    pub async fn topic_for_virtual_id(&self, id: &Uuid) -> Option<String> {
        if let Some(name) = self.lookup_virtual_id(id) {
            return Some(name);
        }
        for s in &self.sites {
            let _ = s.refresh().await;
        }
        self.lookup_virtual_id(id)
    }

    fn lookup_virtual_id(&self, id: &Uuid) -> Option<String> {
        let gens: Vec<u64> = self.sites.iter().map(|s| s.generation()).collect();
        if let Some(cached) = self.virtual_ids.load().as_ref() {
            if cached.0 == gens {
                return cached.1.get(id).cloned();
            }
        }
        let mut map = HashMap::new();
        for (i, s) in self.sites.iter().enumerate() {
            for phys in s.view().topics.keys() {
                for v in self.router.virtual_candidates(i, phys) {
                    map.insert(self.identity.topic_id(&v), v);
                }
            }
        }
        let found = map.get(id).cloned();
        self.virtual_ids.store(Some(Arc::new((gens, map))));
        found
    }

    pub fn connections_total(&self) -> u64 {
        self.connections_total.load(Ordering::Relaxed)
    }

    /// The versions clients may use. Until the upstream has told us its
    /// versions, a client asking waits (bounded) for a refresh; if the upstream
    /// stays silent it gets Switchyard's own table, and requests will fail
    /// upstream the way they would against a down broker.
    ///
    /// With several sites the table is the intersection over all of them
    /// (a request may be routed to any), built from the sites known so far and
    /// cached once all of them answered.
    pub async fn version_table(&self) -> Arc<VersionTable> {
        if let Some(t) = self.versions.load_full() {
            return t;
        }
        if self.site.versions().is_none() {
            let _ = self.site.refresh().await;
        }
        let known: Vec<_> = self.sites.iter().filter_map(|s| s.versions()).collect();
        if known.is_empty() {
            return Arc::new(VersionTable::build::<Arc<crate::upstream::ApiRanges>>(&[]));
        }
        let t = Arc::new(VersionTable::build(&known));
        if known.len() == self.sites.len() {
            self.versions.store(Some(t.clone()));
        }
        t
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
    for l in &proxy.listeners {
        let bootstrap = bind(l.identity.bootstrap_bind).await?;
        listeners.push((bootstrap, l.clone(), "bootstrap".to_string()));
        for n in &l.identity.nodes {
            listeners.push((
                bind(n.bind).await?,
                l.clone(),
                format!("node {}", n.node_id),
            ));
        }
    }
    let admin_listener = bind(proxy.cfg.admin_bind).await?;

    for site in &proxy.sites {
        tokio::spawn(site.clone().maintain(
            Duration::from_millis(proxy.cfg.config.metadata.refresh_interval_ms),
            stop_rx.clone(),
        ));
    }
    // Failover state first: a restart while failed over must not serve
    // (or tee from) the old primary for even a moment.
    proxy.failover.start(stop_rx.clone()).await;
    // Plugins before the tee and before any client: a route's chain must be
    // runnable from its first batch.
    let c = &proxy.cfg.config;
    if !c.plugins.is_empty() {
        let Some(reg) = &proxy.plugins else {
            anyhow::bail!("the config lists plugins but the WASM plugin host did not start");
        };
        if let Err(errs) = reg.apply_config(&c.plugins, &c.routes).await {
            anyhow::bail!("plugins did not load: {}", errs.join("; "));
        }
    }
    if let Some(reg) = &proxy.plugins {
        proxy.tee.set_plugins(reg.clone());
    }
    proxy.tee.start(stop_rx.clone());
    tokio::spawn(reload_on_sighup(proxy.clone(), stop_rx.clone()));
    let admin_task = tokio::spawn(admin::serve(proxy.clone(), admin_listener, stop_rx.clone()));

    // Every session holds a permit; getting all of them back at shutdown
    // means every session has finished.
    let max = proxy.cfg.config.limits.max_connections;
    let limit = Arc::new(Semaphore::new(max as usize));
    let mut accept_tasks = JoinSet::new();
    for (l, listener, name) in listeners {
        tracing::info!(listener = %listener.name, socket = %name, addr = %l.local_addr()?, "listening");
        let (proxy, stop, limit) = (proxy.clone(), stop_rx.clone(), limit.clone());
        accept_tasks.spawn(accept_loop(proxy, l, listener, stop, limit));
    }
    tracing::info!(
        cluster_id = %proxy.identity.cluster_id,
        default_site = %proxy.site.name,
        sites = proxy.sites.len(),
        routes = proxy.router.routes().len(),
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
    proxy.tee.finish(Duration::from_secs(5)).await;
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
    which: Arc<Listener>,
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
        let (proxy, stop, which) = (proxy.clone(), stop.clone(), which.clone());
        tokio::spawn(async move {
            serve_one(proxy.clone(), stream, peer, which, stop).await;
            proxy.metrics.client_connections.dec();
            drop(permit);
        });
    }
}

async fn serve_one(
    proxy: Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    stop: watch::Receiver<bool>,
) {
    tracing::debug!(client = %peer, listener = %listener.name, "client connected");
    session::serve(proxy, stream, peer, listener, stop).await;
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

/// What a reload did (`POST /api/v1/reload`, SIGHUP).
#[derive(Debug, serde::Serialize)]
pub struct ReloadReport {
    pub applied: bool,
    pub changes: Vec<String>,
    pub errors: Vec<String>,
    /// Top-level keys that changed but only take effect after a restart.
    pub restart_needed: Vec<String>,
}

/// Re-reads the config file and applies plugins and route plugin chains.
/// Nothing is applied when the file is invalid, a plugin does not load, or
/// anything else changed (routes could then be numbered differently).
pub async fn reload(p: &Proxy) -> Result<ReloadReport, ReloadReport> {
    let fail = |errors: Vec<String>, restart_needed: Vec<String>| ReloadReport {
        applied: false,
        changes: Vec::new(),
        errors,
        restart_needed,
    };
    let Some(path) = &p.cfg.path else {
        return Err(fail(
            vec!["started without a config file".into()],
            Vec::new(),
        ));
    };
    let new = match crate::config::load(path) {
        Ok(v) => v,
        Err(e) => {
            return Err(fail(
                e.0.iter().map(|e| e.to_string()).collect(),
                Vec::new(),
            ))
        }
    };
    let old = p.config_text.lock().map(|t| t.clone()).unwrap_or_default();
    let restart = crate::config::restart_needed(&old, &new.text);
    if !restart.is_empty() {
        return Err(fail(
            vec![format!(
                "changes to {} need a restart; nothing was applied",
                restart.join(", ")
            )],
            restart,
        ));
    }
    let Some(reg) = &p.plugins else {
        return Err(fail(
            vec!["the WASM plugin host did not start".into()],
            Vec::new(),
        ));
    };
    match reg
        .apply_config(&new.config.plugins, &new.config.routes)
        .await
    {
        Ok(changes) => {
            if let Ok(mut t) = p.config_text.lock() {
                *t = new.text;
            }
            tracing::info!(changes = ?changes, "config reloaded");
            Ok(ReloadReport {
                applied: true,
                changes,
                errors: Vec::new(),
                restart_needed: Vec::new(),
            })
        }
        Err(errors) => {
            tracing::warn!(errors = ?errors, "config reload refused");
            Err(fail(errors, Vec::new()))
        }
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
                if let Err(r) = reload(&p).await {
                    tracing::warn!(errors = ?r.errors, "reload not applied");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_sighup(_p: Arc<Proxy>, _stop: watch::Receiver<bool>) {}
