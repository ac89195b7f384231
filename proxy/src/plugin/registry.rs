//! The loaded plugins, by name, behind one arc-swap: the data path takes a
//! snapshot per batch, so a batch runs entirely on the version it started
//! with and an upload or removal never waits for (or drops) a connection.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::{FailurePolicy, Host, Limits, LoadError, Loaded, Site};

/// Largest plugin accepted (a component is typically 30-300 KiB).
pub const MAX_PLUGIN_BYTES: usize = 16 << 20;

pub struct Registry {
    host: Arc<Host>,
    plugins: ArcSwap<BTreeMap<String, Arc<Loaded>>>,
    sites: Vec<Site>,
    /// Serialises uploads of one name against each other (the swap itself
    /// is atomic; this keeps "load v2, then v3" from finishing as v2).
    writes: tokio::sync::Mutex<()>,
}

/// What `GET /api/v1/plugins` shows per plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub version: u64,
    pub plugin_name: String,
    pub plugin_version: String,
    pub capabilities: Vec<String>,
    pub policy: &'static str,
    pub call_timeout_ms: u64,
    pub memory_bytes: usize,
    pub wasm_bytes: usize,
}

impl Registry {
    pub fn new(host: Arc<Host>, sites: Vec<Site>) -> Arc<Self> {
        Arc::new(Registry {
            host,
            plugins: ArcSwap::from_pointee(BTreeMap::new()),
            sites,
            writes: tokio::sync::Mutex::new(()),
        })
    }

    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// The current version of a plugin.
    pub fn get(&self, name: &str) -> Option<Arc<Loaded>> {
        self.plugins.load().get(name).cloned()
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
        let host = self.host.clone();
        let (n, sites) = (name.to_string(), self.sites.clone());
        let wasm_len = wasm.len();
        // Compiling takes tens of milliseconds of CPU: not on the runtime's threads.
        let loaded = tokio::task::spawn_blocking(move || {
            host.load(&n, &wasm, &config, sites, policy, limits)
        })
        .await
        .map_err(|e| LoadError::Instantiate(format!("loader task failed: {e}")))??;
        let mut next = BTreeMap::clone(&self.plugins.load());
        next.insert(name.to_string(), loaded.clone());
        self.plugins.store(Arc::new(next));
        tracing::info!(plugin = name, version = loaded.version, bytes = wasm_len,
            info_name = %loaded.info.name, info_version = %loaded.info.version, "plugin loaded");
        Ok(loaded)
    }

    /// Unloads a plugin; batches already running finish on it.
    pub async fn remove(&self, name: &str) -> bool {
        let _one = self.writes.lock().await;
        let mut next = BTreeMap::clone(&self.plugins.load());
        let had = next.remove(name).is_some();
        if had {
            self.plugins.store(Arc::new(next));
            tracing::info!(plugin = name, "plugin removed");
        }
        had
    }

    pub fn status(&self) -> Vec<PluginStatus> {
        self.plugins
            .load()
            .iter()
            .map(|(name, p)| PluginStatus {
                name: name.clone(),
                version: p.version,
                plugin_name: p.info.name.clone(),
                plugin_version: p.info.version.clone(),
                capabilities: p.info.capabilities.clone(),
                policy: match p.policy {
                    FailurePolicy::Open => "fail-open",
                    FailurePolicy::Closed => "fail-closed",
                },
                call_timeout_ms: p.limits.call_timeout.as_millis() as u64,
                memory_bytes: p.limits.memory_bytes,
                wasm_bytes: p.wasm_bytes,
            })
            .collect()
    }
}
