//! WASM policy plugins: the host side.
//!
//! A plugin is a WebAssembly component of the world in `wit/plugin.wit`.
//! Loading one ([`Host::load`]) compiles it (or reuses the component
//! compiled from the same bytes earlier in this process), checks that it
//! imports nothing but our `host` interface and exports the whole world (the
//! type check of `PluginPre`), instantiates it, calls its `init` with the
//! operator's config and makes a smoke call with an empty batch; only then is
//! it a [`Loaded`] plugin, ready to be published (arc-swap) by the registry.
//!
//! Running one: a [`Loaded`] version keeps a small pool of idle instances
//! (each with its own store). A call takes one out, so calls on different
//! threads never contend, and puts it back afterwards; a new version is
//! picked up at the next batch while in-flight batches finish on the old one.
//! Every call gets a CPU deadline (epoch interruption, one ticker thread per
//! host that sleeps while no call runs: `ticker`) and every store a memory cap (`StoreLimits`, trapping on growth
//! failure). An instance that trapped can never be entered again: it is
//! dropped, and the next call instantiates afresh from the shared
//! `PluginPre` (~40 us) — after a backoff that doubles with every trap in a
//! row, and never again once the version trapped `crash_cap` times within a
//! minute (it stays loaded and visible as `crashed` until replaced). While an
//! instance cannot be had, calls fail with [`CallError::Unavailable`] and the
//! data path applies the plugin's [`FailurePolicy`].
//!
//! Where plugins run, and what happens to their decisions: [`chain`].
//! Numbers behind these choices: docs/plugin-host-spike.md.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod chain;
pub mod conflict;
pub mod records;
pub mod registry;
mod ticker;

use prometheus::{Histogram, IntCounter};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder,
};

use crate::metrics::Metrics;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        additional_derives: [PartialEq],
    });
}

pub use bindings::switchyard::plugin::types::{
    Batch, BatchMeta, BatchResult, Conflict, Decision, Direction, LogLevel, PluginInfo, Resolution,
    Route, Site, Stage, Version,
};
use bindings::{Plugin, PluginPre};

/// Epoch ticks per second.
const TICKS_PER_SEC: u64 = 1000 / ticker::TICK.as_millis() as u64;
/// Idle instances kept per plugin version: one per thread that may call at
/// once is enough; more would only hold memory.
const MAX_IDLE: usize = 16;
/// Largest memory cap an upload may ask for (the pooling allocator reserves
/// address space for this much per instance slot).
pub use crate::config::MAX_PLUGIN_MEMORY_BYTES as MAX_MEMORY_BYTES;
/// Instance slots of the pooling allocator (all plugins, all versions).
const POOL_INSTANCES: u32 = 512;
/// `topic-name` answers cached per version.
const MAX_CACHED_NAMES: usize = 10_000;
/// Components compiled in this process, kept for reloads of the same bytes.
const COMPILED_CACHE: usize = 32;
/// The crash cap counts traps within this window.
const CRASH_WINDOW: Duration = Duration::from_secs(60);
const FIRST_RESTART_BACKOFF: Duration = Duration::from_millis(20);
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(5);

/// Limits of one plugin's instances.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU time one call may take before it is interrupted.
    pub call_timeout: Duration,
    /// Linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// Traps within a minute after which the version is not restarted again.
    pub crash_cap: u32,
}

impl Limits {
    /// The limits a plugin's config entry sets.
    pub fn of(p: &crate::config::PluginConfig) -> Limits {
        Limits {
            call_timeout: Duration::from_millis(p.timeout_ms),
            memory_bytes: usize::try_from(p.memory_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            crash_cap: p.crash_cap,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            call_timeout: Duration::from_millis(10),
            memory_bytes: 16 << 20,
            crash_cap: 10,
        }
    }
}

pub use crate::config::FailurePolicy;

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
    #[error("{0}")]
    Limits(String),
}

/// Which exports do real work (from `plugin-info.capabilities`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Caps {
    pub batch: bool,
    pub resolve: bool,
    pub topic_name: bool,
}

/// How a call ended, when not with an answer.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The instance trapped (panic, deadline, memory); it was discarded.
    Trapped(String),
    /// The plugin returned an error for the batch.
    Failed(String),
    /// The plugin's answer breaks the contract (decision count, a decision
    /// not allowed at this stage).
    BadAnswer(String),
    /// No instance to run: restarting after a trap, or crashed.
    Unavailable(String),
}

