//! One topic's tee on one link: follow the source partitions, write each
//! record to the same partition of the target topic, record offset runs.
//!
//! A round: fetch every partition that is not backing off, turn what came
//! back into one target batch per partition (origin header added, teed-in
//! records dropped), write them in one Produce, then look at each partition's
//! answer:
//!
//! | answer | what happens |
//! |---|---|
//! | ok | runs recorded, progress advances, waiters wake |
//! | retriable (leader moved, timeout, target down) | retried with backoff, same batch |
//! | ambiguous (no answer, timed out) | new producer id, target re-checked from the last known write (see `reconcile`), then resume |
//! | record-level rejection (too large, invalid, policy) | batch split into single records; a single record rejected `reject_attempts` times is skipped and reported |
//! | anything else (authorization, missing topic) | retried with backoff forever and reported: skipping would silently drop everything |
//!
//! Skipping: a permanently rejected record must not block its partition
//! forever, and retrying it forever would make the whole partition's lag grow
//! without bound. It is logged with target, topic, partition, source offset
//! and reason, counted (`switchyard_tee_records_skipped_total`), kept as
//! `last_skipped` in the status, and a sync producer waiting for it gets the
//! target's error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::watch;

use super::{Link, Stats, Tee, TopicTee};
use crate::codec::batch::{self, BatchParams, Compression, WireRecord};
use crate::codec::errors::{
    self, CORRUPT_MESSAGE, INVALID_PRODUCER_EPOCH, INVALID_RECORD, INVALID_TIMESTAMP,
    MESSAGE_TOO_LARGE, NETWORK_EXCEPTION, NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    OUT_OF_ORDER_SEQUENCE_NUMBER, POLICY_VIOLATION, RECORD_LIST_TOO_LARGE, REQUEST_TIMED_OUT,
    UNKNOWN_PRODUCER_ID,
};
use crate::config::TeeStart;
use crate::offsets::runs::{PartitionRuns, Run};
use crate::offsets::sync_topic::{
    SlotCounter, SyncRecord, OFFSET_SYNCS_PARTITIONS, OFFSET_SYNCS_TOPIC,
    OFFSET_SYNCS_TOPIC_CONFIGS,
};
use crate::upstream::client::{SiteClient, Written};

/// Runs kept in memory per partition (older ones thinned; the persisted
/// topic keeps its own thinned history).
const MAX_RUNS: usize = 1024;
/// Target batches are kept under this size (Kafka's default
/// `max.message.bytes` is 1 MiB).
const MAX_BATCH_BYTES: usize = 900 * 1024;
/// What one partition may bring to a fetch: about what one round writes of
/// it (`MAX_BATCH_BYTES`). Whatever a round cannot write is fetched again
/// the next round, so a larger share is read, copied and CRC-checked in
/// vain (with 4 MiB per partition the tee moved its data ~4 times over).
const PARTITION_FETCH_BYTES: i32 = 1024 * 1024;
/// Fetch size when re-reading the target (reconcile, offset syncs).
const SCAN_BYTES: i32 = 1 << 20;

/// Offset-sync records of one link, read back from the target at start.
pub(super) struct Restored {
    by_partition: HashMap<(String, i32), Vec<SyncRecord>>,
}

#[derive(Default)]
struct Part {
    /// Next source offset to copy (`-1`: not known yet).
    next: i64,
    /// Target offset just after our last confirmed write (`None`: unknown).
    target_end: Option<i64>,
    seq: i32,
    runs: Option<PartitionRuns>,
    counter: SlotCounter,
    /// Runs changed since the last persist, with their run index.
    dirty: Vec<(u64, Run)>,
    /// Runs changed since offset translation last saw them.
    unpublished: bool,
    /// Target offsets of our records already on the target past the last
    /// known run (found by `reconcile`), as `(start, count)` ranges: the next
    /// that many copyable source records are there already and are passed
    /// over, each mapped to its target offset so the runs have no hole.
    skip: std::collections::VecDeque<(i64, i64)>,
    backoff: Duration,
    retry_at: Option<Instant>,
    /// While `next` is below this, send one record per batch (isolating a
    /// rejected record from its batch mates).
    singles_until: i64,
    /// `(source offset, attempts)` of a single record the target keeps rejecting.
    rejecting: Option<(i64, u32)>,
    high_watermark: i64,
    caught_up_at: Option<Instant>,
    /// The last known `next`, kept while `next` is unknown (-1) so lag stays
    /// visible during an outage.
    last_next: i64,
}

/// A batch on its way to the target.
struct Pending {
    partition: i32,
    batch: Bytes,
    offsets: Vec<i64>,
    /// Source offset to continue from once this batch is written.
    end: i64,
    bytes: usize,
    /// Conflict versions the tee plugins accepted: saved before the write.
    versions: Vec<(Bytes, crate::plugin::Version)>,
}

/// The tee plugins of a round: snapshot of the link's chain, and whether
/// the target's conflict state could be read.
struct Plugins {
    chain: Vec<Arc<crate::plugin::Loaded>>,
    registry: Arc<crate::plugin::registry::Registry>,
    state: Result<(), String>,
}

