//! Shadow commits: consumer-group offsets translated into the other site's
//! offset space and committed there continuously, so a failover needs
//! nothing from the failed site.
//!
//! Every OffsetCommit that succeeds on a failover route's serving site is
//! noted (`observe`); at most every `failover.shadow_commit_interval_ms` the
//! latest offset per (group, partition) is translated and committed on the
//! other site as a simple-consumer commit (generation -1, as MirrorMaker 2's
//! offset sync does; accepted while the group has no members there).
//!
//! Translation, in order of preference (reference §3.2):
//! 1. **runs** recorded by the tee (`Tee::translate`): exact for every
//!    copied record;
//! 2. **MirrorMaker 2 checkpoints** in `<alias>.checkpoints.internal` on the
//!    target, when MM2 copied the data: the checkpoint's downstream offset
//!    if its upstream offset is at or before the commit (records between
//!    the two are delivered again and counted);
//! 3. **timestamps**: the timestamp of the last consumed record (read from
//!    the source while it is alive) minus `failover.timestamp_slack_ms`,
//!    looked up on the target.
//!
//! Rule: never skip a record. Each method only ever lands at or before the
//! first unconsumed record; shadow commits never move backwards unless the
//! group itself rewound. The records a translation may deliver twice are
//! counted in `switchyard_offset_translation_redelivered_total`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::offsets::mm2::{self, CheckpointStore};
use crate::offsets::timestamp;
use crate::upstream::client::{GroupOffset, SiteClient};
use crate::upstream::Site;

/// How long one translation step (a timestamp lookup, a checkpoint read)
/// may take before the entry is retried next round.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// Checkpoint topics are re-read at most this often.
const CHECKPOINT_REFRESH: Duration = Duration::from_secs(10);
/// Bounds on remembered groups and offsets (clients may invent group ids).
const MAX_GROUPS: usize = 10_000;
const MAX_MARKS: usize = 1_000_000;

/// One partition's latest commit on the serving site: virtual topic,
/// partition → (offset, metadata).
pub type Commits = BTreeMap<(String, i32), (i64, Option<String>)>;

/// Offsets a transaction committed: group, site, commits.
pub type TxnCommits = (String, usize, Commits);

struct PendingGroup {
    from: usize,
    offsets: Commits,
}

/// What was last committed on a site for a (route, group, site, virtual
/// topic, partition): the source offset it translated and the result.
#[derive(Debug, Clone, Copy)]
struct Mark {
    from_offset: i64,
    to_offset: i64,
}

/// (route, group, site, virtual topic, partition).
pub(super) type MarkKey = (usize, String, usize, String, i32);

/// Cached checkpoint stores per (route, site), with when they were read.
type CheckpointCache = HashMap<(usize, usize), (Instant, Arc<CheckpointStore>)>;

pub(super) fn mark_key(
    route: usize,
    group: &str,
    site: usize,
    virt: &str,
    partition: i32,
) -> MarkKey {
    (route, group.to_string(), site, virt.to_string(), partition)
}

#[derive(Default)]
pub struct Shadow {
    pending: Mutex<HashMap<(usize, String), PendingGroup>>,
    /// Offsets committed inside a transaction (TxnOffsetCommit), by
    /// transactional id: (group, site, commits), noted only once the
    /// transaction commits (an aborted one's offsets never count).
    in_txn: Mutex<HashMap<String, Vec<TxnCommits>>>,
    marks: Mutex<HashMap<MarkKey, Mark>>,
    groups: Mutex<HashMap<usize, HashSet<String>>>,
    checkpoints: tokio::sync::Mutex<CheckpointCache>,
}

/// How a translation was made (metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Runs,
    Checkpoint,
    Timestamp,
}

impl Method {
    pub fn label(self) -> &'static str {
        match self {
            Method::Runs => "runs",
            Method::Checkpoint => "checkpoint",
            Method::Timestamp => "timestamp",
        }
    }
}

/// A translated offset: where, how, and how many already-consumed records
/// it may deliver again.
#[derive(Debug, Clone, Copy)]
pub struct Translated {
    pub offset: i64,
    pub method: Method,
    pub redelivered: i64,
    /// Runs only: false when the offset lies past what the tee has copied so
    /// far (translated conservatively; worth translating again later).
    pub exact: bool,
}

impl Shadow {
    /// A commit succeeded on site `from` for a group of failover route `route`.
    pub fn observe(&self, route: usize, group: &str, from: usize, commits: Commits) {
        if commits.is_empty() {
            return;
        }
        self.remember_group(route, group);
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        if p.len() >= MAX_GROUPS && !p.contains_key(&(route, group.to_string())) {
            return; // the next commit of this group gets its turn
        }
        let e = p
            .entry((route, group.to_string()))
            .or_insert_with(|| PendingGroup {
                from,
                offsets: Commits::new(),
            });
        if e.from != from {
            e.from = from;
            e.offsets.clear();
        }
        e.offsets.extend(commits);
    }

