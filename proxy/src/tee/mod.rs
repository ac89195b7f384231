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

pub mod batch;
pub mod client;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::config::{TeeConfig, TeeMode, TeeStart, Validated};
use crate::metrics::Metrics;
use crate::route::{Naming, Router, TopicMatch};
use crate::upstream::Site;

/// What a sync produce gets when a target did not take the records in time:
/// Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND, which says exactly that (written
/// on the leader, not on enough copies) and is retriable: the client retries,
/// an idempotent client is deduplicated on the source.
const NOT_SYNCED: i16 = 20;

/// One route's copy to one target site.
pub struct Link {
    pub route: usize,
    pub route_name: String,
    pub source: Arc<Site>,
    pub target: Arc<Site>,
    pub mode: TeeMode,
    pub start: TeeStart,
    route_topics: TopicMatch,
    route_naming: Naming,
    target_naming: Naming,
    topics: Mutex<HashMap<String, Arc<TopicTee>>>,
    /// Offset-sync records read back from the target once per link.
    restored: tokio::sync::Mutex<Option<Arc<worker::Restored>>>,
    /// Set once the offset-sync topic exists on the target.
    syncs_ready: std::sync::atomic::AtomicBool,
}

impl Link {
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
    cfg: TeeConfig,
    metrics: Arc<Metrics>,
    stop: Mutex<Option<watch::Receiver<bool>>>,
    /// Worker tasks, awaited at shutdown so their last offset syncs are written.
    workers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Tee {
    pub fn new(cfg: &Validated, sites: &[Arc<Site>], metrics: Arc<Metrics>) -> Arc<Self> {
        let router: &Router = &cfg.router;
        let mut links = Vec::new();
        for (ri, r) in router.routes().iter().enumerate() {
            for t in &r.tee {
                let (Some(source), Some(target)) = (sites.get(r.site), sites.get(t.site)) else {
                    continue;
                };
                links.push(Arc::new(Link {
                    route: ri,
                    route_name: r.name.clone(),
                    source: source.clone(),
                    target: target.clone(),
                    mode: t.mode,
                    start: t.start,
                    route_topics: r.topics.clone(),
                    route_naming: r.naming.clone(),
                    target_naming: t.naming.clone(),
                    topics: Mutex::new(HashMap::new()),
                    restored: tokio::sync::Mutex::new(None),
                    syncs_ready: std::sync::atomic::AtomicBool::new(false),
                }));
            }
        }
        Arc::new(Tee {
            links,
            cfg: cfg.config.tee.clone(),
            metrics,
            stop: Mutex::new(None),
            workers: Mutex::new(Vec::new()),
        })
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
        for link in &self.links {
            tokio::spawn(supervise(self.clone(), link.clone(), stop.clone()));
        }
    }

    /// The topic's tee on `link`, starting its worker on first use.
    fn topic(self: &Arc<Self>, link: &Arc<Link>, source_topic: &str) -> Option<Arc<TopicTee>> {
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
        let task = tokio::spawn(worker::run(self.clone(), link.clone(), t.clone(), stop));
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
        source_topic: &str,
        partition: i32,
        base: i64,
        through: i64,
        deadline: Instant,
    ) -> Result<(), (i16, String)> {
        let p = usize::try_from(partition).unwrap_or(usize::MAX);
        for link in self
            .links
            .iter()
            .filter(|l| l.route == route && l.mode == TeeMode::Sync)
        {
            let Some(t) = self.topic(link, source_topic) else {
                continue;
            };
            t.wake.notify_one();
            let mut rx = t.progress.subscribe();
            // A broker may ack a retried, deduplicated batch without its
            // offsets (Tansu answers base offset -1). Then wait for a round
            // that started after the ack and ended caught up with the source.
            let unknown = base < 0;
            let round0 = rx.borrow().rounds;
            let waited = tokio::time::timeout_at(
                deadline.into(),
                rx.wait_for(|pr| {
                    let next = pr.next.get(p).copied().unwrap_or(-1);
                    if unknown {
                        pr.rounds >= round0 + 2
                            && next >= 0
                            && pr.high_watermark.get(p).is_some_and(|hw| next >= *hw)
                    } else {
                        next > through
                    }
                }),
            )
            .await;
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
                    topics,
                }
            })
            .collect()
    }
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
    loop {
        let topics: Vec<String> = link.source.view().topics.keys().cloned().collect();
        for t in topics {
            tee.topic(&link, &t);
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
    }
}
