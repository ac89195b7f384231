//! State shared by every connection, and what builds and changes it:
//! the config ready to run ([`Loaded`]), the sites, routes, tee, failover
//! and plugins it makes ([`Proxy`]), the listeners' virtual clusters, and
//! reloads. `server` composes it with the listeners; `api`, `session` and
//! `admin` read it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use uuid::Uuid;

use crate::codec::versions::{ApiRanges, VersionTable};
use crate::config::{ConfigErrors, Validated};
use crate::failover::Failover;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::route::Router;
use crate::tee::Tee;
use crate::upstream::producer_ids::ProducerIds;
use crate::upstream::{Site, SiteSettings};

/// A client-facing listener: its name (for routes) and the virtual cluster
/// it presents (same cluster id and topic ids everywhere, its own endpoints).
pub struct Listener {
    pub name: String,
    pub identity: Arc<Identity>,
    /// Its TLS (`listen.tls`, `listeners[].tls`); `None`: plaintext.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// Its SASL (`listen.sasl`, `listeners[].sasl`); `None`: no authentication.
    pub sasl: Option<Arc<crate::sasl::ServerSasl>>,
}

/// A config ready to run: its fields and routes checked in one round, its
/// routing table built.
pub struct Loaded {
    pub cfg: Validated,
    pub router: Arc<Router>,
    pub tls: crate::tls::TlsSet,
    /// Per listener.
    pub sasl: Vec<Option<Arc<crate::sasl::ServerSasl>>>,
    /// Per site: how Switchyard (and mapped client principals)
    /// authenticate there.
    pub site_sasl: Vec<crate::sasl::client::SiteIdentities>,
    /// The `authorization` rules (`None`: not configured).
    pub authz: Option<crate::authz::Policy>,
}

impl Loaded {
    /// Reads a config file (`switchyard check` and `run`, reloads).
    pub fn file(path: &std::path::Path) -> Result<Loaded, ConfigErrors> {
        Self::routed(crate::config::load(path, Router::check)?)
    }

    /// Parses config text.
    pub fn text(text: &str) -> Result<Loaded, ConfigErrors> {
        Self::routed(crate::config::parse(text, Router::check)?)
    }

    /// Builds what runs from a checked config: the routing table and the
    /// TLS of every listener and site (their files read and checked), with
    /// every problem of both reported at once.
    fn routed(cfg: Validated) -> Result<Loaded, ConfigErrors> {
        let router = Router::build(&cfg.config, cfg.active_site);
        let tls = crate::tls::load(&cfg);
        let sasl = crate::sasl::load(&cfg);
        let site_sasl = crate::sasl::load_sites(&cfg);
        let authz = crate::authz::load(&cfg.config);
        match (router, tls, sasl, site_sasl, authz) {
            (Ok(router), Ok(tls), Ok(sasl), Ok(site_sasl), Ok(authz)) => Ok(Loaded {
                cfg,
                router: Arc::new(router),
                tls,
                sasl,
                site_sasl,
                authz,
            }),
            (r, t, s, ss, a) => Err(ConfigErrors(
                r.err()
                    .unwrap_or_default()
                    .into_iter()
                    .chain(t.err().unwrap_or_default())
                    .chain(s.err().unwrap_or_default())
                    .chain(ss.err().unwrap_or_default())
                    .chain(a.err().unwrap_or_default())
                    .collect(),
            )),
        }
    }
}

/// State shared by every connection: the data plane, and what only the
/// process needs (the config and its text for reloads, listeners, counters).
pub struct Proxy {
    pub plane: Arc<DataPlane>,
    pub cfg: Validated,
    pub listeners: Vec<Arc<Listener>>,
    /// The admin listener's TLS (`admin.tls`).
    pub admin_tls: Option<Arc<crate::tls::ServerTls>>,
    /// The config text last applied (start or reload).
    config_text: std::sync::Mutex<String>,
    pub started: Instant,
    connections_total: AtomicU64,
    /// `limits.max_request_bytes_in_flight`, shared by every client connection.
    pub frame_budget: crate::codec::frame_io::Budget,
}

/// What the data path reads: sites, routes, tee, failover, producer ids,
/// plugins, metrics, and the caches built from the sites' views. Request
/// handlers and pipeline stages get this (or the parts of it they use),
/// never the config or the process's own state.
pub struct DataPlane {
    /// The main listener's identity (`listen`).
    pub identity: Arc<Identity>,
    /// Every configured site, in config order (indexes used by `route`);
    /// shared, so that a request's answer stages take it without a copy.
    pub sites: Arc<[Arc<Site>]>,
    /// The site serving unrouted topics.
    pub site: Arc<Site>,
    pub router: Arc<Router>,
    pub tee: Arc<Tee>,
    pub failover: Arc<Failover>,
    pub producer_ids: Arc<ProducerIds>,
    /// WASM plugins (none when the plugin host could not start).
    pub plugins: Option<Arc<crate::plugin::registry::Registry>>,
    pub metrics: Arc<Metrics>,
    /// The `authorization` rules, asked by the pipeline's authorize stage.
    pub authz: Arc<crate::authz::Authorizer>,
    /// Built once every site's versions are known.
    versions: ArcSwapOption<VersionTable>,
    /// Virtual topic id → virtual name, with the site generations it was built from.
    virtual_ids: ArcSwapOption<(Vec<u64>, HashMap<Uuid, String>)>,
}

