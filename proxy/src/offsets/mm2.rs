//! MirrorMaker 2 checkpoints: consumer-group offsets that MM2 has already
//! translated into a target cluster's offset space (reference §1.1, §3.2(b)).
//!
//! When MM2 replicates from a cluster aliased `A`, its checkpoint connector
//! writes, on the *target* cluster, a single-partition compacted topic
//! [`checkpoints_topic`]`("A")` = `A.checkpoints.internal`. Each record says:
//! group `g`, at `(topic, partition)`, had committed `upstream_offset` on `A`,
//! which corresponds to `downstream_offset` on the target. Reading that topic
//! from the beginning and keeping the newest record per key is exactly what
//! MM2's own `MirrorClient.remoteConsumerOffsets` does; [`read_checkpoints`]
//! does the same over the proxy's own connection, so failover can move a
//! group to the target without MM2's client library.
//!
//! The topic in a checkpoint's key is the *target* topic name, already
//! renamed by MM2's replication policy: `A.orders` with the default policy,
//! `orders` with the identity policy. Callers map names themselves.
//!
//! # Record format
//!
//! Kafka's legacy `Struct` serialization, integers big-endian, `STRING` an
//! `int16` length followed by that many UTF-8 bytes (a negative length is
//! invalid: these fields are not nullable):
//!
//! ```text
//! key:   group STRING, topic STRING, partition INT32
//! value: version INT16 (= 0), upstreamOffset INT64, offset INT64, metadata STRING
//! ```
//!
//! Bytes after the last field are ignored, as MM2's own reader ignores them.
//! Everything here comes from the network: decoding checks every length
//! against the bytes present and never panics.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::batch::{batches, decode as decode_batch, BatchRef};
use crate::upstream::client::SiteClient;

/// The only checkpoint value version MM2 writes (and that this code reads).
pub const CHECKPOINT_VERSION: i16 = 0;

// Kafka error codes the reader tells apart.
use crate::codec::errors::{
    LEADER_NOT_AVAILABLE, NETWORK_EXCEPTION, NOT_LEADER_OR_FOLLOWER, OFFSET_OUT_OF_RANGE,
    REQUEST_TIMED_OUT, UNKNOWN_TOPIC_OR_PARTITION,
};

/// First fetch size; grown when one batch does not fit (Kafka always returns
/// a whole first batch, other brokers may cut it off).
const FETCH_BYTES: i32 = 1 << 20;
const MAX_FETCH_BYTES: i32 = 1 << 28;
/// The broker has the data (we read below the high watermark), so waiting
/// longer only matters when a transaction holds back the stable offset.
const FETCH_WAIT_MS: i32 = 50;
/// Consecutive answers without progress after which the read gives up
/// instead of spinning until the deadline.
const MAX_IDLE_ANSWERS: u32 = 5;

/// Name of the checkpoints topic MM2 writes on the target cluster for
/// groups replicated from the cluster aliased `source_alias`.
pub fn checkpoints_topic(source_alias: &str) -> String {
    format!("{source_alias}.checkpoints.internal")
}

/// One MM2 checkpoint: where group `group` stands on `(topic, partition)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub group: String,
    /// The target (renamed) topic name.
    pub topic: String,
    pub partition: i32,
    /// The group's committed offset on the source cluster.
    pub upstream_offset: i64,
    /// The same position translated to the target cluster: where the group
    /// resumes there.
    pub downstream_offset: i64,
    /// The commit metadata the group stored with its offset.
    pub metadata: String,
}