    /// Offsets a transaction committed for `group` on `site`, held until the
    /// transaction ends ([`Shadow::txn_ended`]). Bounded: past
    /// [`MAX_GROUPS`] open transactions, a new one's offsets are not held
    /// (its group's next commit, or the switch's final read, covers it).
    pub fn txn_offsets(&self, txn: &str, group: &str, site: usize, commits: Commits) {
        if commits.is_empty() {
            return;
        }
        let Ok(mut m) = self.in_txn.lock() else {
            return;
        };
        if m.len() >= MAX_GROUPS && !m.contains_key(txn) {
            return;
        }
        let held = m.entry(txn.to_string()).or_default();
        match held.iter_mut().find(|(g, s, _)| g == group && *s == site) {
            Some((_, _, c)) => c.extend(commits),
            None => held.push((group.to_string(), site, commits)),
        }
    }

    /// The transaction ended: its offsets, if it committed (empty if it
    /// aborted, and forgotten either way).
    pub fn txn_ended(&self, txn: &str, committed: bool) -> Vec<TxnCommits> {
        let taken = self
            .in_txn
            .lock()
            .ok()
            .and_then(|mut m| m.remove(txn))
            .unwrap_or_default();
        if committed {
            taken
        } else {
            Vec::new()
        }
    }

    pub fn remember_group(&self, route: usize, group: &str) {
        if let Ok(mut g) = self.groups.lock() {
            let set = g.entry(route).or_default();
            if set.len() < MAX_GROUPS {
                set.insert(group.to_string());
            }
        }
    }

