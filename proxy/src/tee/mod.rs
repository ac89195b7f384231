//! The tee: copies what a route writes to its site on to target sites.
//!
//! One *link* per (route, tee target). A link's supervisor watches the source
//! site's topics and runs one worker per topic the route selects
//! (`worker.rs`). A worker follows the source partitions' logs and writes
//! every record to the same partition of the target topic:
//!
//! * **The source log is the buffer.** Nothing is queued in memory: after a
//!   target outage, a backlog or a Switchyard restart the worker resumes by
//!   fetching from the source where the target left off. So an async tee
//!   loses nothing, and its memory does not grow with the backlog.
//! * **Durable progress** is the offset-sync runs persisted on the target
//!   (`offsets::sync_topic`) plus the target log itself: on start the worker
//!   counts the records it wrote after the last persisted run (they carry its
//!   origin header) and skips exactly that many on the source, so a restart,
//!   even after SIGKILL, duplicates nothing.
//! * **Idempotent producer** toward the target (own producer id, sequences per
//!   partition, CRC recomputed by `batch::encode`): retries after an
//!   ambiguous failure re-check the target the same way as a restart.
//! * **Loops**: every copied record gets a `switchyard-origin` header naming
//!   its source site, and records that already have one are never copied
//!   again, so two sites teeing to each other (active-active) do not ping-pong.
//! * **Sync mode**: the produce path holds a client's ack until the worker's
//!   progress passes the acked offsets (`wait_synced`), waking the worker so
//!   it does not wait for its poll interval.

mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::config::{TeeConfig, TeeMode, TeeStart, Validated};
use crate::metrics::Metrics;
use crate::route::{Naming, Router, TopicMatch};
use crate::upstream::client::SiteClient;
use crate::upstream::Site;

// What a sync produce gets when a target did not take the records in time:
// NOT_ENOUGH_REPLICAS_AFTER_APPEND, which says exactly that (written on the
// leader, not on enough copies) and is retriable: the client retries, an
// idempotent client is deduplicated on the source.
use crate::codec::errors::NOT_ENOUGH_REPLICAS_AFTER_APPEND as NOT_SYNCED;

/// One route's copy to one target site.
pub struct Link {
    pub route: usize,
    /// Index of the tee target in the route's `tee` (its plugin chain);
    /// `None` for a failover's reverse link, which runs no plugins.
    pub tee_index: Option<usize>,
    /// Config indexes of the sites (plugins know sites by these).
    pub source_index: usize,
    pub target_index: usize,
    pub route_name: String,
    pub source: Arc<Site>,
    pub target: Arc<Site>,
    pub mode: TeeMode,
    pub start: TeeStart,
    route_topics: TopicMatch,
    route_naming: Naming,
    target_naming: Naming,
    topics: Mutex<HashMap<String, Arc<TopicTee>>>,
    /// Offset-sync records read back from the target once per activation.
    restored: tokio::sync::Mutex<Option<Arc<worker::Restored>>>,
    /// Set once the offset-sync topic exists on the target.
    syncs_ready: std::sync::atomic::AtomicBool,
    /// Whether the link copies now. A failover route has a forward link
    /// (primary → standby, active while the primary serves) and a reverse
    /// one (standby → primary, active while failed over); the failover state
    /// machine flips them. Workers stop when their link goes inactive.
    active: watch::Sender<bool>,
    /// The reverse half of a failover pair (always async: a dead primary
    /// must not block producers on the standby).
    pub reverse: bool,
    /// Runs per (source topic, partition), as of the workers' last persist:
    /// what offset translation reads. Stale runs only translate to earlier
    /// offsets (more duplicates, never a skip).
    runs: Mutex<HashMap<(String, i32), crate::offsets::runs::PartitionRuns>>,
}

impl Link {
    pub fn is_active(&self) -> bool {
        *self.active.borrow()
    }

    /// The source site's physical name of a virtual topic.
    pub fn source_topic(&self, virt: &str) -> String {
        self.route_naming.physical(virt).into_owned()
    }

