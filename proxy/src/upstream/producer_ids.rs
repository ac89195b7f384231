//! Idempotent producer ids across sites.
//!
//! Producer ids are allocated per cluster, and a batch carries only
//! `(producer id, epoch, sequence)`. A client's batches may go to any site
//! (routes) and, after a failover, to a site that never issued its id. Sent
//! raw, an id is unknown there (Tansu refuses it) or, worse, equal to an id
//! that site gave someone else (the tee's own producer, another client), and
//! the broker would mix both into one deduplication state.
//!
//! So Switchyard issues the ids clients see (non-transactional InitProducerId
//! is answered here, never forwarded) and gives every (client id, site) pair
//! its own id from that site, allocated on first use and written into the
//! batches on the way (`api::produce`, CRC recomputed). Sequences are
//! renumbered per partition: the first batch a site sees for a partition
//! under its id starts at sequence 0 there (Kafka accepts any first sequence
//! from a producer id it has no state for, Tansu only 0), later ones follow
//! in arrival order by record count, and a client's retry gets the numbers
//! its first attempt got, so the site's duplicate and gap checks work as on
//! the client's own numbering — also when a produce plugin dropped records
//! or moved them to another partition. When a route switches sites the mappings
//! of both sites are dropped, so the next batch gets a fresh id there
//! instead of one whose last sequence the site remembers from before the
//! switch (it would answer OUT_OF_ORDER_SEQUENCE).
//!
//! Transactional producers keep their coordinator's ids (their batches are
//! only valid inside that cluster's transaction) and are not mapped.
//!
//! # One broker at a time per partition
//!
//! A Kafka client sends a partition's batches to one leader at a time: when
//! one fails it stops, waits for the rest in flight to that broker, and
//! retries them in order with their sequences, so a broker that took a batch
//! but answered NOT_LEADER_OR_FOLLOWER (the old leader in a leader change,
//! once the batch had reached the new one) gets it deduplicated by the new
//! leader. Switchyard routes each batch by its own view, which may learn of
//! the new leader before the client: a later batch would then reach the new
//! leader while earlier ones are still failing on the old one, the new leader
//! answers OUT_OF_ORDER_SEQUENCE, and the client (librdkafka: "skipped
//! sequence numbers") bumps its epoch and sends the earlier ones again under
//! it — written twice when one of them had in fact reached the new leader.
//! So [`SiteProducer::admit`] keeps the client's rule on its behalf: while a
//! partition's batches are in flight to one broker none goes to another,
//! and after one failed (retriable, or lost with its broker) none after it
//! goes anywhere until the client retries from it; those are answered
//! NOT_LEADER_OR_FOLLOWER unsent, as the old leader would have answered them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::{Site, UpstreamError};

/// A producer id and epoch.
pub type Pid = (i64, i16);

/// A client producer's identity on one site.
pub struct SiteProducer {
    pub pid: i64,
    pub epoch: i16,
    /// Per (physical topic, partition) on the site: the sequence numbering.
    parts: Mutex<HashMap<(String, i32), SiteSequence>>,
}

/// Batches a client may have in flight per partition (Kafka allows 5);
/// a retry is recognised among this many recent batches.
const RECENT_BATCHES: usize = 16;

/// The site's sequence numbers of one partition: handed out in the order
/// batches arrive, `count` records each, so the site sees 0, 1, 2, ... with
/// no gap even when a plugin dropped records of a batch or moved them to
/// another partition (the client's own numbering would then have gaps, or
/// be another partition's). A retry of a batch, known by its client-side
/// origin, gets the same numbers again.
#[derive(Default)]
struct SiteSequence {
    next: i32,
    /// `(client topic, client partition, client base sequence)` → site base sequence.
    recent: std::collections::VecDeque<((String, i32, i32), i32)>,
    flight: Flight,
}

/// How long a failed batch holds back the ones after it when the client
/// never retries it. Clients retry within their request timeout, or give
/// the batch up and bump their epoch (a new mapping, a fresh state); the
/// limit only bounds a client that does neither.
const HOLD_LIMIT: Duration = Duration::from_secs(60);