/// A bounds-checked reader over one field sequence.
struct Fields<'a> {
    rest: &'a [u8],
    /// Which record part is being read, for error messages.
    part: &'static str,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8], part: &'static str) -> Self {
        Fields { rest: bytes, part }
    }

    fn take<const N: usize>(&mut self, field: &str) -> Result<[u8; N], String> {
        let Some((head, tail)) = self.rest.split_first_chunk::<N>() else {
            return Err(format!(
                "checkpoint {}: truncated at field `{field}` ({} of {N} bytes)",
                self.part,
                self.rest.len()
            ));
        };
        self.rest = tail;
        Ok(*head)
    }

    fn i16(&mut self, field: &str) -> Result<i16, String> {
        self.take::<2>(field).map(i16::from_be_bytes)
    }

    fn i32(&mut self, field: &str) -> Result<i32, String> {
        self.take::<4>(field).map(i32::from_be_bytes)
    }

    fn i64(&mut self, field: &str) -> Result<i64, String> {
        self.take::<8>(field).map(i64::from_be_bytes)
    }

    fn string(&mut self, field: &str) -> Result<String, String> {
        let len = self.i16(field)?;
        let len = usize::try_from(len).map_err(|_| {
            format!(
                "checkpoint {}: field `{field}` has negative length {len}",
                self.part
            )
        })?;
        let Some((text, tail)) = self.rest.split_at_checked(len) else {
            return Err(format!(
                "checkpoint {}: truncated in field `{field}` ({} of {len} bytes)",
                self.part,
                self.rest.len()
            ));
        };
        let text = std::str::from_utf8(text).map_err(|e| {
            format!(
                "checkpoint {}: field `{field}` is not UTF-8: {e}",
                self.part
            )
        })?;
        self.rest = tail;
        Ok(text.to_string())
    }
}

/// Decodes a checkpoint key into `(group, topic, partition)`.
///
/// Separate from [`decode`] because a tombstone (null value) still names the
/// key it deletes.
pub fn decode_key(key: &[u8]) -> Result<(String, String, i32), String> {
    let mut k = Fields::new(key, "key");
    let group = k.string("group")?;
    let topic = k.string("topic")?;
    let partition = k.i32("partition")?;
    Ok((group, topic, partition))
}

/// Decodes one record of a checkpoints topic. A null value is a tombstone
/// and decodes to `Ok(None)`; anything malformed (truncated, a negative
/// length, bad UTF-8, a version other than [`CHECKPOINT_VERSION`]) is an
/// error saying which field is wrong.
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Option<Checkpoint>, String> {
    let (group, topic, partition) = decode_key(key)?;
    let Some(value) = value else {
        return Ok(None);
    };
    let mut v = Fields::new(value, "value");
    let version = v.i16("version")?;
    if version != CHECKPOINT_VERSION {
        return Err(format!(
            "checkpoint value: unsupported version {version} (only {CHECKPOINT_VERSION} is known)"
        ));
    }
    let upstream_offset = v.i64("upstreamOffset")?;
    let downstream_offset = v.i64("offset")?;
    let metadata = v.string("metadata")?;
    Ok(Some(Checkpoint {
        group,
        topic,
        partition,
        upstream_offset,
        downstream_offset,
        metadata,
    }))
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    // STRING cannot express more than i16::MAX bytes; MM2 could not have
    // written a longer one either, so cut at a character boundary.
    let mut len = s.len().min(i16::MAX as usize);
    while !s.is_char_boundary(len) {
        len -= 1;
    }
    out.extend_from_slice(&(len as i16).to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..len]);
}

/// Encodes a checkpoint as MM2 writes it: `(key, value)`. Used by tests and
/// as executable documentation of the format. Strings longer than
/// `i16::MAX` bytes cannot be represented and are truncated.
pub fn encode(c: &Checkpoint) -> (Vec<u8>, Vec<u8>) {
    let mut key = Vec::with_capacity(8 + c.group.len() + c.topic.len());
    put_string(&mut key, &c.group);
    put_string(&mut key, &c.topic);
    key.extend_from_slice(&c.partition.to_be_bytes());
    let mut value = Vec::with_capacity(20 + c.metadata.len());
    value.extend_from_slice(&CHECKPOINT_VERSION.to_be_bytes());
    value.extend_from_slice(&c.upstream_offset.to_be_bytes());
    value.extend_from_slice(&c.downstream_offset.to_be_bytes());
    put_string(&mut value, &c.metadata);
    (key, value)
}

/// The newest checkpoint per `(group, topic, partition)`, as a compacted
/// topic would hold after compaction.
#[derive(Debug, Default, Clone)]
pub struct CheckpointStore {
    /// group → topic → partition → checkpoint; nested so lookups by `&str`
    /// need no allocation.
    by_group: HashMap<String, HashMap<String, HashMap<i32, Checkpoint>>>,
    len: usize,
    skipped: usize,
}

