//! The loaded plugins by name, and which route runs which of them, each
//! behind an arc-swap: the data path takes a snapshot per batch, so a batch
//! runs entirely on the versions it started with, and an upload, removal or
//! config reload never waits for (or drops) a connection.
//!
//! Where versions come from:
//! * `plugins[]` of the config, at start (all must load, or Switchyard does
//!   not start) and on a reload (entries whose settings or file changed are
//!   loaded again; a failure keeps the running version and is reported);
//! * `PUT /api/v1/plugins/{name}`: a new version under any name, serving
//!   until the next upload or a reload that changed that name's entry.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use super::conflict::Conflicts;
use super::{FailurePolicy, Host, Limits, LoadError, Loaded, Site};
use crate::config::{PluginConfig, RouteConfig};

pub use crate::config::{valid_plugin_name as valid_name, MAX_PLUGIN_BYTES};

/// Plugin names per route and stage, in run order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteChains {
    pub produce: Vec<String>,
    pub fetch: Vec<String>,
    /// Per tee target of the route, in config order.
    pub tee: Vec<Vec<String>>,
}

#[derive(Debug, Default)]
struct Bindings {
    routes: Vec<RouteChains>,
    any_produce: bool,
    any_fetch: bool,
}

impl Bindings {
    fn from_routes(routes: &[RouteConfig]) -> Self {
        let routes: Vec<RouteChains> = routes
            .iter()
            .map(|r| RouteChains {
                produce: r.plugins.produce.clone(),
                fetch: r.plugins.fetch.clone(),
                tee: r.tee.iter().map(|t| t.plugins.clone()).collect(),
            })
            .collect();
        Bindings {
            any_produce: routes.iter().any(|r| !r.produce.is_empty()),
            any_fetch: routes.iter().any(|r| !r.fetch.is_empty()),
            routes,
        }
    }

    fn users(&self, name: &str, route_names: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let route = route_names.get(i).map(String::as_str).unwrap_or("?");
            if r.produce.iter().any(|n| n == name) {
                out.push(format!("route {route} (produce)"));
            }
            if r.fetch.iter().any(|n| n == name) {
                out.push(format!("route {route} (fetch)"));
            }
            for (k, t) in r.tee.iter().enumerate() {
                if t.iter().any(|n| n == name) {
                    out.push(format!("route {route} (tee[{k}])"));
                }
            }
        }
        out
    }
}

/// Which chain of a route.
#[derive(Debug, Clone, Copy)]
pub enum Which {
    Produce,
    Fetch,
    Tee(usize),
}

/// A route's chain is not runnable: a plugin it names is not loaded.
#[derive(Debug, Clone)]
pub struct Missing(pub String);

pub struct Registry {
    host: Arc<Host>,
    plugins: ArcSwap<BTreeMap<String, Arc<Loaded>>>,
    bindings: ArcSwap<Bindings>,
    route_names: ArcSwap<Vec<String>>,
    sites: Vec<Site>,
    conflicts: Arc<Conflicts>,
    /// The config entry (and file bytes) each config-loaded plugin came
    /// from, to tell on a reload what changed.
    from_config: Mutex<HashMap<String, (PluginConfig, Vec<u8>)>>,
    /// Serialises uploads, removals and reloads (the swaps themselves are
    /// atomic; this keeps "load v2, then v3" from finishing as v2).
    writes: tokio::sync::Mutex<()>,
    /// Plugin calls running on the blocking pool ([`Registry::offload`]).
    offload: Arc<tokio::sync::Semaphore>,
}

/// What `GET /api/v1/plugins` shows per plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    /// Switchyard's load number: increases with every version loaded.
    pub load: u64,
    pub plugin_name: String,
    pub plugin_version: String,
    pub capabilities: Vec<String>,
    pub policy: &'static str,
    pub call_timeout_ms: u64,
    pub memory_bytes: usize,
    pub crash_cap: u32,
    pub wasm_bytes: usize,
    pub loaded_unix_ms: u64,
    /// running | restarting | crashed
    pub state: &'static str,
    pub traps_last_minute: usize,
    pub last_error: Option<String>,
    pub used_by: Vec<String>,
}