impl Proxy {
    pub fn new(
        Loaded {
            cfg,
            router,
            tls,
            sasl,
            site_sasl,
            authz,
        }: Loaded,
    ) -> Arc<Self> {
        let c = &cfg.config;
        let admin_tls = tls.admin.clone();
        let listeners: Vec<Arc<Listener>> = cfg
            .listeners
            .iter()
            .zip(tls.listeners)
            .zip(sasl)
            .map(|((l, tls), sasl)| {
                Arc::new(Listener {
                    tls,
                    sasl,
                    name: l.name.clone(),
                    identity: Arc::new({
                        let id = Identity::new(
                            &c.cluster_id,
                            l.bind,
                            &l.advertised_host,
                            c.listen.virtual_nodes,
                            c.listen.rack.clone(),
                        );
                        match l.tls.as_ref().and_then(|(_, t)| t.sni_domain.as_deref()) {
                            Some(domain) => id.with_sni(domain),
                            None => id,
                        }
                    }),
                })
            })
            .collect();
        let identity = listeners[0].identity.clone();
        let metrics = Arc::new(Metrics::new());
        let sites: Vec<Arc<Site>> = c
            .sites
            .iter()
            .zip(tls.sites)
            .zip(site_sasl)
            .map(|((s, site_tls), site_sasl)| {
                Site::new(
                    &s.name,
                    s.bootstrap.clone(),
                    SiteSettings {
                        connect_timeout: Duration::from_millis(c.timeouts.connect_ms),
                        request_timeout: Duration::from_millis(c.timeouts.request_ms),
                        max_frame_bytes: c.limits.max_frame_bytes,
                        tls: site_tls,
                        sasl: site_sasl.default,
                        principals: site_sasl.principals,
                    },
                    metrics.clone(),
                )
            })
            .collect();
        let site = sites[cfg.active_site].clone();
        let tee = Tee::new(&cfg, &router, &sites, metrics.clone());
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
        let plane = Arc::new(DataPlane {
            identity,
            sites: sites.into(),
            site,
            router,
            tee,
            failover,
            producer_ids,
            plugins,
            authz: Arc::new(crate::authz::Authorizer::new(authz, metrics.clone())),
            metrics,
            versions: ArcSwapOption::empty(),
            virtual_ids: ArcSwapOption::empty(),
        });
        Arc::new(Proxy {
            // A client's own request timeout has run out by the time its
            // frame waited this long for memory.
            frame_budget: crate::codec::frame_io::Budget::new(
                cfg.config.limits.max_request_bytes_in_flight,
                std::time::Duration::from_millis(cfg.config.timeouts.request_ms),
            ),
            config_text: std::sync::Mutex::new(cfg.text.clone()),
            plane,
            cfg,
            listeners,
            admin_tls,
            started: Instant::now(),
            connections_total: AtomicU64::new(0),
        })
    }

    pub fn connections_total(&self) -> u64 {
        self.connections_total.load(Ordering::Relaxed)
    }

    /// Counts a client connection accepted.
    pub fn connection_accepted(&self) {
        self.connections_total.fetch_add(1, Ordering::Relaxed);
    }
}

impl DataPlane {
    /// A site by index (indexes come from the router, so they are valid).
    pub fn site(&self, i: usize) -> Arc<Site> {
        self.sites.get(i).unwrap_or(&self.site).clone()
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
        for s in self.sites.iter() {
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
            return Arc::new(VersionTable::build::<Arc<ApiRanges>>(&[]));
        }
        let t = Arc::new(VersionTable::build(&known));
        if known.len() == self.sites.len() {
            self.versions.store(Some(t.clone()));
        }
        t
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
    let (new, authz) = match Loaded::file(path) {
        Ok(v) => (v.cfg, v.authz),
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
    let applied = match &p.plane.plugins {
        Some(reg) => {
            reg.apply_config(&new.config.plugins, &new.config.routes)
                .await
        }
        None if new.config.plugins.is_empty() => Ok(Vec::new()),
        None => Err(vec!["the WASM plugin host did not start".into()]),
    };
    match applied {
        Ok(mut changes) => {
            // Applied together with the plugins, never alone: a reload is
            // all or nothing.
            if authorization_changed(&old, &new.text) {
                changes.push(match &authz {
                    Some(a) => format!("authorization: {} rules", a.rules.len()),
                    None => "authorization: off".into(),
                });
            }
            p.plane.authz.set(authz);
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

/// Whether the `authorization` sections of two config texts differ.
fn authorization_changed(old: &str, new: &str) -> bool {
    let section = |text: &str| {
        serde_norway::from_str::<serde_norway::Value>(text)
            .ok()
            .and_then(|v| v.get("authorization").cloned())
    };
    section(old) != section(new)
}
