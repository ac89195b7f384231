//! WASM policy plugins: the host side (work in progress, issue "WASM
//! policy plugins"; not wired into the data path yet).
//!
//! A plugin is a WebAssembly component of the world in `wit/plugin.wit`.
//! Loading one ([`Host::load`]) compiles it, checks that it imports nothing
//! but our `host` interface and exports the whole world (the type check of
//! `PluginPre`), instantiates it, calls its `init` with the operator's
//! config and makes a smoke call with an empty batch; only then is it a
//! [`Loaded`] plugin, ready to be published (arc-swap) by the registry.
//!
//! Running one ([`Runner`]): each caller (a session, a tee worker) keeps its
//! own store and instance per plugin version, so calls never contend and a
//! new version is picked up at the next batch while in-flight batches finish
//! on the old one. Every call gets a CPU deadline (epoch interruption, one
//! ticker thread per process) and the store a memory cap (`StoreLimits`,
//! trapping on growth failure). An instance that trapped can never be
//! entered again: it is dropped and the next call instantiates afresh from
//! the shared `PluginPre` (~40 us). Numbers behind these choices:
//! docs/plugin-host-spike.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub mod registry;

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder};

mod bindings {
    wasmtime::component::bindgen!({ path: "../wit", world: "plugin" });
}

pub use bindings::switchyard::plugin::types::{
    Batch, BatchMeta, BatchResult, Decision, LogLevel, PluginInfo, Site, Stage,
};
use bindings::{Plugin, PluginPre};

/// Epoch ticks per second (the ticker's period is 1 ms).
const TICKS_PER_SEC: u64 = 1000;

/// Limits of one plugin's instances.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU time one call may take before it is interrupted.
    pub call_timeout: Duration,
    /// Linear memory one instance may grow to.
    pub memory_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_timeout: Duration::from_millis(10),
            memory_bytes: 16 << 20,
        }
    }
}

/// What the data path does with a batch when its plugin fails (trap,
/// deadline, memory, an error it returned, malformed decisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// The batch passes unchanged.
    Open,
    /// The batch's partition gets a Kafka error; the connection stays.
    Closed,
}

/// Per-store state: the memory cap and the plugin's name for its logs.
pub struct HostState {
    limits: StoreLimits,
    plugin: Arc<str>,
}

impl bindings::switchyard::plugin::types::Host for HostState {}

impl bindings::switchyard::plugin::host::Host for HostState {
    fn log(&mut self, level: LogLevel, msg: String) {
        // Bounded: a plugin logging megabytes per record must not flood the log.
        let msg: String = msg.chars().take(1024).collect();
        match level {
            LogLevel::Trace => tracing::trace!(plugin = %self.plugin, "{msg}"),
            LogLevel::Debug => tracing::debug!(plugin = %self.plugin, "{msg}"),
            LogLevel::Info => tracing::info!(plugin = %self.plugin, "{msg}"),
            LogLevel::Warn => tracing::warn!(plugin = %self.plugin, "{msg}"),
            LogLevel::Error => tracing::error!(plugin = %self.plugin, "{msg}"),
        }
    }