impl CheckpointStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// The newest checkpoint of `group` on target topic `topic`, partition
    /// `partition`.
    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<&Checkpoint> {
        self.by_group.get(group)?.get(topic)?.get(&partition)
    }

    /// Number of checkpoints held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records that could not be decoded and were left out.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// Every checkpoint held, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Checkpoint> {
        self.by_group
            .values()
            .flat_map(|topics| topics.values())
            .flat_map(|parts| parts.values())
    }

    /// Applies one record of the topic, in log order: a checkpoint replaces
    /// the one under the same key, a tombstone removes it, and a record that
    /// does not decode is counted in [`skipped`](Self::skipped) and
    /// otherwise ignored, so one bad record does not hide every group's
    /// checkpoints.
    pub fn apply(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) {
        let key = key.unwrap_or_default();
        match decode(key, value) {
            Ok(Some(c)) => self.insert(c),
            Ok(None) => match decode_key(key) {
                Ok((group, topic, partition)) => self.remove(&group, &topic, partition),
                Err(_) => self.skipped += 1,
            },
            Err(_) => self.skipped += 1,
        }
    }

    fn insert(&mut self, c: Checkpoint) {
        let old = self
            .by_group
            .entry(c.group.clone())
            .or_default()
            .entry(c.topic.clone())
            .or_default()
            .insert(c.partition, c);
        if old.is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, group: &str, topic: &str, partition: i32) {
        let Some(topics) = self.by_group.get_mut(group) else {
            return;
        };
        let Some(parts) = topics.get_mut(topic) else {
            return;
        };
        if parts.remove(&partition).is_some() {
            self.len -= 1;
        }
        if parts.is_empty() {
            topics.remove(topic);
        }
        if topics.is_empty() {
            self.by_group.remove(group);
        }
    }
}

/// Drops records of aborted transactions from one Fetch answer, as a
/// read-committed consumer does: a read-committed Fetch still returns
/// aborted data and lists the aborted transactions beside it. MM2 writes
/// checkpoints transactionally when Connect runs with exactly-once source
/// support.
struct AbortedFilter {
    /// `(producer id, first offset)`, earliest first.
    pending: Vec<(i64, i64)>,
    /// Producers whose aborted transaction has begun and whose abort marker
    /// has not been seen yet.
    active: HashSet<i64>,
}

impl AbortedFilter {
    fn new(mut aborted: Vec<(i64, i64)>) -> Self {
        // Latest first, so the next to begin is popped from the end.
        aborted.sort_by_key(|&(_, first)| std::cmp::Reverse(first));
        AbortedFilter {
            pending: aborted,
            active: HashSet::new(),
        }
    }

    /// Whether `b`'s records should be read. Call for every batch in order.
    fn keeps(&mut self, b: &BatchRef) -> bool {
        while let Some(&(pid, first)) = self.pending.last() {
            if first > b.last_offset {
                break;
            }
            self.active.insert(pid);
            self.pending.pop();
        }
        if b.is_control {
            // The marker ending the producer's transaction (an abort marker
            // if the transaction is listed as aborted).
            self.active.remove(&b.producer_id);
            return false;
        }
        !(b.is_transactional && self.active.contains(&b.producer_id))
    }
}