/// Where one partition's batches are in flight, and the earliest that
/// failed and was not retried yet (module doc: one broker at a time).
#[derive(Default, Debug)]
struct Flight {
    broker: i32,
    in_flight: u32,
    failed: Option<(i32, Instant)>,
}

/// Whether a batch went through (written, or found a duplicate of one that
/// was) or failed in a way the client retries with the same sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Written,
    /// A retriable error, or no answer (the broker failed; the client is
    /// answered NOT_LEADER_OR_FOLLOWER, possibly written).
    Retried,
    /// Anything else: the client gives the batch up (and, for a sequence
    /// error, bumps its epoch); the order state is left as it is.
    Other,
}

/// Why a batch was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Earlier batches of the partition are in flight to another broker.
    OtherBroker { in_flight_to: i32 },
    /// An earlier batch failed and the client has not retried it yet.
    AfterFailed { failed: i32 },
}

/// `a` comes after `b` in a sequence space that wraps at i32::MAX to 0
/// (within half the space: batches in flight are never further apart).
fn later(a: i32, b: i32) -> bool {
    let d = (i64::from(a) - i64::from(b)).rem_euclid(1 << 31);
    d > 0 && d < (1 << 30)
}

impl Flight {
    fn fail(&mut self, seq: i32, now: Instant) {
        match self.failed {
            Some((f, _)) if !later(f, seq) => {}
            _ => self.failed = Some((seq, now)),
        }
    }

    fn admit(&mut self, seq: i32, broker: i32, now: Instant) -> Result<(), Refused> {
        if let Some((f, since)) = self.failed {
            if later(seq, f) && now.duration_since(since) < HOLD_LIMIT {
                return Err(Refused::AfterFailed { failed: f });
            }
            // The client retries from the failed batch (or an earlier one).
            self.failed = None;
        }
        if self.in_flight > 0 && self.broker != broker {
            self.fail(seq, now);
            return Err(Refused::OtherBroker {
                in_flight_to: self.broker,
            });
        }
        self.broker = broker;
        self.in_flight += 1;
        Ok(())
    }

    fn settle(&mut self, seq: i32, how: Settled, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if how == Settled::Retried {
            self.fail(seq, now);
        }
    }
}

impl SiteProducer {
    /// The site's base sequence for a client batch of `count` records bound
    /// for `(topic, partition)` on this site; `client` names the batch as
    /// the client sent it (its topic, partition and base sequence).
    pub fn sequence(
        &self,
        topic: &str,
        partition: i32,
        client: (&str, i32, i32),
        count: i32,
    ) -> i32 {
        let Ok(mut parts) = self.parts.lock() else {
            return client.2;
        };
        let seq = parts.entry((topic.to_string(), partition)).or_default();
        if let Some((_, s)) = seq
            .recent
            .iter()
            .find(|((t, p, c), _)| t == client.0 && *p == client.1 && *c == client.2)
        {
            return *s;
        }
        let base = seq.next;
        // Sequences wrap at i32::MAX to 0.
        seq.next = if count > i32::MAX - base {
            count - (i32::MAX - base) - 1
        } else {
            base + count
        };
        if seq.recent.len() >= RECENT_BATCHES {
            seq.recent.pop_front();
        }
        seq.recent
            .push_back(((client.0.to_string(), client.1, client.2), base));
        base
    }

    /// May the batch with site sequence `seq` of `(topic, partition)` go to
    /// `broker` now? If so it counts as in flight there until
    /// [`settle`](Self::settle)d (module doc: one broker at a time).
    pub fn admit(&self, topic: &str, partition: i32, seq: i32, broker: i32) -> Result<(), Refused> {
        let Ok(mut parts) = self.parts.lock() else {
            return Ok(());
        };
        parts
            .entry((topic.to_string(), partition))
            .or_default()
            .flight
            .admit(seq, broker, Instant::now())
    }