    fn now_ms(&mut self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// Why a plugin was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a valid WebAssembly component: {0}")]
    Compile(String),
    #[error("the component does not fit the plugin world switchyard:plugin/plugin@0.1.0: {0}")]
    World(String),
    #[error("instantiating failed: {0}")]
    Instantiate(String),
    #[error("init trapped: {0}")]
    InitTrapped(String),
    #[error("init rejected the config: {0}")]
    InitRejected(String),
    #[error("the smoke call (an empty batch) failed: {0}")]
    Smoke(String),
}

/// A compiled, checked and initialised plugin version.
pub struct Loaded {
    pub name: Arc<str>,
    /// Process-wide unique, increasing: runners compare it to their instance's.
    pub version: u64,
    pub config: String,
    pub info: PluginInfo,
    pub policy: FailurePolicy,
    pub limits: Limits,
    pub wasm_bytes: usize,
    sites: Vec<Site>,
    pre: PluginPre<HostState>,
}

/// The engine and linker shared by every plugin.
pub struct Host {
    engine: Engine,
    linker: Linker<HostState>,
    ticker_stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Host {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

static VERSIONS: AtomicU64 = AtomicU64::new(1);

impl Host {
    pub fn new() -> anyhow::Result<Arc<Self>> {
        let mut cfg = Config::new();
        cfg.epoch_interruption(true)
            .max_wasm_stack(512 << 10)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = Engine::new(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
        let ticker_stop = start_ticker(&engine)?;
        let mut linker = Linker::<HostState>::new(&engine);
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Arc::new(Host {
            engine,
            linker,
            ticker_stop,
        }))
    }

    /// Compiles, checks, instantiates, initialises and smoke-tests a plugin.
    pub fn load(
        &self,
        name: &str,
        wasm: &[u8],
        config: &str,
        sites: Vec<Site>,
        policy: FailurePolicy,
        limits: Limits,
    ) -> Result<Arc<Loaded>, LoadError> {
        let component =
            Component::new(&self.engine, wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        // Linking against a linker that defines only our `host` interface
        // refuses any other import (WASI, ...); `PluginPre::new` checks the
        // exports' types.
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(PluginPre::new)
            .map_err(|e| LoadError::World(format!("{e:#}")))?;
        let name: Arc<str> = Arc::from(name);
        let mut store = new_store(&self.engine, &name, limits);
        store.set_epoch_deadline(deadline_ticks(limits.call_timeout));
        let plugin = pre
            .instantiate(&mut store)
            .map_err(|e| LoadError::Instantiate(format!("{e:#}")))?;
        let info = plugin
            .call_init(&mut store, config, &sites)
            .map_err(|e| LoadError::InitTrapped(format!("{e:#}")))?
            .map_err(LoadError::InitRejected)?;
        let empty = Batch {
            meta: BatchMeta {
                stage: Stage::Produce,
                topic: "switchyard-smoke-test".into(),
                partition: 0,
                origin_site: 0,
                local_site: 0,
                target_site: None,
                client_id: None,
                base_offset: -1,
            },
            records: Vec::new(),
            headers: Vec::new(),
            data: Vec::new(),
        };
        store.set_epoch_deadline(deadline_ticks(limits.call_timeout));
        match plugin.call_on_batch(&mut store, &empty) {
            Ok(Ok(r)) if r.decisions.is_empty() => {}
            Ok(Ok(r)) => {
                return Err(LoadError::Smoke(format!(
                    "{} decisions for a batch of 0 records",
                    r.decisions.len()
                )))
            }
            Ok(Err(e)) => return Err(LoadError::Smoke(e)),
            Err(e) => return Err(LoadError::Smoke(format!("{e:#}"))),
        }
        Ok(Arc::new(Loaded {
            name,
            version: VERSIONS.fetch_add(1, Ordering::Relaxed),
            config: config.to_string(),
            info,
            policy,
            limits,
            wasm_bytes: wasm.len(),
            sites,
            pre,
        }))
    }
}

/// How a call ended.
#[derive(Debug)]
pub enum CallError {
    /// The instance trapped (panic, deadline, memory); it was discarded.
    Trapped(String),
    /// The plugin returned an error for the batch.
    Failed(String),
    /// The plugin answered with the wrong number of decisions.
    BadAnswer(String),
}

/// One caller's instances (a session or a tee worker owns one).
#[derive(Default)]
pub struct Runner {
    current: Option<(u64, Store<HostState>, Plugin)>,
}

impl Runner {
    /// Runs `plugin` on a batch. Empty decisions: keep everything.
    pub fn on_batch(
        &mut self,
        host: &Host,
        plugin: &Arc<Loaded>,
        batch: &Batch,
    ) -> Result<Vec<Decision>, CallError> {
        let records = batch.records.len() / 8;
        let (store, instance) = self.instance(host, plugin)?;
        store.set_epoch_deadline(deadline_ticks(plugin.limits.call_timeout));
        match instance.call_on_batch(&mut *store, batch) {
            Ok(Ok(r)) if r.decisions.is_empty() || r.decisions.len() == records => Ok(r.decisions),
            Ok(Ok(r)) => Err(CallError::BadAnswer(format!(
                "{} decisions for {records} records",
                r.decisions.len()
            ))),
            Ok(Err(e)) => Err(CallError::Failed(e)),
            Err(e) => {
                // A trapped instance cannot be entered again.
                self.current = None;
                Err(CallError::Trapped(format!("{e:#}")))
            }
        }
    }

    fn instance(
        &mut self,
        host: &Host,
        plugin: &Arc<Loaded>,
    ) -> Result<(&mut Store<HostState>, &mut Plugin), CallError> {
        if self
            .current
            .as_ref()
            .is_none_or(|(v, _, _)| *v != plugin.version)
        {
            let mut store = new_store(&host.engine, &plugin.name, plugin.limits);
            let instance = plugin
                .pre
                .instantiate(&mut store)
                .map_err(|e| CallError::Trapped(format!("instantiate: {e:#}")))?;
            store.set_epoch_deadline(deadline_ticks(plugin.limits.call_timeout));
            instance
                .call_init(&mut store, &plugin.config, &plugin.sites)
                .map_err(|e| CallError::Trapped(format!("init: {e:#}")))?
                .map_err(CallError::Failed)?;
            self.current = Some((plugin.version, store, instance));
        }
        match self.current.as_mut() {
            Some((_, s, i)) => Ok((s, i)),
            None => Err(CallError::Trapped("no instance".into())),
        }
    }
}

fn new_store(engine: &Engine, name: &Arc<str>, limits: Limits) -> Store<HostState> {
    let store_limits = StoreLimitsBuilder::new()
        .memory_size(limits.memory_bytes)
        .instances(4)
        .tables(4)
        .memories(2)
        .trap_on_grow_failure(true)
        .build();
    let mut store = Store::new(
        engine,
        HostState {
            limits: store_limits,
            plugin: name.clone(),
        },
    );
    store.limiter(|s| &mut s.limits);
    store
}

fn deadline_ticks(d: Duration) -> u64 {
    (d.as_millis() as u64 * TICKS_PER_SEC / 1000).max(1)
}

/// A thread per host advances the engine's epoch every millisecond: that is
/// the clock of every call's CPU deadline. It stops when the host is dropped.
fn start_ticker(engine: &Engine) -> anyhow::Result<Arc<std::sync::atomic::AtomicBool>> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (engine, flag) = (engine.clone(), stop.clone());
    std::thread::Builder::new()
        .name("plugin-epoch".into())
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
                engine.increment_epoch();
            }
        })?;
    Ok(stop)
}