/// Reads partition 0 of the checkpoints topic `topic` from its start to its
/// high watermark and returns the newest checkpoint per key.
///
/// A topic that does not exist yields an empty store (MM2 has written no
/// checkpoints, or is not configured for this pair of clusters). Records
/// that do not decode are counted in [`CheckpointStore::skipped`]. The read
/// fails rather than return a partial store when the deadline passes or the
/// broker stops making progress: a partial read could miss a group's newest
/// checkpoint.
pub async fn read_checkpoints(
    client: &mut SiteClient,
    topic: &str,
    deadline: Instant,
) -> Result<CheckpointStore, String> {
    let mut store = CheckpointStore::new();
    // An unknown topic has no leader, and a Fetch to no leader reads as a
    // network error: ask the metadata first. Only a successful refresh that
    // still lacks the topic means "no checkpoints"; an unreachable site is
    // an error, not an empty answer.
    if !client.site.view().topics.contains_key(topic) {
        client.site.mark_stale();
        client
            .site
            .refresh()
            .await
            .map_err(|e| format!("checkpoints topic {topic}: metadata refresh failed: {e}"))?;
        if !client.site.view().topics.contains_key(topic) {
            return Ok(store);
        }
    }
    let mut at = 0i64;
    let mut end: Option<i64> = None;
    let mut max_bytes = FETCH_BYTES;
    let mut idle = 0u32;
    let mut asked_start = false;
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "deadline passed reading checkpoints topic {topic} at offset {at}{}",
                end.map(|e| format!(" of {e}")).unwrap_or_default()
            ));
        }
        if idle >= MAX_IDLE_ANSWERS {
            return Err(format!(
                "checkpoints topic {topic}: no progress at offset {at}{} after {idle} fetches",
                end.map(|e| format!(" of {e}")).unwrap_or_default()
            ));
        }
        if end.is_some_and(|e| at >= e) {
            return Ok(store);
        }
        let Some(got) = client
            .fetch(topic, &[(0, at)], max_bytes, FETCH_WAIT_MS)
            .await
            .into_iter()
            .next()
        else {
            idle += 1;
            continue;
        };
        match got.error {
            0 => {}
            UNKNOWN_TOPIC_OR_PARTITION => return Ok(CheckpointStore::new()),
            OFFSET_OUT_OF_RANGE if !asked_start => {
                // Offset 0 is gone (retention, or a log that never began
                // at 0): start from the log start instead.
                asked_start = true;
                let start = client.list_offset(topic, 0, -2).await?;
                if start <= at {
                    return Err(format!(
                        "checkpoints topic {topic}: offset {at} out of range, log start {start}"
                    ));
                }
                at = start;
                continue;
            }
            NETWORK_EXCEPTION
            | LEADER_NOT_AVAILABLE
            | NOT_LEADER_OR_FOLLOWER
            | REQUEST_TIMED_OUT => {
                // Retriable: the client has noted the error (and refreshes
                // leaders); try again shortly.
                idle += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            code => {
                return Err(format!(
                    "checkpoints topic {topic}: Fetch error {code} at offset {at}"
                ))
            }
        }
        // The end is taken from the first answer: checkpoints written while
        // we read are newer than the read, like MM2's own reader.
        let end_offset = *end.get_or_insert(got.high_watermark);
        if at >= end_offset {
            return Ok(store);
        }
        let records = got.records.unwrap_or_default();
        let next = read_answer(&mut store, &records, got.aborted, at)
            .map_err(|e| format!("checkpoints topic {topic}: {e}"))?;
        match next {
            Some(next) => {
                at = next;
                idle = 0;
            }
            None if !records.is_empty() && max_bytes < MAX_FETCH_BYTES => {
                // Only part of a batch fit: ask for more.
                max_bytes = max_bytes.saturating_mul(4).min(MAX_FETCH_BYTES);
            }
            None => idle += 1,
        }
    }
}