impl CallError {
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Trapped(_) => "trap",
            CallError::Failed(_) => "failed",
            CallError::BadAnswer(_) => "bad_answer",
            CallError::Unavailable(_) => "unavailable",
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Trapped(e) => write!(f, "trapped: {e}"),
            CallError::Failed(e) => write!(f, "returned an error: {e}"),
            CallError::BadAnswer(e) => write!(f, "bad answer: {e}"),
            CallError::Unavailable(e) => write!(f, "unavailable: {e}"),
        }
    }
}

struct Instance {
    store: Store<HostState>,
    plugin: Plugin,
}

/// Restart state of one version.
#[derive(Default)]
struct Health {
    traps: VecDeque<Instant>,
    backoff: Duration,
    restart_at: Option<Instant>,
    crashed: Option<String>,
    last_error: Option<String>,
}

/// Metric handles of one version, resolved once (no label hashing per call).
struct Counters {
    calls: [IntCounter; 4],
    records_in: IntCounter,
    records_out: IntCounter,
    records_dropped: IntCounter,
    errors: [IntCounter; 4],
    traps: IntCounter,
    duration: Histogram,
    conflicts: [IntCounter; 3],
}

impl Counters {
    fn new(m: &Metrics, name: &str, version: &str) -> Self {
        let p = &m.plugins;
        let pv = [name, version];
        let stage = |s: &str| p.calls.with_label_values(&[name, version, s]);
        let kind = |k: &str| p.errors.with_label_values(&[name, version, k]);
        let res = |r: &str| p.conflicts.with_label_values(&[name, version, r]);
        Counters {
            calls: [
                stage("produce"),
                stage("tee"),
                stage("fetch"),
                stage("resolve"),
            ],
            records_in: p.records_in.with_label_values(&pv),
            records_out: p.records_out.with_label_values(&pv),
            records_dropped: p.records_dropped.with_label_values(&pv),
            errors: [
                kind("trap"),
                kind("failed"),
                kind("bad_answer"),
                kind("unavailable"),
            ],
            traps: p.traps.with_label_values(&pv),
            duration: p.duration.with_label_values(&pv),
            conflicts: [res("accept"), res("reject"), res("merge")],
        }
    }
}

/// A compiled, checked and initialised plugin version.
pub struct Loaded {
    pub name: Arc<str>,
    /// Process-wide unique, increasing.
    pub version: u64,
    pub config: String,
    pub info: PluginInfo,
    pub caps: Caps,
    pub policy: FailurePolicy,
    pub limits: Limits,
    pub wasm_bytes: usize,
    pub loaded_at: std::time::SystemTime,
    sites: Vec<Site>,
    engine: Engine,
    clock: Arc<ticker::Ticker>,
    pre: PluginPre<HostState>,
    idle: Mutex<Vec<Instance>>,
    health: Mutex<Health>,
    counters: Counters,
    /// Unix seconds of the last failure warning (one per second at most).
    warned_at: AtomicU64,
    /// `topic-name` answers by name: `[to-client, to-site]`.
    names: Mutex<[std::collections::HashMap<String, Option<String>>; 2]>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("info", &self.info)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The engine and linker shared by every plugin.
pub struct Host {
    engine: Engine,
    linker: Linker<HostState>,
    /// Shared with every loaded version: it ticks as long as any is used.
    clock: Arc<ticker::Ticker>,
    metrics: Arc<Metrics>,
    /// Components compiled from given bytes, so re-uploading a version
    /// (v1 -> v2 -> v1) skips the ~25 ms compile. Kept in memory only:
    /// nothing compiled is ever read back from disk, so no artifact that
    /// Switchyard did not produce itself can be deserialised.
    compiled: Mutex<VecDeque<(Arc<[u8]>, Component)>>,
}

static VERSIONS: AtomicU64 = AtomicU64::new(1);

fn engine_config(pooling: bool) -> Config {
    let mut cfg = Config::new();
    cfg.epoch_interruption(true)
        .max_wasm_stack(512 << 10)
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    if pooling {
        // Instances come from preallocated slots: instantiating after a trap
        // costs no mmap/munmap, and the slot count bounds what all plugins
        // together can hold.
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 2)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 2)
            .max_memory_size(MAX_MEMORY_BYTES);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    cfg
}