    /// The target site's physical name of a virtual topic.
    pub fn target_topic_of(&self, virt: &str) -> String {
        self.target_naming.physical(virt).into_owned()
    }

    /// The target topic for a source topic, if this link copies it.
    fn target_topic(&self, source_topic: &str) -> Option<String> {
        // Internal topics (`__consumer_offsets`, our offset syncs, ...) are
        // never copied, whatever a regex says.
        if source_topic.starts_with("__") {
            return None;
        }
        let virt = if self.route_naming.is_identity() {
            source_topic
        } else {
            self.route_naming.virtual_of(source_topic)?
        };
        self.route_topics
            .matches(virt)
            .then(|| self.target_naming.physical(virt).into_owned())
    }
}

/// Progress of one topic's tee, watched by sync producers.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Next source offset to copy, per partition (`-1` until known).
    pub next: Vec<i64>,
    /// The last record skipped as permanently rejected, per partition, with why.
    pub rejected: Vec<Option<(i64, String)>>,
    /// The error of the last failed write, per partition, cleared on success.
    pub failing: Vec<Option<String>>,
    /// Source high watermark per partition as of the last round.
    pub high_watermark: Vec<i64>,
    /// Rounds the worker completed.
    pub rounds: u64,
}

/// One topic of one link: shared between its worker, sync producers and status.
pub struct TopicTee {
    pub source_topic: String,
    pub target_topic: String,
    progress: watch::Sender<Progress>,
    wake: Notify,
    stats: Mutex<Stats>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub state: String,
    pub lag_records: i64,
    pub lag_seconds: f64,
    pub records: u64,
    pub bytes: u64,
    pub retries: u64,
    pub errors: u64,
    pub skipped: u64,
    pub last_success_unix_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_skipped: Option<String>,
}

/// What `/api/v1/status` shows per link.
#[derive(Debug, Clone, Serialize)]
pub struct TeeStatus {
    pub route: String,
    pub source: String,
    pub target: String,
    pub mode: &'static str,
    /// False for the idle half of a failover pair.
    pub active: bool,
    /// `reverse`: standby → primary, copying writes made while failed over.
    pub direction: &'static str,
    pub topics: Vec<TopicStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicStatus {
    pub source_topic: String,
    pub target_topic: String,
    #[serde(flatten)]
    pub stats: Stats,
}

pub struct Tee {
    links: Vec<Arc<Link>>,
    /// Tee-stage plugins (set once the plugin host is up).
    plugins: std::sync::OnceLock<Arc<crate::plugin::registry::Registry>>,
    cfg: TeeConfig,
    metrics: Arc<Metrics>,
    stop: Mutex<Option<watch::Receiver<bool>>>,
    /// Worker tasks, awaited at shutdown so their last offset syncs are written.
    workers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Where workers run: the background runtime `start` was called on,
    /// also for a worker a client's sync produce starts (its connection's
    /// I/O thread must not carry a topic's copying).
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
}

impl Tee {
    pub fn new(
        cfg: &Validated,
        router: &Router,
        sites: &[Arc<Site>],
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let mut links = Vec::new();
        let link =
            |ri: usize,
             r: &crate::route::Route,
             (source, source_naming): (&Arc<Site>, &Naming),
             (target, target_naming): (&Arc<Site>, &Naming),
             mode: TeeMode,
             start: TeeStart,
             (tee_index, source_index, target_index): (Option<usize>, usize, usize)| {
                let reverse = tee_index.is_none();
                Arc::new(Link {
                    route: ri,
                    tee_index,
                    source_index,
                    target_index,
                    route_name: r.name.clone(),
                    source: source.clone(),
                    target: target.clone(),
                    mode,
                    start,
                    route_topics: r.topics.clone(),
                    route_naming: source_naming.clone(),
                    target_naming: target_naming.clone(),
                    topics: Mutex::new(HashMap::new()),
                    restored: tokio::sync::Mutex::new(None),
                    syncs_ready: std::sync::atomic::AtomicBool::new(false),
                    active: watch::Sender::new(!reverse),
                    reverse,
                    runs: Mutex::new(HashMap::new()),
                })
            };
        for (ri, r) in router.routes().iter().enumerate() {
            for (k, t) in r.tee.iter().enumerate() {
                let (Some(source), Some(target)) = (sites.get(r.site), sites.get(t.site)) else {
                    continue;
                };
                links.push(link(
                    ri,
                    r,
                    (source, &r.naming),
                    (target, &t.naming),
                    t.mode,
                    t.start,
                    (Some(k), r.site, t.site),
                ));
                // Failback needs the standby's new writes on the primary:
                // the same copy the other way, started at failover. It
                // starts from the standby's first record; what came from the
                // primary carries its origin header and is not copied back.
                if r.failover.as_ref().is_some_and(|f| f.standby == t.site) {
                    links.push(link(
                        ri,
                        r,
                        (target, &t.naming),
                        (source, &r.naming),
                        TeeMode::Async,
                        TeeStart::Earliest,
                        (None, t.site, r.site),
                    ));
                }
            }
        }
        Arc::new(Tee {
            links,
            plugins: std::sync::OnceLock::new(),
            cfg: cfg.config.tee.clone(),
            metrics,
            stop: Mutex::new(None),
            runtime: std::sync::OnceLock::new(),
            workers: Mutex::new(Vec::new()),
        })
    }