/// Applies the records of one Fetch answer at or after `at` to `store`, and
/// returns where the next fetch starts, or `None` when the answer held no
/// whole batch (no progress). A batch that fails to decode has its records
/// counted as skipped; the read goes on after it.
fn read_answer(
    store: &mut CheckpointStore,
    records: &Bytes,
    aborted: Vec<(i64, i64)>,
    at: i64,
) -> Result<Option<i64>, String> {
    let found = batches(records).map_err(|e| e.to_string())?;
    let mut filter = AbortedFilter::new(aborted);
    let mut next = None;
    for b in &found {
        if b.last_offset < at {
            continue;
        }
        if filter.keeps(b) {
            match decode_batch(b) {
                Ok(records) => {
                    for r in records.iter().filter(|r| r.offset >= at) {
                        store.apply(r.key.as_deref(), r.value.as_deref());
                    }
                }
                Err(_) => {
                    store.skipped += usize::try_from(b.records_count).unwrap_or(0).max(1);
                }
            }
        }
        next = Some(b.last_offset.saturating_add(1));
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::batch::{encode as encode_batch, BatchParams, Compression, WireRecord};
    use bytes::BytesMut;

    fn cp(group: &str, topic: &str, partition: i32, up: i64, down: i64) -> Checkpoint {
        Checkpoint {
            group: group.into(),
            topic: topic.into(),
            partition,
            upstream_offset: up,
            downstream_offset: down,
            metadata: String::new(),
        }
    }

    #[test]
    fn topic_name() {
        assert_eq!(checkpoints_topic("primary"), "primary.checkpoints.internal");
    }

    #[test]
    fn round_trip() {
        let c = Checkpoint {
            metadata: "meta ✓".into(),
            ..cp("orders-app", "primary.orders", 7, 1234, 987)
        };
        let (k, v) = encode(&c);
        assert_eq!(decode(&k, Some(&v)), Ok(Some(c.clone())));
        let empty = cp("", "", 0, -1, 0);
        let (k, v) = encode(&empty);
        assert_eq!(decode(&k, Some(&v)), Ok(Some(empty)));
    }

    /// The exact bytes, built by hand from the format, not from `encode`.
    #[test]
    fn decodes_hand_built_bytes() {
        let key: Vec<u8> = [
            &[0x00, 0x02][..],
            b"g1",
            &[0x00, 0x05],
            b"a.top",
            &[0x00, 0x00, 0x01, 0x02], // partition 258
        ]
        .concat();
        let value: Vec<u8> = [
            &[0x00, 0x00][..],                                 // version 0
            &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00], // upstream 256
            &[0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x03], // downstream 2^32 + 3
            &[0x00, 0x03],
            b"m:x",
        ]
        .concat();
        let c = decode(&key, Some(&value)).unwrap().unwrap();
        assert_eq!(
            c,
            Checkpoint {
                metadata: "m:x".into(),
                ..cp("g1", "a.top", 258, 256, (1 << 32) + 3)
            }
        );
        // And encode produces exactly these bytes.
        assert_eq!(encode(&c), (key, value));
    }

    #[test]
    fn tombstone_is_none_but_needs_a_valid_key() {
        let (k, _) = encode(&cp("g", "t", 0, 1, 1));
        assert_eq!(decode(&k, None), Ok(None));
        assert!(decode(b"\x00", None).is_err());
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        let (k, v) = encode(&Checkpoint {
            metadata: "meta".into(),
            ..cp("group", "topic", 3, 10, 20)
        });
        // Every truncation of the key or the value.
        for cut in 0..k.len() {
            let err = decode(&k[..cut], Some(&v)).unwrap_err();
            assert!(err.contains("key") && err.contains("truncated"), "{err}");
        }
        for cut in 0..v.len() {
            let err = decode(&k, Some(&v[..cut])).unwrap_err();
            assert!(err.contains("value") && err.contains("truncated"), "{err}");
        }
        // Negative string length.
        let err = decode(&[0xff, 0xff, 0, 0], Some(&v)).unwrap_err();
        assert!(err.contains("negative length"), "{err}");
        // Bad UTF-8 in the group.
        let err = decode(&[0, 1, 0xff, 0, 0, 0, 0, 0, 0], Some(&v)).unwrap_err();
        assert!(err.contains("not UTF-8") && err.contains("group"), "{err}");
        // A length longer than the bytes.
        let err = decode(&[0x7f, 0xff, b'a'], Some(&v)).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        // Unknown version.
        let mut v1 = v.clone();
        v1[1] = 1;
        let err = decode(&k, Some(&v1)).unwrap_err();
        assert!(err.contains("version 1"), "{err}");
        // Trailing bytes are ignored, as MM2 ignores them.
        let mut longer = v.clone();
        longer.push(0);
        assert!(decode(&k, Some(&longer)).unwrap().is_some());
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic fuzz: every byte string built from a small
        // alphabet of tricky bytes, up to length 6, as key and value.
        let alphabet = [0x00u8, 0x01, 0x02, 0x7f, 0x80, 0xff];
        let mut inputs: Vec<Vec<u8>> = vec![vec![]];
        for _ in 0..4 {
            let mut next = Vec::new();
            for s in &inputs {
                for &b in &alphabet {
                    let mut t = s.clone();
                    t.push(b);
                    next.push(t);
                }
            }
            inputs.extend(next);
            inputs.sort();
            inputs.dedup();
        }
        for k in &inputs {
            let _ = decode(k, None);
            let _ = decode(k, Some(k));
        }
    }

    #[test]
    fn store_keeps_the_last_checkpoint_per_key() {
        let mut store = CheckpointStore::new();
        let apply = |store: &mut CheckpointStore, c: &Checkpoint| {
            let (k, v) = encode(c);
            store.apply(Some(&k), Some(&v));
        };
        apply(&mut store, &cp("g", "A.t", 0, 10, 5));
        apply(&mut store, &cp("g", "A.t", 1, 11, 6));
        apply(&mut store, &cp("h", "A.t", 0, 12, 7));
        apply(&mut store, &cp("g", "A.t", 0, 20, 15));
        store.apply(Some(b"junk"), Some(b"junk"));
        store.apply(None, Some(b"junk"));
        assert_eq!(store.len(), 3);
        assert_eq!(store.skipped(), 2);
        assert_eq!(
            store.get("g", "A.t", 0).map(|c| c.downstream_offset),
            Some(15)
        );
        assert_eq!(
            store.get("g", "A.t", 1).map(|c| c.downstream_offset),
            Some(6)
        );
        assert_eq!(
            store.get("h", "A.t", 0).map(|c| c.downstream_offset),
            Some(7)
        );
        assert!(store.get("g", "t", 0).is_none());
        assert!(store.get("x", "A.t", 0).is_none());
        assert_eq!(store.iter().count(), 3);

        // A tombstone removes its key.
        let (k, _) = encode(&cp("g", "A.t", 0, 0, 0));
        store.apply(Some(&k), None);
        assert!(store.get("g", "A.t", 0).is_none());
        assert_eq!(store.len(), 2);
        store.apply(Some(&k), None);
        assert_eq!(store.len(), 2);
    }

    fn fix_crc(batch: &mut [u8]) {
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    /// A batch of checkpoints at `base`, optionally transactional for `pid`
    /// or a control batch.
    fn batch_of(base: i64, cps: &[Checkpoint], pid: i64, attributes: i16) -> BytesMut {
        let records: Vec<WireRecord> = cps
            .iter()
            .map(|c| {
                let (k, v) = encode(c);
                WireRecord {
                    offset: 0,
                    timestamp: 1,
                    key: Some(k.into()),
                    value: Some(v.into()),
                    headers: vec![],
                }
            })
            .collect();
        let params = BatchParams {
            compression: Compression::None,
            producer_id: pid,
            producer_epoch: 0,
            base_sequence: 0,
        };
        let mut b = BytesMut::from(&encode_batch(&records, &params).unwrap()[..]);
        b[..8].copy_from_slice(&base.to_be_bytes());
        b[21..23].copy_from_slice(&attributes.to_be_bytes());
        fix_crc(&mut b);
        b
    }

    #[test]
    fn reads_a_fetch_answer_dropping_aborted_transactions() {
        let mut set = BytesMut::new();
        set.extend_from_slice(&batch_of(0, &[cp("g", "t", 0, 1, 1)], 1, 0));
        set.extend_from_slice(&batch_of(1, &[cp("g", "t", 0, 9, 9)], 7, 0x10));
        let first_two = set.clone().freeze();
        // Producer 7's transaction at 1..=1 (above) is aborted (marker at
        // 2), then its next transaction at 3 commits (marker at 4).
        set.extend_from_slice(&batch_of(2, &[cp("x", "x", 0, 0, 0)], 7, 0x30));
        set.extend_from_slice(&batch_of(3, &[cp("g", "t", 1, 3, 3)], 7, 0x10));
        set.extend_from_slice(&batch_of(4, &[cp("x", "x", 0, 0, 0)], 7, 0x30));
        set.extend_from_slice(&batch_of(
            5,
            &[cp("g", "t", 0, 5, 5), cp("h", "t", 0, 6, 6)],
            1,
            0,
        ));
        let set = set.freeze();

        let mut store = CheckpointStore::new();
        let next = read_answer(&mut store, &set, vec![(7, 1)], 0).unwrap();
        assert_eq!(next, Some(7));
        assert_eq!(store.len(), 3);
        assert_eq!(store.get("g", "t", 0).map(|c| c.upstream_offset), Some(5));
        assert_eq!(store.get("g", "t", 1).map(|c| c.upstream_offset), Some(3));
        assert_eq!(store.skipped(), 0);

        // Starting mid-answer skips the records before `at`.
        let mut store = CheckpointStore::new();
        assert_eq!(read_answer(&mut store, &set, vec![], 6).unwrap(), Some(7));
        assert_eq!(store.len(), 1);
        assert!(store.get("h", "t", 0).is_some());

        // Without the aborted list, the transactional record counts.
        let mut store = CheckpointStore::new();
        read_answer(&mut store, &first_two, vec![], 0).unwrap();
        assert_eq!(store.get("g", "t", 0).map(|c| c.upstream_offset), Some(9));

        // A cut-off answer makes no progress.
        let mut store = CheckpointStore::new();
        assert_eq!(
            read_answer(&mut store, &set.slice(..30), vec![], 0),
            Ok(None)
        );
    }
}