impl Host {
    pub fn new(metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let engine = match Engine::new(&engine_config(true)) {
            Ok(e) => e,
            Err(e) => {
                // Address-space limits (ulimit -v) can refuse the pool's
                // reservation; on-demand allocation still works.
                tracing::warn!(error = %e, "plugin instance pool unavailable; allocating on demand");
                Engine::new(&engine_config(false)).map_err(|e| anyhow::anyhow!("{e}"))?
            }
        };
        let clock = Arc::new(ticker::Ticker::start(&engine)?);
        let mut linker = Linker::<HostState>::new(&engine);
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Arc::new(Host {
            engine,
            linker,
            clock,
            metrics,
            compiled: Mutex::new(VecDeque::new()),
        }))
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn compile(&self, wasm: &[u8]) -> Result<Component, LoadError> {
        if let Ok(c) = self.compiled.lock() {
            if let Some((_, comp)) = c.iter().find(|(b, _)| &b[..] == wasm) {
                return Ok(comp.clone());
            }
        }
        let component =
            Component::new(&self.engine, wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        if let Ok(mut c) = self.compiled.lock() {
            if c.len() >= COMPILED_CACHE {
                c.pop_front();
            }
            c.push_back((Arc::from(wasm), component.clone()));
        }
        Ok(component)
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
        if limits.memory_bytes > MAX_MEMORY_BYTES {
            return Err(LoadError::Limits(format!(
                "memory limit {} MiB exceeds the maximum of {} MiB",
                limits.memory_bytes >> 20,
                MAX_MEMORY_BYTES >> 20
            )));
        }
        if limits.call_timeout.is_zero() || limits.call_timeout > Duration::from_secs(10) {
            return Err(LoadError::Limits(
                "call timeout must be between 1 ms and 10 s".into(),
            ));
        }
        let component = self.compile(wasm)?;
        // Linking against a linker that defines only our `host` interface
        // refuses any other import (WASI, ...); `PluginPre::new` checks the
        // exports' types.
        let pre = self
            .linker
            .instantiate_pre(&component)
            .and_then(PluginPre::new)
            .map_err(|e| LoadError::World(format!("{e:#}")))?;
        let name: Arc<str> = Arc::from(name);
        let _clock = self.clock.running();
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
        let caps = Caps {
            batch: info.capabilities.iter().any(|c| c == "batch"),
            resolve: info.capabilities.iter().any(|c| c == "resolve"),
            topic_name: info.capabilities.iter().any(|c| c == "topic-name"),
        };
        let counters = Counters::new(&self.metrics, &name, &info.version);
        Ok(Arc::new(Loaded {
            version: VERSIONS.fetch_add(1, Ordering::Relaxed),
            config: config.to_string(),
            caps,
            policy,
            limits,
            wasm_bytes: wasm.len(),
            loaded_at: std::time::SystemTime::now(),
            sites,
            engine: self.engine.clone(),
            clock: self.clock.clone(),
            pre,
            idle: Mutex::new(vec![Instance { store, plugin }]),
            health: Mutex::new(Health::default()),
            counters,
            warned_at: AtomicU64::new(0),
            names: Mutex::new(Default::default()),
            info,
            name,
        }))
    }
}

/// Stage index into the per-stage call counters.
fn stage_index(s: Stage) -> usize {
    match s {
        Stage::Produce => 0,
        Stage::Tee => 1,
        Stage::Fetch => 2,
    }
}

impl Loaded {
    /// Runs the plugin on a batch. Empty decisions: keep everything;
    /// otherwise exactly one per record.
    pub fn on_batch(&self, batch: &Batch) -> Result<Vec<Decision>, CallError> {
        let records = batch.records.len() / records::RECORD_WORDS;
        self.counters.calls[stage_index(batch.meta.stage)].inc();
        self.counters.records_in.inc_by(records as u64);
        let answer = self.call(|store, p| p.call_on_batch(store, batch))?;
        match answer {
            Ok(r) if r.decisions.is_empty() || r.decisions.len() == records => Ok(r.decisions),
            Ok(r) => Err(self.error(CallError::BadAnswer(format!(
                "{} decisions for {records} records",
                r.decisions.len()
            )))),
            Err(e) => Err(self.error(CallError::Failed(e))),
        }
    }