impl Registry {
    pub fn new(host: Arc<Host>, sites: Vec<Site>, conflicts: Arc<Conflicts>) -> Arc<Self> {
        Arc::new(Registry {
            host,
            plugins: ArcSwap::from_pointee(BTreeMap::new()),
            bindings: ArcSwap::from_pointee(Bindings::default()),
            route_names: ArcSwap::from_pointee(Vec::new()),
            sites,
            conflicts,
            from_config: Mutex::new(HashMap::new()),
            writes: tokio::sync::Mutex::new(()),
            offload: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        })
    }

    /// Runs `f` (plugin calls, and the batch decoding and encoding around
    /// them) on the blocking pool, at most one per core at once. A call may
    /// take its whole CPU deadline (`timeout_ms`); on a Tokio worker that
    /// would hold up every connection served by the same thread.
    pub async fn offload<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, String> {
        let _permit = self
            .offload
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| format!("plugin calls stopped: {e}"))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| format!("a plugin call did not finish: {e}"))
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    pub fn conflicts(&self) -> &Arc<Conflicts> {
        &self.conflicts
    }

    /// The current version of a plugin.
    pub fn get(&self, name: &str) -> Option<Arc<Loaded>> {
        self.plugins.load().get(name).cloned()
    }

    /// True when some route runs plugins on produce / fetch (a cheap check
    /// before any per-topic work on the hot path).
    pub fn any_produce(&self) -> bool {
        self.bindings.load().any_produce
    }

    pub fn any_fetch(&self) -> bool {
        self.bindings.load().any_fetch
    }

    /// The plugins a route runs at a stage, as loaded now (empty: none).
    pub fn chain(&self, route: usize, which: Which) -> Result<Vec<Arc<Loaded>>, Missing> {
        let b = self.bindings.load();
        let Some(r) = b.routes.get(route) else {
            return Ok(Vec::new());
        };
        let names = match which {
            Which::Produce => &r.produce,
            Which::Fetch => &r.fetch,
            Which::Tee(k) => match r.tee.get(k) {
                Some(t) => t,
                None => return Ok(Vec::new()),
            },
        };
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let loaded = self.plugins.load();
        names
            .iter()
            .map(|n| {
                loaded
                    .get(n)
                    .cloned()
                    .ok_or_else(|| Missing(format!("plugin {n} is not loaded")))
            })
            .collect()
    }

    async fn load(
        &self,
        name: &str,
        wasm: Vec<u8>,
        config: String,
        policy: FailurePolicy,
        limits: Limits,
    ) -> Result<Arc<Loaded>, LoadError> {
        let host = self.host.clone();
        let (n, sites) = (name.to_string(), self.sites.clone());
        // Compiling takes tens of milliseconds of CPU: not on the runtime's threads.
        tokio::task::spawn_blocking(move || host.load(&n, &wasm, &config, sites, policy, limits))
            .await
            .map_err(|e| LoadError::Instantiate(format!("loader task failed: {e}")))?
    }

    fn publish(&self, name: &str, loaded: Arc<Loaded>) {
        let mut next = BTreeMap::clone(&self.plugins.load());
        let old = next.insert(name.to_string(), loaded.clone());
        self.plugins.store(Arc::new(next));
        if let Some(old) = old {
            self.serving(name, &old, false);
        }
        self.serving(name, &loaded, true);
        tracing::info!(plugin = name, load = loaded.version, bytes = loaded.wasm_bytes,
            plugin_name = %loaded.info.name, plugin_version = %loaded.info.version,
            policy = loaded.policy.name(), "plugin loaded");
    }

    /// `switchyard_plugin_loaded` for a version that starts or stops serving
    /// under `name` (a retired version's running batches still finish; it is
    /// freed with the last of them).
    fn serving(&self, name: &str, version: &Loaded, on: bool) {
        self.host
            .metrics()
            .plugins
            .loaded
            .with_label_values(&[name, &version.info.version])
            .set(i64::from(on));
    }

    /// Loads (compile, check, init, smoke call) and publishes a plugin
    /// version; the previous version keeps serving until the swap, and also
    /// when loading fails.
    pub async fn put(
        &self,
        name: &str,
        wasm: Vec<u8>,
        config: String,
        policy: FailurePolicy,
        limits: Limits,
    ) -> Result<Arc<Loaded>, LoadError> {
        let _one = self.writes.lock().await;
        let loaded = self.load(name, wasm, config, policy, limits).await?;
        self.publish(name, loaded.clone());
        Ok(loaded)
    }

    /// Unloads a plugin no route uses; `Err` lists the users.
    pub async fn remove(&self, name: &str) -> Result<bool, Vec<String>> {
        let _one = self.writes.lock().await;
        let users = self.bindings.load().users(name, &self.route_names.load());
        if !users.is_empty() {
            return Err(users);
        }
        let mut next = BTreeMap::clone(&self.plugins.load());
        let old = next.remove(name);
        if let Some(old) = &old {
            self.plugins.store(Arc::new(next));
            self.serving(name, old, false);
            if let Ok(mut f) = self.from_config.lock() {
                f.remove(name);
            }
            tracing::info!(plugin = name, "plugin removed");
        }
        Ok(old.is_some())
    }

    /// Makes the running plugins and route chains match a config: loads
    /// the entries that are new or changed (settings or file bytes),
    /// unloads config plugins no longer listed, then swaps the route
    /// chains. All or nothing: if any plugin fails to load, nothing changes
    /// and the errors (by config key) are returned.
    pub async fn apply_config(
        &self,
        plugins: &[PluginConfig],
        routes: &[RouteConfig],
    ) -> Result<Vec<String>, Vec<String>> {
        let _one = self.writes.lock().await;
        let before = self
            .from_config
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        let mut loaded = Vec::new();
        let mut errors = Vec::new();
        let mut changes = Vec::new();
        for (i, p) in plugins.iter().enumerate() {
            let bytes = match std::fs::read(&p.path) {
                Ok(b) => b,
                Err(e) => {
                    errors.push(format!("plugins[{i}].path: cannot read `{}`: {e}", p.path));
                    continue;
                }
            };
            let unchanged = before
                .get(&p.name)
                .is_some_and(|(c, b)| c == p && *b == bytes)
                && self.get(&p.name).is_some();
            if unchanged {
                continue;
            }
            match self
                .load(
                    &p.name,
                    bytes.clone(),
                    p.init_config(),
                    p.failure,
                    Limits::of(p),
                )
                .await
            {
                Ok(l) => loaded.push((p.clone(), bytes, l)),
                Err(e) => errors.push(format!("plugins[{i}] ({}): {e}", p.name)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let listed: Vec<&str> = plugins.iter().map(|p| p.name.as_str()).collect();
        let mut from_config = before;
        for (p, bytes, l) in loaded {
            changes.push(format!(
                "loaded {} ({} {})",
                p.name, l.info.name, l.info.version
            ));
            self.publish(&p.name, l);
            from_config.insert(p.name.clone(), (p, bytes));
        }
        let gone: Vec<String> = from_config
            .keys()
            .filter(|n| !listed.contains(&n.as_str()))
            .cloned()
            .collect();
        let bindings = Bindings::from_routes(routes);
        if *self.bindings.load().routes != bindings.routes {
            changes.push("route plugin chains changed".into());
        }
        self.bindings.store(Arc::new(bindings));
        self.route_names
            .store(Arc::new(routes.iter().map(|r| r.name.clone()).collect()));
        let mut next = BTreeMap::clone(&self.plugins.load());
        for n in &gone {
            from_config.remove(n);
            if let Some(old) = next.remove(n) {
                self.serving(n, &old, false);
                changes.push(format!("unloaded {n}"));
            }
        }
        self.plugins.store(Arc::new(next));
        if let Ok(mut f) = self.from_config.lock() {
            *f = from_config;
        }
        Ok(changes)
    }

    pub fn status(&self) -> Vec<PluginStatus> {
        let b = self.bindings.load();
        let routes = self.route_names.load();
        self.plugins
            .load()
            .iter()
            .map(|(name, p)| {
                let (state, traps, last_error) = p.health();
                PluginStatus {
                    name: name.clone(),
                    load: p.version,
                    plugin_name: p.info.name.clone(),
                    plugin_version: p.info.version.clone(),
                    capabilities: p.info.capabilities.clone(),
                    policy: p.policy.name(),
                    call_timeout_ms: p.limits.call_timeout.as_millis() as u64,
                    memory_bytes: p.limits.memory_bytes,
                    crash_cap: p.limits.crash_cap,
                    wasm_bytes: p.wasm_bytes,
                    loaded_unix_ms: p
                        .loaded_at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0),
                    state,
                    traps_last_minute: traps,
                    last_error,
                    used_by: b.users(name, &routes),
                }
            })
            .collect()
    }
}