    /// Gives the tee the plugin registry (once, before `start`).
    pub fn set_plugins(&self, reg: Arc<crate::plugin::registry::Registry>) {
        let _ = self.plugins.set(reg);
    }

    /// After the stop signal: lets every worker write its last offset syncs,
    /// for at most `grace`.
    pub async fn finish(&self, grace: Duration) {
        let tasks: Vec<_> = self
            .workers
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("tee workers did not finish in time; offset syncs written since the last periodic persist are recovered from the target on restart");
        }
    }

    pub fn sync_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.sync_timeout_ms)
    }

    /// Starts every link's supervisor.
    pub fn start(self: &Arc<Self>, stop: watch::Receiver<bool>) {
        if let Ok(mut s) = self.stop.lock() {
            *s = Some(stop.clone());
        }
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        for link in &self.links {
            tokio::spawn(supervise(self.clone(), link.clone(), stop.clone()));
        }
    }

    /// Points a failover route's copying one way: `forward` (primary →
    /// standby) or back. The other direction's workers stop after persisting
    /// their runs; the chosen direction's workers start afresh (re-reading
    /// durable progress, so a target written by clients meanwhile is fine).
    pub fn set_direction(&self, route: usize, forward: bool) {
        for l in self.links.iter().filter(|l| l.route == route) {
            let on = l.reverse != forward;
            if l.is_active() != on {
                if on {
                    if let Ok(mut g) = l.restored.try_lock() {
                        *g = None;
                    }
                }
                l.active.send_replace(on);
                tracing::info!(route = %l.route_name, source = %l.source.name, target = %l.target.name,
                    active = on, "tee direction changed");
            }
        }
    }

    /// Waits until `route`'s active links from `source` have copied
    /// everything the source holds now: the high watermark of every
    /// partition is read from the source first (so the wait does not depend
    /// on the workers' long-poll rounds), then each worker's next offset
    /// must reach it. False on timeout or when the source cannot be read.
    pub async fn caught_up(
        self: &Arc<Self>,
        route: usize,
        source: &Arc<Site>,
        deadline: Instant,
    ) -> bool {
        let links: Vec<&Arc<Link>> = self
            .links
            .iter()
            .filter(|l| l.route == route && Arc::ptr_eq(&l.source, source) && l.is_active())
            .collect();
        let mut client = SiteClient::new(source.clone());
        source.mark_stale();
        let _ = source.refresh().await;
        for l in links {
            // Every topic the link copies, also ones whose worker has not
            // started yet (a topic created a moment ago).
            let names: Vec<String> = source.view().topics.keys().cloned().collect();
            let mut topics = Vec::new();
            for name in names {
                if let Some(t) = self.topic(l, &name) {
                    topics.push(t);
                }
            }
            for t in topics {
                let Some(n) = client.partitions(&t.source_topic).await else {
                    return false;
                };
                let mut ends = Vec::with_capacity(n);
                for p in 0..n as i32 {
                    match tokio::time::timeout_at(
                        deadline.into(),
                        client.stable_end(&t.source_topic, p),
                    )
                    .await
                    {
                        Ok(Ok(hw)) => ends.push(hw),
                        _ => return false,
                    }
                }
                t.wake.notify_one();
                let mut rx = t.progress.subscribe();
                let ok = tokio::time::timeout_at(
                    deadline.into(),
                    rx.wait_for(|pr| {
                        ends.iter()
                            .enumerate()
                            .all(|(p, end)| pr.next.get(p).is_some_and(|n| n >= end))
                    }),
                )
                .await;
                if !matches!(ok, Ok(Ok(_))) {
                    return false;
                }
            }
        }
        true
    }

    /// Waits (until `deadline`) until the route's active links from `source`
    /// have copied a partition up to `offset` (exclusive). Used before a
    /// sync route's shadow commit, so the committed offset translates
    /// exactly instead of to the end of what was copied so far.
    pub async fn wait_copied(
        self: &Arc<Self>,
        route: usize,
        source: &Arc<Site>,
        source_topic: &str,
        partition: i32,
        offset: i64,
        deadline: Instant,
    ) {
        let p = usize::try_from(partition).unwrap_or(usize::MAX);
        for link in self
            .links
            .iter()
            .filter(|l| l.route == route && Arc::ptr_eq(&l.source, source) && l.is_active())
        {
            let Some(t) = self.topic(link, source_topic) else {
                continue;
            };
            t.wake.notify_one();
            let mut rx = t.progress.subscribe();
            let _ = tokio::time::timeout_at(
                deadline.into(),
                rx.wait_for(|pr| pr.next.get(p).is_some_and(|n| *n >= offset)),
            )
            .await;
        }
    }

    /// Records acked on `route`'s source but not yet copied, as last seen by
    /// its active links (what an unplanned failover loses with async tee).
    pub fn uncopied(&self, route: usize, source: &Arc<Site>) -> i64 {
        let mut n = 0;
        for l in self
            .links
            .iter()
            .filter(|l| l.route == route && Arc::ptr_eq(&l.source, source) && l.is_active())
        {
            if let Ok(m) = l.topics.lock() {
                for t in m.values() {
                    let pr = t.progress.borrow();
                    for (next, hw) in pr.next.iter().zip(&pr.high_watermark) {
                        if *next >= 0 && hw > next {
                            n += hw - next;
                        }
                    }
                }
            }
        }
        n
    }

    /// Translates a committed offset of a route's virtual topic from site
    /// `from` to site `to`, with the runs of the link `from → to` and the
    /// link `to → from` turned around (after a failback both exist).
    /// `None` when no run covers the offset (translation falls back to MM2
    /// checkpoints or timestamps); else the offset and whether it is exact.
    pub fn translate(
        &self,
        route: usize,
        from: &Arc<Site>,
        to: &Arc<Site>,
        virt: &str,
        partition: i32,
        offset: i64,
    ) -> Option<(i64, bool)> {
        use crate::offsets::runs::{PartitionRuns, Run};
        // The runs that can translate: (link, whether it runs from -> to).
        let mut sources = Vec::new();
        for l in self.links.iter().filter(|l| l.route == route) {
            let forward = Arc::ptr_eq(&l.source, from) && Arc::ptr_eq(&l.target, to);
            let backward = Arc::ptr_eq(&l.source, to) && Arc::ptr_eq(&l.target, from);
            if forward || backward {
                sources.push((l, forward));
            }
        }
        let key = |l: &Link| (l.source_topic(virt), partition);
        // The common case (one link copied the partition, in this direction):
        // its own runs translate, no chain to build. Shadow commits of sync
        // routes call this for every commit.
        let mut with_runs = sources.iter().filter(|(l, _)| {
            l.runs
                .lock()
                .is_ok_and(|m| m.get(&key(l)).is_some_and(|r| !r.is_empty()))
        });
        if let (Some((l, true)), None) = (with_runs.next(), with_runs.next()) {
            let m = l.runs.lock().ok()?;
            return translate_exact(m.get(&key(l))?, offset);
        }
        // After a failback both directions hold runs: one chain of both, the
        // reverse link's runs turned around.
        let mut chain = PartitionRuns::new(4096);
        for (l, forward) in sources {
            let Ok(m) = l.runs.lock() else { continue };
            for r in m.get(&key(l)).map(|r| r.runs()).unwrap_or_default() {
                chain.insert(if forward {
                    *r
                } else {
                    Run {
                        source: r.target,
                        target: r.source,
                        count: r.count,
                    }
                });
            }
        }
        translate_exact(&chain, offset)
    }

    /// Called by workers at each persist: the runs translation reads.
    fn publish_runs(
        &self,
        link: &Link,
        topic: &str,
        partition: i32,
        runs: &crate::offsets::runs::PartitionRuns,
    ) {
        if let Ok(mut m) = link.runs.lock() {
            m.insert((topic.to_string(), partition), runs.clone());
        }
    }

    /// The topic's tee on `link`, starting its worker on first use.
    fn topic(self: &Arc<Self>, link: &Arc<Link>, source_topic: &str) -> Option<Arc<TopicTee>> {
        if !link.is_active() {
            return None;
        }
        let target_topic = link.target_topic(source_topic)?;
        let mut map = link.topics.lock().ok()?;
        if let Some(t) = map.get(source_topic) {
            return Some(t.clone());
        }
        let stop = self.stop.lock().ok()?.clone()?;
        let t = Arc::new(TopicTee {
            source_topic: source_topic.to_string(),
            target_topic,
            progress: watch::Sender::new(Progress::default()),
            wake: Notify::new(),
            stats: Mutex::new(Stats {
                state: "starting".into(),
                ..Stats::default()
            }),
        });
        map.insert(source_topic.to_string(), t.clone());
        tracing::info!(route = %link.route_name, source = %link.source.name, target = %link.target.name,
            topic = source_topic, target_topic = %t.target_topic, mode = ?link.mode, "tee started for topic");
        let work = worker::run(self.clone(), link.clone(), t.clone(), stop);
        let task = match self.runtime.get() {
            Some(rt) => rt.spawn(work),
            None => tokio::spawn(work),
        };
        if let Ok(mut w) = self.workers.lock() {
            w.retain(|h| !h.is_finished());
            w.push(task);
        }
        Some(t)
    }

    /// Waits until every sync target of `route` holds the records
    /// `base..=through` of a source partition (physical topic on the route's
    /// site). Err: the Kafka error code and message for the client.
    pub async fn wait_synced(
        self: &Arc<Self>,
        route: usize,
        source: &Arc<Site>,
        source_topic: &str,
        partition: i32,
        (base, through): (i64, i64),
        deadline: Instant,
    ) -> Result<(), (i16, String)> {
        let p = usize::try_from(partition).unwrap_or(usize::MAX);
        for link in self.links.iter().filter(|l| {
            l.route == route && l.mode == TeeMode::Sync && Arc::ptr_eq(&l.source, source)
        }) {
            // The route switched sites after these records were written: the
            // link no longer copies from here, so they may never reach the
            // target; the client retries on the new site.
            let switched = || {
                Err((
                    NOT_SYNCED,
                    format!(
                        "route switched sites before the tee copied the records to `{}`; retry",
                        link.target.name
                    ),
                ))
            };
            if !link.is_active() {
                return switched();
            }
            let Some(t) = self.topic(link, source_topic) else {
                if !link.is_active() {
                    return switched();
                }
                continue;
            };
            t.wake.notify_one();
            let mut rx = t.progress.subscribe();
            // A broker may ack a retried, deduplicated batch without its
            // offsets (Tansu answers base offset -1). Then wait for a round
            // that started after the ack and ended caught up with the source.
            let unknown = base < 0;
            let round0 = rx.borrow().rounds;
            let mut active = link.active.subscribe();
            // A failover deactivates the link: the records may never reach
            // the standby, so the client must retry (on the new site).
            let stopped = async {
                let _ = active.wait_for(|a| !*a).await;
            };
            let waited = tokio::select! {
                w = tokio::time::timeout_at(deadline.into(), rx.wait_for(|pr| {
                    let next = pr.next.get(p).copied().unwrap_or(-1);
                    if unknown {
                        pr.rounds >= round0 + 2
                            && next >= 0
                            && pr.high_watermark.get(p).is_some_and(|hw| next >= *hw)
                    } else {
                        next > through
                    }
                })) => w,
                _ = stopped => {
                    return Err((
                        NOT_SYNCED,
                        format!(
                            "route switched sites before the tee copied the records to `{}`; retry",
                            link.target.name
                        ),
                    ));
                }
            };
            match waited {
                Ok(Ok(pr)) => {
                    if let Some(Some((offset, why))) = pr.rejected.get(p) {
                        if (base..=through).contains(offset) {
                            return Err((
                                error_for_rejection(why),
                                format!(
                                    "sync tee to site `{}` rejected the record at offset {offset}: {why}",
                                    link.target.name
                                ),
                            ));
                        }
                    }
                }
                Ok(Err(_)) | Err(_) => {
                    let why = t
                        .progress
                        .borrow()
                        .failing
                        .get(p)
                        .cloned()
                        .flatten()
                        .unwrap_or_else(|| "not written in time".into());
                    return Err((
                        NOT_SYNCED,
                        format!("sync tee to site `{}`: {why}", link.target.name),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn status(&self) -> Vec<TeeStatus> {
        self.links
            .iter()
            .map(|l| {
                let mut topics: Vec<TopicStatus> = l
                    .topics
                    .lock()
                    .map(|m| {
                        m.values()
                            .map(|t| TopicStatus {
                                source_topic: t.source_topic.clone(),
                                target_topic: t.target_topic.clone(),
                                stats: t.stats.lock().map(|s| s.clone()).unwrap_or_default(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                topics.sort_by(|a, b| a.source_topic.cmp(&b.source_topic));
                TeeStatus {
                    route: l.route_name.clone(),
                    source: l.source.name.clone(),
                    target: l.target.name.clone(),
                    mode: match l.mode {
                        TeeMode::Sync => "sync",
                        TeeMode::Async => "async",
                    },
                    active: l.is_active(),
                    direction: if l.reverse { "reverse" } else { "forward" },
                    topics,
                }
            })
            .collect()
    }
}

/// Translates with one chain of runs. Exact: inside a run, or right at the
/// end of the last one (the consumer is caught up with what was copied).
/// Otherwise the offset is past copied data or in a gap, and the answer is
/// the conservative end of the run before.
fn translate_exact(
    chain: &crate::offsets::runs::PartitionRuns,
    offset: i64,
) -> Option<(i64, bool)> {
    let to = chain.translate(offset)?;
    let exact = chain
        .runs()
        .iter()
        .any(|r| r.source <= offset && offset < r.source_end())
        || chain.last().is_some_and(|r| r.source_end() == offset);
    Some((to, exact))
}

/// A rejected record fails a sync produce with the target's own reason when
/// it is a record-level rejection the client can act on.
fn error_for_rejection(why: &str) -> i16 {
    // `worker` formats rejections as "<code> <NAME>: ...".
    why.split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(NOT_SYNCED)
}

/// Keeps one worker running per source topic the link copies.
async fn supervise(tee: Arc<Tee>, link: Arc<Link>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(1000);
    let mut active = link.active.subscribe();
    loop {
        if link.is_active() {
            let topics: Vec<String> = link.source.view().topics.keys().cloned().collect();
            for t in topics {
                tee.topic(&link, &t);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = active.changed() => {}
            _ = stop.changed() => return,
        }
    }
}