    /// An admitted batch was answered (or lost): `how`.
    pub fn settle(&self, topic: &str, partition: i32, seq: i32, how: Settled) {
        if let Ok(mut parts) = self.parts.lock() {
            if let Some(s) = parts.get_mut(&(topic.to_string(), partition)) {
                s.flight.settle(seq, how, Instant::now());
            }
        }
    }

    /// A batch answered without being sent (no leader known): the ones
    /// after it must wait for its retry as after a failed one.
    pub fn unsent(&self, topic: &str, partition: i32, seq: i32) {
        if let Ok(mut parts) = self.parts.lock() {
            parts
                .entry((topic.to_string(), partition))
                .or_default()
                .flight
                .fail(seq, Instant::now());
        }
    }
}

/// At most this many mappings are kept; producers come and go, and a
/// forgotten mapping only costs a fresh id on the site.
const MAX_MAPPINGS: usize = 100_000;

/// (site index, client producer id, client epoch).
pub type MappingKey = (usize, i64, i16);

pub struct ProducerIds {
    /// A cell per (site, client pid, epoch), filled by the first request
    /// that needs it: requests for the same mapping wait for that one
    /// allocation (two connections of one producer must get the same id, not
    /// two); requests for other mappings, on this site or another, never
    /// wait for it (a slow site stalls only its own allocations).
    map: Mutex<HashMap<MappingKey, Arc<OnceCell<Arc<SiteProducer>>>>>,
    next: AtomicI64,
}

impl Default for ProducerIds {
    fn default() -> Self {
        Self::new()
    }
}

impl ProducerIds {
    pub fn new() -> Self {
        // A random high part per process, so ids issued by two instances (or
        // before and after a restart) do not collide: 30 random bits above a
        // 32-bit counter, always positive.
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS: a random u64 without a new dependency.
        let r = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        let base = ((r & 0x3fff_ffff) as i64 + 1) << 32;
        ProducerIds {
            map: Mutex::new(HashMap::new()),
            next: AtomicI64::new(base),
        }
    }

    /// Answers a non-transactional InitProducerId: a new id, or (KIP-360) the
    /// client's id with its epoch bumped.
    pub fn issue(&self, current: Pid) -> Pid {
        let (pid, epoch) = current;
        if pid >= 0 && (0..i16::MAX - 1).contains(&epoch) {
            return (pid, epoch + 1);
        }
        (self.next.fetch_add(1, Ordering::Relaxed), 0)
    }

    /// How `site` knows the client's `(pid, epoch)`.
    pub async fn on_site(
        &self,
        site: &Site,
        si: usize,
        pid: i64,
        epoch: i16,
    ) -> Result<Arc<SiteProducer>, UpstreamError> {
        self.mapped((si, pid, epoch), || async {
            let (new_pid, new_epoch) = site.init_producer_id().await?;
            tracing::debug!(site = %site.name, client_pid = pid, client_epoch = epoch, site_pid = new_pid,
                site_epoch = new_epoch, "producer id allocated on site");
            Ok((new_pid, new_epoch))
        })
        .await
    }

    /// The mapping for `key` (site index, client pid, client epoch),
    /// allocated with `allocate` by the first caller (a failed allocation
    /// leaves it to the next caller to try again). `on_site` allocates on
    /// the site; tests allocate without one.
    pub async fn mapped<F, Fut>(
        &self,
        key: MappingKey,
        allocate: F,
    ) -> Result<Arc<SiteProducer>, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Pid, UpstreamError>>,
    {
        let cell = {
            let Ok(mut m) = self.map.lock() else {
                return Err(UpstreamError::NoBroker(format!(
                    "site {} (producer id map unavailable)",
                    key.0
                )));
            };
            if m.len() >= MAX_MAPPINGS && !m.contains_key(&key) {
                m.clear();
            }
            m.entry(key).or_default().clone()
        };
        let sp = cell
            .get_or_try_init(|| async {
                let (pid, epoch) = allocate().await?;
                Ok::<_, UpstreamError>(Arc::new(SiteProducer {
                    pid,
                    epoch,
                    parts: Mutex::new(HashMap::new()),
                }))
            })
            .await?;
        Ok(sp.clone())
    }