struct Worker {
    tee: Arc<Tee>,
    link: Arc<Link>,
    topic: Arc<TopicTee>,
    source: SiteClient,
    target: SiteClient,
    parts: Vec<Part>,
    producer: Option<(i64, i16)>,
    last_persist: Instant,
    labels: [String; 3],
    /// Fetch size per partition; grows when one batch is larger.
    fetch_bytes: i32,
    /// When a worker-wide retry (producer id) may run again.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Last time the high watermarks of backed-off partitions were probed.
    probed_at: Instant,
    /// The last round's fetch waited on the source (every partition was
    /// asked and nothing came back).
    long_polled: bool,
    /// Last time the source's partition count was compared with ours.
    grown_at: Instant,
}

/// Runs the CPU part of a round (decoding, tee plugins with their deadline,
/// re-encoding) so that it holds up no other task: on the multi-threaded
/// runtime the worker thread first hands its other tasks to another worker
/// (`block_in_place`). Elsewhere (unit tests) it runs inline.
fn cpu_work<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub(super) async fn run(
    tee: Arc<Tee>,
    link: Arc<Link>,
    topic: Arc<TopicTee>,
    mut stop: watch::Receiver<bool>,
) {
    let mut w = Worker {
        source: SiteClient::new(link.source.clone()),
        target: SiteClient::new(link.target.clone()),
        labels: [
            link.route_name.clone(),
            link.target.name.clone(),
            topic.source_topic.clone(),
        ],
        tee,
        link,
        topic,
        parts: Vec::new(),
        producer: None,
        last_persist: Instant::now(),
        fetch_bytes: 0,
        retry_at: None,
        backoff: Duration::ZERO,
        probed_at: Instant::now(),
        long_polled: false,
        grown_at: Instant::now(),
    };
    w.fetch_bytes = w.tee.cfg.max_fetch_bytes.min(PARTITION_FETCH_BYTES);
    let base = Duration::from_millis(w.tee.cfg.retry_backoff_ms);
    let max = Duration::from_millis(w.tee.cfg.max_retry_backoff_ms);
    let mut backoff = base;
    let mut active = w.link.active.subscribe();
    loop {
        if !*active.borrow() {
            w.retire();
            return;
        }
        match w.init().await {
            Ok(()) => break,
            Err(e) => w.failed("init", &e),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = active.changed() => {}
            _ = stop.changed() => return,
        }
        backoff = (backoff * 2).min(max);
    }
    w.set_state("running");
    let poll = Duration::from_millis(w.tee.cfg.poll_interval_ms);
    loop {
        if *stop.borrow() || !*active.borrow() {
            break;
        }
        let busy = w.round().await;
        w.publish();
        // A fetch that long-polled the source already waited for new records
        // (and ended as soon as some arrived): go straight to the next one.
        if !busy && !w.long_polled {
            let wait = w.next_retry().map(|d| d.min(poll)).unwrap_or(poll);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = w.topic.wake.notified() => {}
                _ = active.changed() => {}
                _ = stop.changed() => break,
            }
        }
    }
    w.persist(true).await;
    if !*active.borrow() {
        w.retire();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Part {
    /// Takes the target offset of the next record already on the target.
    fn take_skip(&mut self) -> Option<i64> {
        let (start, count) = self.skip.front_mut()?;
        let t = *start;
        *start += 1;
        *count -= 1;
        if *count <= 0 {
            self.skip.pop_front();
        }
        Some(t)
    }

    /// Records that source offset `source` sits at target offset `target`.
    fn map(&mut self, offsets: &[i64], target_base: i64) {
        self.unpublished = true;
        if let Some(runs) = self.runs.as_mut() {
            for run in runs.record(offsets, target_base) {
                let slot = self.counter.assign(&run);
                self.dirty.retain(|(idx, _)| *idx != slot.run_index);
                self.dirty.push((slot.run_index, run));
            }
        }
    }
}

impl Worker {
    /// The link went inactive (failover direction changed): leave the
    /// link's topic map so a later activation starts a fresh worker, and
    /// wake sync waiters so they re-check (they skip inactive links).
    fn retire(&mut self) {
        self.set_state("inactive");
        if let Ok(mut m) = self.link.topics.lock() {
            if m.get(&self.topic.source_topic)
                .is_some_and(|t| Arc::ptr_eq(t, &self.topic))
            {
                m.remove(&self.topic.source_topic);
            }
        }
        self.topic.progress.send_modify(|p| p.rounds += 1);
        tracing::info!(route = %self.link.route_name, source = %self.link.source.name,
            target = %self.link.target.name, topic = %self.topic.source_topic, "tee stopped (link inactive)");
    }

    /// Makes the current runs visible to offset translation.
    /// Done after every write, before sync producers are released: a
    /// consumer may commit right after reading a record, and its shadow
    /// commit is only exact if translation already knows where it was copied.
    fn publish_runs(&mut self, all: bool) {
        for (p, part) in self.parts.iter_mut().enumerate() {
            if !(all || part.unpublished) {
                continue;
            }
            part.unpublished = false;
            if let Some(runs) = part.runs.as_ref() {
                self.tee
                    .publish_runs(&self.link, &self.topic.source_topic, p as i32, runs);
            }
        }
    }

    fn set_state(&self, s: &str) {
        if let Ok(mut st) = self.topic.stats.lock() {
            st.state = s.to_string();
        }
    }

    fn stats(&self, f: impl FnOnce(&mut Stats)) {
        if let Ok(mut st) = self.topic.stats.lock() {
            f(&mut st);
        }
    }

    fn failed(&self, reason: &str, why: &str) {
        let l = &self.labels;
        self.tee
            .metrics
            .tee
            .errors
            .with_label_values(&[&l[0], &l[1], &l[2], reason])
            .inc();
        self.stats(|s| {
            s.errors += 1;
            s.last_error = Some(format!("{reason}: {why}"));
        });
        tracing::warn!(route = %self.link.route_name, target = %self.link.target.name,
            topic = %self.topic.source_topic, target_topic = %self.topic.target_topic,
            reason, error = why, "tee write failed; retrying with backoff");
    }

    /// Target topic and offset-sync topic exist, producer id, progress.
    async fn init(&mut self) -> Result<(), String> {
        let _ = self.source.site.refresh().await;
        let n = self
            .source
            .partitions(&self.topic.source_topic)
            .await
            .ok_or_else(|| format!("source topic `{}` not found", self.topic.source_topic))?;
        self.ensure_topic(&self.topic.target_topic.clone(), n, &[])
            .await?;
        if !self
            .link
            .syncs_ready
            .load(std::sync::atomic::Ordering::Acquire)
        {
            self.ensure_topic(
                OFFSET_SYNCS_TOPIC,
                OFFSET_SYNCS_PARTITIONS as usize,
                OFFSET_SYNCS_TOPIC_CONFIGS,
            )
            .await?;
            self.link
                .syncs_ready
                .store(true, std::sync::atomic::Ordering::Release);
        }
        let restored = self.restored().await?;
        self.parts = (0..n).map(|_| Part::default()).collect();
        for (p, part) in self.parts.iter_mut().enumerate() {
            let mut runs = PartitionRuns::new(MAX_RUNS);
            if let Some(recs) = restored
                .by_partition
                .get(&(self.topic.source_topic.clone(), p as i32))
            {
                for r in recs {
                    runs.insert(r.run());
                    part.counter.observe(r);
                }
            }
            part.runs = Some(runs);
            part.next = -1;
        }
        self.producer = Some(self.target.init_producer_id().await?);
        for p in 0..n {
            self.reconcile(p as i32).await?;
        }
        self.publish_runs(true);
        self.publish();
        Ok(())
    }

    async fn ensure_topic(
        &mut self,
        name: &str,
        partitions: usize,
        configs: &[(&str, &str)],
    ) -> Result<(), String> {
        let mut have = self.target.partitions(name).await;
        if have.is_some_and(|h| h < partitions) {
            // The view may be stale (an operator just fixed the topic).
            self.target.site.mark_stale();
            let _ = self.target.site.refresh().await;
            have = self.target.partitions(name).await;
        }
        match have {
            Some(h) if h >= partitions => return Ok(()),
            Some(h) => {
                return Err(format!(
                    "target topic `{name}` has {h} partitions, the source has {partitions}: \
                     a partition-preserving tee needs at least as many (add partitions on the target)"
                ))
            }
            None => {}
        }
        let code = self
            .target
            .create_topic(name, partitions as i32, configs)
            .await?;
        // 36 TOPIC_ALREADY_EXISTS: another worker or instance won the race.
        if code != 0 && code != 36 {
            return Err(format!(
                "creating topic `{name}` on the target failed with error {code}"
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.target.partitions(name).await.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "topic `{name}` not visible on the target after creation"
        ))
    }

    /// Reads the link's offset-sync records back from the target, once per link.
    async fn restored(&mut self) -> Result<Arc<Restored>, String> {
        let mut guard = self.link.restored.lock().await;
        if let Some(r) = guard.as_ref() {
            return Ok(r.clone());
        }
        let end = self.target.high_watermark(OFFSET_SYNCS_TOPIC, 0).await?;
        let start = self.target.list_offset(OFFSET_SYNCS_TOPIC, 0, -2).await?;
        let mut by_partition: HashMap<(String, i32), Vec<SyncRecord>> = HashMap::new();
        let mut bad = 0usize;
        let source = self.link.source.name.clone();
        self.target
            .scan(OFFSET_SYNCS_TOPIC, 0, start, end, SCAN_BYTES, |r| {
                let key = r.key.as_deref().unwrap_or_default();
                match SyncRecord::decode(key, r.value.as_deref()) {
                    Ok(Some(s)) if s.source_site == source => by_partition
                        .entry((s.source_topic.clone(), s.partition))
                        .or_default()
                        .push(s),
                    Ok(_) => {}
                    Err(_) => bad += 1,
                }
            })
            .await?;
        if bad > 0 {
            tracing::warn!(target = %self.link.target.name, bad, "ignored malformed offset-sync records");
        }
        let r = Arc::new(Restored { by_partition });
        *guard = Some(r.clone());
        Ok(r)
    }

    /// Finds where partition `p` resumes: after the last persisted (or
    /// confirmed) run, minus what the target already holds beyond it. Our
    /// records on the target carry our origin header, so counting them past
    /// the last known target offset tells exactly how many source records
    /// are already copied.
    async fn reconcile(&mut self, p: i32) -> Result<(), String> {
        let src = self.topic.source_topic.clone();
        let tgt = self.topic.target_topic.clone();
        let i = p as usize;
        let last = self.parts[i].runs.as_ref().and_then(|r| r.last());
        let (source_from, target_from) = match (self.parts[i].next, self.parts[i].target_end, last)
        {
            (n, Some(t), _) if n >= 0 => (n, t),
            (_, _, Some(run)) => (run.source_end(), run.target_end()),
            _ => match self.link.start {
                TeeStart::Latest => {
                    let hw = self.source.high_watermark(&src, p).await?;
                    let tend = self.target.high_watermark(&tgt, p).await?;
                    let part = &mut self.parts[i];
                    part.next = hw;
                    part.target_end = Some(tend);
                    part.skip.clear();
                    return Ok(());
                }
                TeeStart::Earliest => (
                    self.source.list_offset(&src, p, -2).await?,
                    self.target.list_offset(&tgt, p, -2).await?,
                ),
            },
        };
        let target_hw = self.target.high_watermark(&tgt, p).await?;
        let mut ours = 0u64;
        let mut found: std::collections::VecDeque<(i64, i64)> = Default::default();
        let origin = self.link.source.name.as_bytes().to_vec();
        self.target
            .scan(&tgt, p, target_from, target_hw, SCAN_BYTES, |r| {
                if r.origin() == Some(&origin[..]) {
                    ours += 1;
                    match found.back_mut() {
                        Some((start, count)) if *start + *count == r.offset => *count += 1,
                        _ => found.push_back((r.offset, 1)),
                    }
                }
            })
            .await?;
        tracing::debug!(topic = %src, partition = p, source_from, target_from, target_hw, ours, "tee reconciled");
        let part = &mut self.parts[i];
        part.next = source_from;
        part.target_end = Some(target_hw);
        part.skip = found;
        if ours > 0 {
            tracing::info!(route = %self.link.route_name, target = %self.link.target.name, topic = %src,
                partition = p, resume_from = source_from, already_on_target = ours,
                "tee resumes; records already on the target are not written again");
        }
        Ok(())
    }

    fn next_retry(&self) -> Option<Duration> {
        let now = Instant::now();
        self.parts
            .iter()
            .filter_map(|p| p.retry_at)
            .chain(self.retry_at)
            .map(|t| t.saturating_duration_since(now))
            .min()
    }

    /// Partitions added to the source topic after the tee started: the
    /// target must have them too (created by the operator, or by us when the
    /// topic is new), then they are copied like the others. Checked every 5 s
    /// against the source view (which metadata refreshes keep current).
    async fn grow(&mut self) {
        if self.grown_at.elapsed() < Duration::from_secs(5) {
            return;
        }
        self.grown_at = Instant::now();
        let have = self.parts.len();
        let Some(n) = self
            .source
            .site
            .view()
            .topics
            .get(&self.topic.source_topic)
            .map(|t| t.leaders.len())
        else {
            return;
        };
        if n <= have {
            return;
        }
        let target = self.topic.target_topic.clone();
        if let Err(e) = self.ensure_topic(&target, n, &[]).await {
            self.failed("partitions_added", &e);
            return;
        }
        tracing::info!(route = %self.link.route_name, target = %self.link.target.name,
            topic = %self.topic.source_topic, from = have, to = n, "source topic has new partitions; teeing them");
        for _ in have..n {
            self.parts.push(Part {
                runs: Some(PartitionRuns::new(MAX_RUNS)),
                next: -1,
                ..Part::default()
            });
        }
        for p in have..n {
            if let Err(e) = self.reconcile(p as i32).await {
                self.failed("reconcile", &e);
                self.backoff(p);
            }
        }
    }

    /// Keeps the source high watermarks of partitions that are not being
    /// fetched (backing off, position unknown) fresh, at most once a second,
    /// so the reported lag keeps growing during an outage.
    async fn probe(&mut self) {
        if self.probed_at.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.probed_at = Instant::now();
        let now = Instant::now();
        let idle: Vec<(i32, i64)> = self
            .parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.next < 0 || p.retry_at.is_some_and(|t| t > now))
            .map(|(i, p)| (i as i32, p.last_next.max(0)))
            .collect();
        if idle.is_empty() {
            return;
        }
        let src = self.topic.source_topic.clone();
        for f in self.source.fetch(&src, &idle, 1, 1).await {
            if f.error == 0 {
                if let Some(p) = self.parts.get_mut(f.partition as usize) {
                    p.high_watermark = f.high_watermark;
                }
            }
        }
    }

    /// One fetch + write round; true when it moved anything.
    async fn round(&mut self) -> bool {
        self.long_polled = false;
        if self.producer.is_none() || self.parts.iter().any(|p| p.next < 0) {
            self.retry_recovery().await;
            if self.producer.is_none() {
                self.probe().await;
                return false;
            }
        }
        self.probe().await;
        self.grow().await;
        let now = Instant::now();
        let want: Vec<(i32, i64)> = self
            .parts
            .iter()
            .enumerate()
            .filter(|(_, p)| p.next >= 0 && p.retry_at.is_none_or(|t| t <= now))
            .map(|(i, p)| (i as i32, p.next))
            .collect();
        if want.is_empty() {
            return false;
        }
        let src = self.topic.source_topic.clone();
        // A long poll: the source answers as soon as records arrive, or after
        // the poll interval. Only when every partition is asked: a partition
        // coming out of backoff must not wait for the whole interval.
        let all = want.len() == self.parts.len();
        let wait = if all {
            self.tee.cfg.poll_interval_ms.min(i32::MAX as u64) as i32
        } else {
            1
        };
        // Every partition's share (grown past the default when a single
        // source batch needs it) within one bound for the whole answer.
        let total = self.tee.cfg.max_fetch_bytes.max(self.fetch_bytes);
        let fetched = self
            .source
            .fetch_within(&src, &want, self.fetch_bytes, total, wait)
            .await;
        let any_records = fetched
            .iter()
            .any(|f| f.error != 0 || f.records.as_ref().is_some_and(|r| !r.is_empty()));
        self.long_polled = all && !any_records;
        tracing::trace!(topic = %src, asked = want.len(), answered = fetched.len(), "tee fetch round");
        let plugins = match self.plugins().await {
            Ok(p) => p,
            Err(e) => {
                // A chain naming a plugin that is not loaded: copying
                // without it could let through what it should stop.
                for (i, _) in &want {
                    self.failed("plugin", &e);
                    self.backoff(*i as usize);
                }
                return false;
            }
        };
        // Conflict-resolving chains take the target's turn before resolving
        // and keep it until written (`plugin::conflict`, "Order").
        let _turn = match &plugins {
            Some(p) if p.chain.iter().any(|l| l.caps.resolve) => Some(
                p.registry
                    .conflicts()
                    .writer(self.link.target_index as u16, &self.topic.target_topic)
                    .await,
            ),
            _ => None,
        };
        let mut pendings = Vec::new();
        let mut moved = false;
        for f in fetched {
            tracing::trace!(topic = %src, partition = f.partition, error = f.error, hw = f.high_watermark,
                bytes = f.records.as_ref().map_or(0, |r| r.len()), "tee fetched");
            let i = f.partition as usize;
            if i >= self.parts.len() {
                continue;
            }
            if f.error != 0 {
                if f.error == 1 {
                    // OFFSET_OUT_OF_RANGE: the source deleted what we had not
                    // copied yet (retention, DeleteRecords). Nothing to copy
                    // any more; say so loudly and continue from the log start.
                    if let Ok(start) = self.source.list_offset(&src, f.partition, -2).await {
                        let part = &mut self.parts[i];
                        tracing::error!(route = %self.link.route_name, target = %self.link.target.name,
                            topic = %src, partition = f.partition, from = part.next, to = start,
                            "source records deleted before they were teed; they are missing on the target");
                        part.next = start;
                        part.skip.clear();
                        moved = true;
                    }
                } else {
                    let name = errors::name(f.error);
                    self.failed(
                        &format!("source_{name}"),
                        &format!("fetching from the source: {} {name}", f.error),
                    );
                    self.backoff(i);
                }
                continue;
            }
            let part = &mut self.parts[i];
            part.high_watermark = f.high_watermark;
            let Some(records) = f.records else { continue };
            // The walk over the batch headers, once: CRCs are checked only
            // for the batches `build` decodes.
            let batches = match batch::headers(&records) {
                Ok(b) => b,
                Err(e) => {
                    self.failed("source_batch", &e.to_string());
                    self.backoff(i);
                    continue;
                }
            };
            if !records.is_empty() && batches.is_empty() {
                // Only part of one batch fit: fetch more next time (Kafka
                // returns a whole first batch regardless; not every broker does).
                let max = i32::try_from(self.link.source.settings.max_frame_bytes / 2)
                    .unwrap_or(i32::MAX);
                if self.fetch_bytes < max {
                    self.fetch_bytes = self.fetch_bytes.saturating_mul(2).min(max);
                    tracing::info!(topic = %src, partition = f.partition, fetch_bytes = self.fetch_bytes,
                        "a source batch is larger than the fetch size; fetching more");
                    moved = true;
                } else {
                    self.failed(
                        "batch_too_large",
                        "a source batch exceeds limits.max_frame_bytes / 2",
                    );
                    self.backoff(i);
                }
                continue;
            }
            match cpu_work(|| self.build(i, batches, &f.aborted, plugins.as_ref())) {
                Ok(Some(p)) => pendings.push(p),
                Ok(None) => {}
                Err(e) => {
                    self.failed("source_batch", &e);
                    self.backoff(i);
                }
            }
            moved |= self.parts[i].next
                != want
                    .iter()
                    .find(|w| w.0 == f.partition)
                    .map(|w| w.1)
                    .unwrap_or(-1);
        }
        if pendings.is_empty() {
            self.persist(false).await;
            return moved;
        }
        let tgt = self.topic.target_topic.clone();
        if let Some(p) = &plugins {
            // Versions before records (`plugin::conflict`): a partition whose
            // versions could not be saved is not written this round.
            let mut i = 0;
            while i < pendings.len() {
                let versions = std::mem::take(&mut pendings[i].versions);
                let saved = p
                    .registry
                    .conflicts()
                    .save(self.link.target_index as u16, &tgt, &versions)
                    .await;
                if let Err(e) = saved {
                    let part = pendings.swap_remove(i).partition as usize;
                    self.failed("plugin_state", &e);
                    self.backoff(part);
                } else {
                    i += 1;
                }
            }
            if pendings.is_empty() {
                return moved;
            }
        }
        let batches: Vec<(i32, Bytes)> = pendings
            .iter()
            .map(|p| (p.partition, p.batch.clone()))
            .collect();
        let written = self.target.produce(&tgt, batches).await;
        let mut ambiguous = false;
        for w in written {
            let Some(pos) = pendings.iter().position(|p| p.partition == w.partition) else {
                continue;
            };
            let pending = pendings.swap_remove(pos);
            ambiguous |= self.settle(pending, &w);
        }
        if ambiguous {
            self.recover().await;
        }
        self.publish_runs(false);
        self.persist(false).await;
        true
    }

    /// Turns fetched source records into the partition's next target batch.
    /// Advances `next` over anything that needs no write.
    /// The link's tee plugins now, with the target's conflict state read
    /// when a plugin resolves conflicts. `Ok(None)`: no plugins.
    async fn plugins(&self) -> Result<Option<Plugins>, String> {
        let (Some(k), Some(reg)) = (self.link.tee_index, self.tee.plugins.get()) else {
            return Ok(None);
        };
        let chain = reg
            .chain(self.link.route, crate::plugin::registry::Which::Tee(k))
            .map_err(|m| m.0)?;
        if chain.is_empty() {
            return Ok(None);
        }
        let state = if chain.iter().any(|p| p.caps.resolve) {
            reg.conflicts()
                .ensure_restored(self.link.target_index as u16)
                .await
        } else {
            Ok(())
        };
        Ok(Some(Plugins {
            chain,
            registry: reg.clone(),
            state,
        }))
    }

    fn build(
        &mut self,
        i: usize,
        batches: Vec<batch::BatchRef>,
        aborted: &[(i64, i64)],
        plugins: Option<&Plugins>,
    ) -> Result<Option<Pending>, String> {
        let origin = self.link.source.name.clone();
        let (pid, epoch) = self.producer.unwrap_or((-1, -1));
        let part = &mut self.parts[i];
        let mut kept: Vec<WireRecord> = Vec::new();
        let mut size = 0usize;
        let mut end = part.next;
        let mut compression = Compression::None;
        let mut versions = Vec::new();
        let singles = part.next < part.singles_until;
        'batches: for b in batches {
            if b.last_offset < part.next {
                continue;
            }
            let aborted_txn = b.is_transactional
                && aborted
                    .iter()
                    .any(|(p, first)| *p == b.producer_id && *first <= b.last_offset);
            if b.is_control || aborted_txn {
                end = end.max(b.last_offset + 1);
                continue;
            }
            if kept.is_empty() {
                compression = b.compression;
            }
            batch::check_crc(&b).map_err(|e| e.to_string())?;
            let recs = batch::decode(&b).map_err(|e| e.to_string())?;
            let (mut copy, _teed_in) = batch::for_tee(
                recs.into_iter().filter(|r| r.offset >= part.next).collect(),
                &origin,
            );
            // Plugins decide before records already on the target are passed
            // over: that count (`reconcile`) is of records the plugins kept.
            if let (Some(p), false) = (plugins, copy.is_empty()) {
                let meta = crate::plugin::BatchMeta {
                    stage: crate::plugin::Stage::Tee,
                    topic: self.topic.source_topic.clone(),
                    partition: i as i32,
                    origin_site: self.link.source_index as u16,
                    local_site: self.link.source_index as u16,
                    target_site: Some(self.link.target_index as u16),
                    client_id: None,
                    base_offset: copy.first().map_or(b.base_offset, |r| r.offset),
                };
                let scope = crate::plugin::chain::Scope {
                    site: self.link.target_index as u16,
                    topic: &self.topic.target_topic,
                };
                let out = crate::plugin::chain::run_ready(
                    p.registry.conflicts(),
                    &p.chain,
                    meta,
                    scope,
                    crate::plugin::chain::Input::Records(copy),
                    p.state.clone(),
                );
                if let Some(why) = out.refused {
                    return Err(why);
                }
                versions.extend(out.versions);
                copy = out.applied.kept;
            }
            let mut last_seen = b.last_offset;
            for r in copy {
                if let Some(t) = part.take_skip() {
                    part.map(&[r.offset], t);
                    continue;
                }
                let sz = r.key.as_ref().map_or(0, |k| k.len())
                    + r.value.as_ref().map_or(0, |v| v.len())
                    + 64;
                if !kept.is_empty() && (singles || size + sz > MAX_BATCH_BYTES) {
                    // Stop before this record; it starts the next batch.
                    last_seen = r.offset - 1;
                    end = end.max(last_seen + 1);
                    break 'batches;
                }
                size += sz;
                kept.push(r);
            }
            end = end.max(last_seen + 1);
        }
        if kept.is_empty() {
            if end > part.next {
                part.next = end;
            }
            return Ok(None);
        }
        let offsets: Vec<i64> = kept.iter().map(|r| r.offset).collect();
        let batch = batch::encode(
            &kept,
            &BatchParams {
                compression,
                producer_id: pid,
                producer_epoch: epoch,
                base_sequence: part.seq,
            },
        )
        .map_err(|e| e.to_string())?;
        Ok(Some(Pending {
            partition: i as i32,
            bytes: batch.len(),
            batch,
            offsets,
            end,
            versions,
        }))
    }

    /// Applies one partition's answer. Returns true when the outcome is
    /// unknown (the batch may or may not be on the target).
    fn settle(&mut self, p: Pending, w: &Written) -> bool {
        let i = p.partition as usize;
        let l = self.labels.clone();
        let m = &self.tee.metrics.tee;
        // 46 DUPLICATE_SEQUENCE_NUMBER: the target already has this batch.
        if w.error == 0 || w.error == 46 {
            let part = &mut self.parts[i];
            if w.error == 0 && w.base_offset >= 0 {
                part.map(&p.offsets, w.base_offset);
                part.target_end = Some(w.base_offset + p.offsets.len() as i64);
            }
            part.next = p.end;
            part.seq = part.seq.wrapping_add(p.offsets.len() as i32);
            part.backoff = Duration::ZERO;
            part.retry_at = None;
            part.rejecting = None;
            let n = p.offsets.len() as u64;
            m.records
                .with_label_values(&[&l[0], &l[1], &l[2]])
                .inc_by(n);
            m.bytes
                .with_label_values(&[&l[0], &l[1], &l[2]])
                .inc_by(p.bytes as u64);
            let now = now_ms();
            m.last_success
                .with_label_values(&[&l[0], &l[1], &l[2]])
                .set(now as f64 / 1000.0);
            self.stats(|s| {
                s.records += n;
                s.bytes += p.bytes as u64;
                s.last_success_unix_ms = Some(now as u64);
                s.last_error = None;
            });
            self.topic.progress.send_modify(|pr| {
                if let Some(f) = pr.failing.get_mut(i) {
                    *f = None;
                }
            });
            return false;
        }
        let name = errors::name(w.error);
        let why = match &w.message {
            Some(msg) => format!("{} {name}: {msg}", w.error),
            None => format!("{} {name}", w.error),
        };
        self.topic.progress.send_modify(|pr| {
            if let Some(f) = pr.failing.get_mut(i) {
                *f = Some(why.clone());
            }
        });
        m.retries.with_label_values(&[&l[0], &l[1], &l[2]]).inc();
        self.stats(|s| s.retries += 1);
        match w.error {
            // Record-level rejections: isolate, then skip after the attempts.
            CORRUPT_MESSAGE
            | MESSAGE_TOO_LARGE
            | RECORD_LIST_TOO_LARGE
            | INVALID_TIMESTAMP
            | POLICY_VIOLATION
            | INVALID_RECORD => {
                self.failed(name, &why);
                let part = &mut self.parts[i];
                if p.offsets.len() > 1 {
                    part.singles_until = p.end;
                    return false;
                }
                let offset = p.offsets.first().copied().unwrap_or(part.next);
                let attempts = match part.rejecting {
                    Some((o, a)) if o == offset => a + 1,
                    _ => 1,
                };
                if attempts >= self.tee.cfg.reject_attempts {
                    tracing::error!(route = %self.link.route_name, target = %self.link.target.name,
                        topic = %self.topic.source_topic, partition = p.partition, offset, reason = %why,
                        attempts, "target rejects record permanently; skipped (it is NOT on the target)");
                    part.next = offset + 1;
                    part.rejecting = None;
                    part.retry_at = None;
                    m.skipped.with_label_values(&[&l[0], &l[1], &l[2]]).inc();
                    let desc = format!("partition {} offset {offset}: {why}", p.partition);
                    self.stats(|s| {
                        s.skipped += 1;
                        s.last_skipped = Some(desc);
                    });
                    self.topic.progress.send_modify(|pr| {
                        if let Some(r) = pr.rejected.get_mut(i) {
                            *r = Some((offset, why.clone()));
                        }
                    });
                } else {
                    part.rejecting = Some((offset, attempts));
                    self.backoff(i);
                }
                false
            }
            // Our producer state on the target is gone or fenced, or no
            // answer: the batch may be there. Re-check and start over.
            NETWORK_EXCEPTION
            | REQUEST_TIMED_OUT
            | NOT_ENOUGH_REPLICAS_AFTER_APPEND
            | OUT_OF_ORDER_SEQUENCE_NUMBER
            | INVALID_PRODUCER_EPOCH
            | UNKNOWN_PRODUCER_ID => {
                self.failed(name, &why);
                self.backoff(i);
                true
            }
            _ => {
                self.failed(name, &why);
                self.backoff(i);
                false
            }
        }
    }

    fn backoff(&mut self, i: usize) {
        let base = Duration::from_millis(self.tee.cfg.retry_backoff_ms);
        let max = Duration::from_millis(self.tee.cfg.max_retry_backoff_ms);
        if let Some(part) = self.parts.get_mut(i) {
            part.backoff = if part.backoff.is_zero() {
                base
            } else {
                (part.backoff * 2).min(max)
            };
            part.retry_at = Some(Instant::now() + part.backoff);
        }
    }

    /// After an ambiguous write: a new producer id (fresh sequences), and
    /// every partition re-checked against the target.
    async fn recover(&mut self) {
        match self.target.init_producer_id().await {
            Ok(p) => {
                self.producer = Some(p);
                for part in &mut self.parts {
                    part.seq = 0;
                }
            }
            Err(e) => {
                self.failed("init_producer_id", &e);
                self.producer = None;
            }
        }
        for p in 0..self.parts.len() {
            if let Err(e) = self.reconcile(p as i32).await {
                self.failed("reconcile", &e);
                // Unknown state: the partition waits until `retry_recovery`
                // re-checks it (`round` skips next = -1).
                self.parts[p].next = -1;
                self.parts[p].target_end = None;
                self.backoff(p);
            }
        }
    }

    /// Partitions left in an unknown state by a failed recovery get another
    /// try once their backoff has passed.
    async fn retry_recovery(&mut self) {
        let now = Instant::now();
        if self.producer.is_none() {
            if self.retry_at.is_some_and(|t| t > now) {
                return;
            }
            match self.target.init_producer_id().await {
                Ok(p) => {
                    self.producer = Some(p);
                    self.backoff = Duration::ZERO;
                    self.retry_at = None;
                    for part in &mut self.parts {
                        part.seq = 0;
                    }
                }
                Err(e) => {
                    self.failed("init_producer_id", &e);
                    let base = Duration::from_millis(self.tee.cfg.retry_backoff_ms);
                    let max = Duration::from_millis(self.tee.cfg.max_retry_backoff_ms);
                    self.backoff = if self.backoff.is_zero() {
                        base
                    } else {
                        (self.backoff * 2).min(max)
                    };
                    self.retry_at = Some(now + self.backoff);
                    return;
                }
            }
        }
        for p in 0..self.parts.len() {
            let part = &self.parts[p];
            if part.next >= 0 || part.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            if let Err(e) = self.reconcile(p as i32).await {
                self.failed("reconcile", &e);
                self.backoff(p);
            }
        }
    }

    /// Writes changed runs to the offset-sync topic on the target, at most
    /// every `offset_sync_interval_ms` unless `force`.
    async fn persist(&mut self, force: bool) {
        let interval = Duration::from_millis(self.tee.cfg.offset_sync_interval_ms);
        if !force && self.last_persist.elapsed() < interval {
            return;
        }
        self.publish_runs(false);
        let now = now_ms();
        let mut records = Vec::new();
        for (p, part) in self.parts.iter().enumerate() {
            for (idx, run) in &part.dirty {
                let s = SyncRecord::from_run(
                    &self.link.source.name,
                    &self.topic.source_topic,
                    &self.topic.target_topic,
                    p as i32,
                    *idx,
                    *run,
                    now,
                );
                for key in [s.key(), s.head_key()] {
                    records.push(WireRecord {
                        offset: records.len() as i64,
                        timestamp: now,
                        key: Some(Bytes::from(key)),
                        value: Some(Bytes::from(s.value())),
                        headers: Vec::new(),
                    });
                }
            }
        }
        if records.is_empty() {
            self.last_persist = Instant::now();
            return;
        }
        let batch = match batch::encode(&records, &BatchParams::PLAIN) {
            Ok(b) => b,
            Err(e) => {
                self.failed("offset_sync", &e.to_string());
                return;
            }
        };
        let w = self
            .target
            .produce(OFFSET_SYNCS_TOPIC, vec![(0, batch)])
            .await;
        if w.first().is_some_and(|w| w.error == 0) {
            for part in &mut self.parts {
                part.dirty.clear();
            }
            self.last_persist = Instant::now();
        } else {
            let why = w
                .first()
                .map(|w| format!("error {}", w.error))
                .unwrap_or_else(|| "no answer".into());
            self.failed("offset_sync", &why);
        }
    }

    /// Progress for sync waiters; lag for metrics and status.
    fn publish(&mut self) {
        let now = Instant::now();
        let mut lag_records = 0i64;
        let mut lag_seconds = 0f64;
        for part in &mut self.parts {
            if part.next >= 0 {
                part.last_next = part.next;
            }
            let lag = if part.high_watermark > 0 {
                (part.high_watermark - part.last_next).max(0)
            } else {
                0
            };
            if lag == 0 {
                part.caught_up_at = Some(now);
            } else if let Some(t) = part.caught_up_at {
                lag_seconds = lag_seconds.max(now.duration_since(t).as_secs_f64());
            }
            lag_records += lag;
        }
        let l = &self.labels;
        let m = &self.tee.metrics.tee;
        m.lag_records
            .with_label_values(&[&l[0], &l[1], &l[2]])
            .set(lag_records);
        m.lag_seconds
            .with_label_values(&[&l[0], &l[1], &l[2]])
            .set(lag_seconds);
        self.stats(|s| {
            s.lag_records = lag_records;
            s.lag_seconds = lag_seconds;
        });
        let n = self.parts.len();
        let next: Vec<i64> = self.parts.iter().map(|p| p.next).collect();
        let hw: Vec<i64> = self.parts.iter().map(|p| p.high_watermark).collect();
        self.topic.progress.send_modify(|pr| {
            pr.next = next;
            pr.high_watermark = hw;
            pr.rounds += 1;
            pr.rejected.resize(n, None);
            pr.failing.resize(n, None);
        });
    }
}