    /// Groups seen on a route (committing or joining through Switchyard).
    pub fn known_groups(&self, route: usize) -> Vec<String> {
        self.groups
            .lock()
            .map(|g| {
                g.get(&route)
                    .map(|s| s.iter().cloned().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }

    /// Takes the pending commits of a route (all routes: `None`).
    pub(super) fn take_pending(
        &self,
        route: Option<usize>,
    ) -> Vec<(usize, String, usize, Commits)> {
        let Ok(mut p) = self.pending.lock() else {
            return Vec::new();
        };
        let keys: Vec<(usize, String)> = p
            .keys()
            .filter(|(r, _)| route.is_none_or(|x| x == *r))
            .cloned()
            .collect();
        keys.into_iter()
            .filter_map(|k| {
                let v = p.remove(&k)?;
                Some((k.0, k.1, v.from, v.offsets))
            })
            .collect()
    }

    /// Puts back commits that could not be translated or committed yet,
    /// unless newer ones arrived meanwhile.
    pub(super) fn put_back(&self, route: usize, group: &str, from: usize, offsets: Commits) {
        let Ok(mut p) = self.pending.lock() else {
            return;
        };
        let e = p
            .entry((route, group.to_string()))
            .or_insert_with(|| PendingGroup {
                from,
                offsets: Commits::new(),
            });
        if e.from != from {
            return;
        }
        for (k, v) in offsets {
            e.offsets.entry(k).or_insert(v);
        }
    }

    fn mark(&self, key: &MarkKey) -> Option<Mark> {
        self.marks.lock().ok()?.get(key).copied()
    }

    fn set_mark(&self, key: MarkKey, m: Mark) {
        if let Ok(mut marks) = self.marks.lock() {
            if marks.len() >= MAX_MARKS {
                marks.clear();
            }
            marks.insert(key, m);
        }
    }

    /// Whether Switchyard committed anything for this partition on `to`.
    pub fn has_mark(
        &self,
        route: usize,
        group: &str,
        to: usize,
        virt: &str,
        partition: i32,
    ) -> bool {
        self.mark(&(route, group.to_string(), to, virt.to_string(), partition))
            .is_some()
    }

    /// The MM2 checkpoints of `from` on `to`, cached for a few seconds.
    pub(super) async fn checkpoints(
        &self,
        route: usize,
        to: usize,
        client: &mut SiteClient,
        alias: &str,
        fresh: bool,
    ) -> Option<Arc<CheckpointStore>> {
        let mut cache = self.checkpoints.lock().await;
        if let Some((at, store)) = cache.get(&(route, to)) {
            if !fresh && at.elapsed() < CHECKPOINT_REFRESH {
                return Some(store.clone());
            }
        }
        let topic = mm2::checkpoints_topic(alias);
        match mm2::read_checkpoints(client, &topic, Instant::now() + STEP_TIMEOUT).await {
            Ok(store) => {
                let store = Arc::new(store);
                cache.insert((route, to), (Instant::now(), store.clone()));
                Some(store)
            }
            Err(e) => {
                tracing::debug!(topic, error = %e, "MM2 checkpoints unavailable");
                // Remember the failure for the refresh period too, so a
                // missing topic is not re-read on every commit.
                let empty = Arc::new(CheckpointStore::default());
                cache.insert((route, to), (Instant::now(), empty.clone()));
                Some(empty)
            }
        }
    }

    /// Records the outcome of a shadow commit for later monotonicity checks.
    pub(super) fn committed(&self, key: MarkKey, from_offset: i64, to_offset: i64) {
        self.set_mark(
            key,
            Mark {
                from_offset,
                to_offset,
            },
        );
    }

    /// Keeps shadow commits from moving backwards while the group moved
    /// forward (a thinned run, a coarser method this time): the earlier,
    /// larger translation stays. A group that rewound may go back.
    pub(super) fn monotone(&self, key: &MarkKey, from_offset: i64, to_offset: i64) -> Option<i64> {
        match self.mark(key) {
            // Same commit: only a better (later, still safe) translation is news.
            Some(m) if m.from_offset == from_offset && to_offset <= m.to_offset => None,
            Some(m) if from_offset > m.from_offset && to_offset < m.to_offset => Some(m.to_offset),
            _ => Some(to_offset),
        }
    }
}

/// Timestamp translation of `offset` (next to read) on `from` to `to`.
pub(super) async fn by_timestamp(
    from: &mut SiteClient,
    to: &mut SiteClient,
    from_topic: &str,
    to_topic: &str,
    partition: i32,
    offset: i64,
    slack_ms: i64,
) -> Result<Option<Translated>, String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    if offset <= 0 {
        // Nothing consumed yet: the target's first record.
        let start = to.list_offset(to_topic, partition, -2).await?;
        return Ok(Some(Translated {
            offset: start.max(0),
            method: Method::Timestamp,
            redelivered: 0,
            exact: true,
        }));
    }
    let Some(ts) =
        timestamp::timestamp_at(from, from_topic, partition, offset - 1, deadline).await?
    else {
        return Ok(None);
    };
    let at = timestamp::offset_for_timestamp(
        to,
        to_topic,
        partition,
        ts.saturating_sub(slack_ms),
        deadline,
    )
    .await?;
    let after =
        timestamp::offset_for_timestamp(to, to_topic, partition, ts.saturating_add(1), deadline)
            .await
            .unwrap_or(at);
    Ok(Some(Translated {
        offset: at,
        method: Method::Timestamp,
        redelivered: (after - at).max(0),
        exact: true,
    }))
}

/// One SiteClient per site, lent out in pairs.
pub(super) struct Clients(Vec<SiteClient>);

impl Clients {
    pub fn new(sites: &[Arc<Site>]) -> Self {
        Clients(sites.iter().map(|s| SiteClient::new(s.clone())).collect())
    }

    pub fn one(&mut self, i: usize) -> Option<&mut SiteClient> {
        self.0.get_mut(i)
    }

    pub fn pair(&mut self, a: usize, b: usize) -> Option<(&mut SiteClient, &mut SiteClient)> {
        if a == b || a >= self.0.len() || b >= self.0.len() {
            return None;
        }
        if a < b {
            let (lo, hi) = self.0.split_at_mut(b);
            Some((&mut lo[a], &mut hi[0]))
        } else {
            let (lo, hi) = self.0.split_at_mut(a);
            Some((&mut hi[0], &mut lo[b]))
        }
    }
}

/// Builds the commit list for `to`.
pub(super) fn offsets_for(
    to_topic: &str,
    partition: i32,
    offset: i64,
    metadata: Option<String>,
) -> GroupOffset {
    GroupOffset {
        topic: to_topic.to_string(),
        partition,
        offset,
        metadata,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commits(offset: i64) -> Commits {
        [(("orders".to_string(), 0), (offset, None))]
            .into_iter()
            .collect()
    }

    #[test]
    fn a_transactions_offsets_count_only_once_it_commits() {
        let s = Shadow::default();
        s.txn_offsets("tx", "g", 0, commits(10));
        s.txn_offsets("tx", "g", 0, commits(12));
        assert!(s.txn_ended("tx", false).is_empty(), "aborted: nothing");
        assert!(s.txn_ended("tx", true).is_empty(), "and forgotten");
        s.txn_offsets("tx", "g", 0, commits(20));
        let held = s.txn_ended("tx", true);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].2.get(&("orders".to_string(), 0)), Some(&(20, None)));
    }
}