    /// The client's id and epoch behind a producer id the site issued to
    /// Switchyard for it (what DescribeProducers on the site shows), if
    /// Switchyard mapped one.
    pub fn client_of(&self, site: usize, pid: i64) -> Option<Pid> {
        let m = self.map.lock().ok()?;
        m.iter()
            .find(|((si, _, _), cell)| *si == site && cell.get().is_some_and(|sp| sp.pid == pid))
            .map(|((_, client, epoch), _)| (*client, *epoch))
    }

    /// Drops every mapping to these sites (a route switched between them).
    pub fn forget_sites(&self, sites: &[usize]) {
        if let Ok(mut m) = self.map.lock() {
            m.retain(|(si, _, _), _| !sites.contains(si));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_ids_are_positive_and_distinct_and_epochs_bump() {
        let ids = ProducerIds::new();
        let a = ids.issue((-1, -1));
        let b = ids.issue((-1, -1));
        assert!(a.0 > 0 && b.0 > 0 && a.0 != b.0);
        assert_eq!((a.1, b.1), (0, 0));
        assert_eq!(ids.issue(a), (a.0, 1));
        let exhausted = ids.issue((a.0, i16::MAX - 1));
        assert_ne!(exhausted.0, a.0, "an exhausted epoch gets a new id");
        assert_eq!(exhausted.1, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_site_stalls_only_its_own_allocations() {
        let ids = Arc::new(ProducerIds::new());
        let calls = Arc::new(AtomicI64::new(0));
        // Site 0 takes a minute to answer; two connections of one producer
        // ask it at once.
        let slow = |ids: Arc<ProducerIds>, calls: Arc<AtomicI64>| async move {
            ids.mapped((0, 7, 0), || async move {
                calls.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_secs(60)).await;
                Ok((100, 0))
            })
            .await
        };
        let a = tokio::spawn(slow(ids.clone(), calls.clone()));
        let b = tokio::spawn(slow(ids.clone(), calls.clone()));
        tokio::task::yield_now().await;
        // Meanwhile another site (and another producer on it) is served at once.
        let start = tokio::time::Instant::now();
        let other = ids.mapped((1, 8, 0), || async { Ok((200, 0)) }).await;
        assert_eq!(other.map(|p| p.pid).ok(), Some(200));
        assert_eq!(
            start.elapsed(),
            std::time::Duration::ZERO,
            "waited for the slow site"
        );
        let (a, b) = (a.await.expect("join"), b.await.expect("join"));
        assert_eq!(
            (a.map(|p| p.pid).ok(), b.map(|p| p.pid).ok()),
            (Some(100), Some(100))
        );
        assert_eq!(
            calls.load(Ordering::Relaxed),
            1,
            "one allocation for both connections"
        );
    }

    #[tokio::test]
    async fn a_failed_allocation_is_retried_by_the_next_request() {
        let ids = ProducerIds::new();
        let failed = ids
            .mapped((0, 7, 0), || async {
                Err(UpstreamError::Timeout("site".into()))
            })
            .await;
        assert!(failed.is_err());
        let ok = ids.mapped((0, 7, 0), || async { Ok((5, 0)) }).await;
        assert_eq!(ok.map(|p| p.pid).ok(), Some(5));
    }

    /// The librdkafka sequence of a leader change: batches 10..13 in flight
    /// to the old leader (1), Switchyard's view moves to the new one (2)
    /// before they are answered.
    #[test]
    fn a_partition_stays_on_one_broker_until_its_batches_are_answered() {
        let now = Instant::now();
        let mut f = Flight::default();
        for seq in 10..14 {
            assert_eq!(f.admit(seq, 1, now), Ok(()));
        }
        // 14 is for the new leader while 10..13 are in flight to the old.
        assert_eq!(
            f.admit(14, 2, now),
            Err(Refused::OtherBroker { in_flight_to: 1 })
        );
        // The old leader answers NOT_LEADER_OR_FOLLOWER for all four (10 may
        // have reached the new leader all the same).
        for seq in 10..14 {
            f.settle(seq, Settled::Retried, now);
        }
        // A batch the client pipelined before it saw those answers.
        assert_eq!(
            f.admit(15, 2, now),
            Err(Refused::AfterFailed { failed: 10 })
        );
        // The client's retry from the first failed batch goes, and the rest
        // after it, in order, to the new leader.
        for seq in 10..16 {
            assert_eq!(f.admit(seq, 2, now), Ok(()), "seq {seq}");
        }
        for seq in 10..16 {
            f.settle(seq, Settled::Written, now);
        }
        assert_eq!(f.in_flight, 0);
        assert_eq!(f.admit(16, 1, now), Ok(()), "nothing in flight: any broker");
    }

    #[test]
    fn a_batch_given_up_holds_the_partition_only_for_a_while() {
        let now = Instant::now();
        let mut f = Flight::default();
        assert_eq!(f.admit(5, 1, now), Ok(()));
        f.settle(5, Settled::Retried, now);
        assert!(f.admit(6, 1, now).is_err());
        assert_eq!(f.admit(6, 1, now + HOLD_LIMIT), Ok(()));
        // Written answers and errors the client does not retry hold nothing.
        f.settle(6, Settled::Other, now);
        assert_eq!(f.admit(7, 2, now), Ok(()));
        f.settle(7, Settled::Written, now);
        assert_eq!(f.admit(8, 1, now), Ok(()));
    }

    #[test]
    fn order_survives_the_sequence_wrap() {
        assert!(later(0, i32::MAX));
        assert!(later(5, 3));
        assert!(!later(3, 5));
        assert!(!later(i32::MAX, 0));
        assert!(!later(4, 4));
        let now = Instant::now();
        let mut f = Flight::default();
        f.fail(i32::MAX, now);
        f.fail(0, now);
        assert_eq!(f.failed.map(|x| x.0), Some(i32::MAX), "the earliest stays");
        assert!(f.admit(1, 1, now).is_err());
        assert_eq!(f.admit(i32::MAX, 1, now), Ok(()));
    }

    #[test]
    fn sequences_count_from_zero_per_partition_and_retries_keep_theirs() {
        let sp = SiteProducer {
            pid: 1,
            epoch: 0,
            parts: Mutex::new(HashMap::new()),
        };
        assert_eq!(sp.sequence("t", 0, ("t", 0, 37), 5), 0);
        assert_eq!(sp.sequence("t", 0, ("t", 0, 42), 3), 5);
        assert_eq!(
            sp.sequence("t", 0, ("t", 0, 37), 5),
            0,
            "a retry keeps its sequence"
        );
        assert_eq!(sp.sequence("t", 0, ("t", 0, 45), 1), 8);
        assert_eq!(sp.sequence("t", 1, ("t", 1, 9), 2), 0);
        // Records a plugin moved from u-0 to t-0 continue t-0's numbering.
        assert_eq!(sp.sequence("t", 0, ("u", 0, 0), 2), 9);
        assert_eq!(sp.sequence("t", 0, ("u", 0, 0), 2), 9);
        // Across the wrap: i32::MAX is followed by 0.
        let w = SiteProducer {
            pid: 2,
            epoch: 0,
            parts: Mutex::new(HashMap::new()),
        };
        w.parts
            .lock()
            .unwrap()
            .entry(("w".into(), 0))
            .or_default()
            .next = i32::MAX - 1;
        assert_eq!(w.sequence("w", 0, ("w", 0, 5), 3), i32::MAX - 1);
        assert_eq!(w.sequence("w", 0, ("w", 0, 8), 1), 1);
    }
}