    /// Conflict resolution: one resolution per conflict.
    pub fn resolve(
        &self,
        batch: &Batch,
        conflicts: &[Conflict],
    ) -> Result<Vec<Resolution>, CallError> {
        self.counters.calls[3].inc();
        let answer = self.call(|store, p| p.call_resolve(store, batch, conflicts))?;
        match answer {
            Ok(r) if r.len() == conflicts.len() => {
                for res in &r {
                    let i = match res {
                        Resolution::Accept(_) => 0,
                        Resolution::Reject => 1,
                        Resolution::Merge(_) => 2,
                    };
                    self.counters.conflicts[i].inc();
                }
                Ok(r)
            }
            Ok(r) => Err(self.error(CallError::BadAnswer(format!(
                "{} resolutions for {} conflicts",
                r.len(),
                conflicts.len()
            )))),
            Err(e) => Err(self.error(CallError::Failed(e))),
        }
    }

    /// The plugin's name for a topic in `direction` (`None`: unchanged).
    /// The plugin's name for a topic in `direction` (`None`: unchanged).
    /// Answers are cached per version (a plugin's naming is a function of
    /// its config), so the data path asks once per topic.
    pub fn topic_name(
        &self,
        name: &str,
        direction: Direction,
    ) -> Result<Option<String>, CallError> {
        let side = usize::from(direction == Direction::ToSite);
        // A hit borrows the name: this runs for every produced batch of a
        // renamed topic.
        if let Some(hit) = self
            .names
            .lock()
            .ok()
            .and_then(|m| m[side].get(name).cloned())
        {
            return Ok(hit);
        }
        let answer = self.call(|store, p| p.call_topic_name(store, name, direction))?;
        if let Some(n) = &answer {
            if n.is_empty() || n.len() > 249 {
                return Err(self.error(CallError::BadAnswer(format!(
                    "topic-name answered {n:?}, not a topic name"
                ))));
            }
        }
        if let Ok(mut m) = self.names.lock() {
            if m[side].len() >= MAX_CACHED_NAMES {
                m[side].clear();
            }
            m[side].insert(name.to_string(), answer.clone());
        }
        Ok(answer)
    }

    /// A failure warning, at most one per second per version: a plugin that
    /// fails on every batch must not flood the log (metrics count them all).
    pub fn warn_limited(&self, msg: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.warned_at.swap(now, Ordering::Relaxed) != now {
            tracing::warn!(plugin = %self.name, version = %self.info.version,
                policy = self.policy.name(), "{msg}");
        }
    }

    /// Counts records given to a resolve-only plugin.
    pub fn count_in(&self, n: usize) {
        self.counters.records_in.inc_by(n as u64);
    }

    /// Counts what the data path did with the records this plugin decided on.
    pub fn count_out(&self, kept: usize, dropped: usize) {
        self.counters.records_out.inc_by(kept as u64);
        self.counters.records_dropped.inc_by(dropped as u64);
    }

    /// Counts and returns an error found by the caller (e.g. a decision not
    /// allowed at the stage).
    pub fn error(&self, e: CallError) -> CallError {
        let i = match e {
            CallError::Trapped(_) => 0,
            CallError::Failed(_) => 1,
            CallError::BadAnswer(_) => 2,
            CallError::Unavailable(_) => 3,
        };
        self.counters.errors[i].inc();
        if let Ok(mut h) = self.health.lock() {
            h.last_error = Some(e.to_string());
        }
        e
    }

    /// Takes an instance, runs `f` under the deadline, puts the instance back.
    fn call<R>(
        &self,
        f: impl FnOnce(&mut Store<HostState>, &Plugin) -> wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        let _clock = self.clock.running();
        let mut inst = match self.checkout() {
            Ok(i) => i,
            Err(e) => return Err(self.error(e)),
        };
        inst.store
            .set_epoch_deadline(deadline_ticks(self.limits.call_timeout));
        let started = Instant::now();
        let out = f(&mut inst.store, &inst.plugin);
        self.counters
            .duration
            .observe(started.elapsed().as_secs_f64());
        match out {
            Ok(r) => {
                if let Ok(mut idle) = self.idle.lock() {
                    if idle.len() < MAX_IDLE {
                        idle.push(inst);
                    }
                }
                if let Ok(mut h) = self.health.lock() {
                    h.backoff = Duration::ZERO;
                }
                Ok(r)
            }
            // A trapped instance cannot be entered again: `inst` is dropped.
            Err(e) => Err(self.trapped(trap_reason(&e))),
        }
    }

    fn checkout(&self) -> Result<Instance, CallError> {
        if let Some(i) = self.idle.lock().ok().and_then(|mut v| v.pop()) {
            return Ok(i);
        }
        if let Ok(h) = self.health.lock() {
            if let Some(why) = &h.crashed {
                return Err(CallError::Unavailable(why.clone()));
            }
            if let Some(at) = h.restart_at {
                let now = Instant::now();
                if at > now {
                    return Err(CallError::Unavailable(format!(
                        "restarting after a trap in {} ms",
                        (at - now).as_millis()
                    )));
                }
            }
        }
        let mut store = new_store(&self.engine, &self.name, self.limits);
        store.set_epoch_deadline(deadline_ticks(self.limits.call_timeout));
        let plugin = match self.pre.instantiate(&mut store) {
            Ok(p) => p,
            // Out of pool slots or memory: not the plugin's fault, no backoff.
            Err(e) => return Err(CallError::Unavailable(format!("instantiate: {e:#}"))),
        };
        match plugin.call_init(&mut store, &self.config, &self.sites) {
            Ok(Ok(_)) => Ok(Instance { store, plugin }),
            Ok(Err(e)) => Err(self.trapped(format!("init rejected its config on restart: {e}"))),
            Err(e) => Err(self.trapped(format!("init: {}", trap_reason(&e)))),
        }
    }

    /// Records a trap: backoff before the next instance, crash cap.
    fn trapped(&self, why: String) -> CallError {
        self.counters.traps.inc();
        if let Ok(mut h) = self.health.lock() {
            let now = Instant::now();
            h.traps.push_back(now);
            while h
                .traps
                .front()
                .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
            {
                h.traps.pop_front();
            }
            h.backoff = if h.backoff.is_zero() {
                FIRST_RESTART_BACKOFF
            } else {
                (h.backoff * 2).min(MAX_RESTART_BACKOFF)
            };
            h.restart_at = Some(now + h.backoff);
            if h.traps.len() >= self.limits.crash_cap as usize && h.crashed.is_none() {
                let msg = format!(
                    "crashed: {} traps within {} s (last: {why}); not restarted until a new version is loaded",
                    h.traps.len(),
                    CRASH_WINDOW.as_secs()
                );
                tracing::error!(plugin = %self.name, version = %self.info.version, "{msg}");
                h.crashed = Some(msg);
                // Idle instances may be fine, but the version is out.
                if let Ok(mut idle) = self.idle.lock() {
                    idle.clear();
                }
            } else {
                tracing::warn!(plugin = %self.name, version = %self.info.version, error = %why,
                    backoff_ms = h.backoff.as_millis() as u64, "plugin trapped; instance replaced");
            }
        }
        self.error(CallError::Trapped(why))
    }

    /// `(state, traps in the last minute, last error)` for the status page.
    pub fn health(&self) -> (&'static str, usize, Option<String>) {
        match self.health.lock() {
            Ok(h) => {
                let state = if h.crashed.is_some() {
                    "crashed"
                } else if h.restart_at.is_some_and(|t| t > Instant::now()) {
                    "restarting"
                } else {
                    "running"
                };
                (state, h.traps.len(), h.last_error.clone())
            }
            Err(_) => ("unknown", 0, None),
        }
    }
}

/// One line saying why a call trapped: the trap's kind (`wasm unreachable
/// instruction executed` is a guest panic, `interrupt` the CPU deadline) or,
/// for a memory cap hit, the limiter's message; no wasm backtrace (it is
/// function indices only and would fill logs and the status page).
fn trap_reason(e: &wasmtime::Error) -> String {
    if let Some(t) = e.downcast_ref::<wasmtime::Trap>() {
        return match t {
            wasmtime::Trap::Interrupt => format!("{t} (the call ran past its CPU deadline)"),
            wasmtime::Trap::UnreachableCodeReached => format!("{t} (the plugin panicked)"),
            _ => t.to_string(),
        };
    }
    e.chain()
        .last()
        .map(|c| c.to_string())
        .unwrap_or_else(|| e.to_string())
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
