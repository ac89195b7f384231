//! The persisted form of offset-sync runs: records in a compacted internal
//! topic on the target cluster, [`OFFSET_SYNCS_TOPIC`] (one partition,
//! `cleanup.policy=compact`).
//!
//! # Keys: compaction does the thinning
//!
//! Every run a partition's tee opens gets a per-partition sequence number
//! `n = 1, 2, 3, …` (its *run index*, persisted in the value so a restarted
//! proxy continues the count — see [`SlotCounter`]). Run `n` is written under
//!
//! ```text
//! v1|{source_site}|{source_topic}|{partition}|{slot}    slot = trailing_zeros(n), capped at 63
//! ```
//!
//! This is a binary counter: slot 0 is rewritten by every odd run, slot 1
//! every 2nd run, slot k every 2^k runs. After compaction (latest record per
//! key) the partition keeps at most 64 slot records, and slot k holds the
//! newest run whose index has exactly k trailing zeros — a run less than
//! 2^(k+1) runs old. The surviving history is therefore thinned
//! exponentially, like MirrorMaker 2's `OffsetSyncStore`: dense near the head,
//! sparser further back, and reaching back between a third and two thirds of
//! all runs ever written (the oldest survivor is run 2^m or 2^(m-1), with
//! 2^m the greatest power of two `<= N`). For a consumer lagging `L` runs
//! behind the head, the nearest surviving run at or behind it is at most
//! `3L + 2` runs behind the head — duplicates proportional to lag.
//!
//! A run keeps growing while batches continue it, so every update is also
//! written under a *head* key, rewritten on every update:
//!
//! ```text
//! v1|{source_site}|{source_topic}|{partition}|head
//! ```
//!
//! Writers should put each update of run `n` under both its slot key and the
//! head key: the head always holds the newest run's latest extent, and the
//! slot keeps that run's final extent once the next run takes over the head.
//! A stale (shorter) extent of a run is harmless — it is a prefix of the true
//! run, and [`PartitionRuns::insert`](super::runs::PartitionRuns::insert)
//! merges it with longer ones.
//!
//! Key components are escaped (`%` → `%25`, `|` → `%7C`) so that distinct
//! (site, topic) pairs can never produce the same key — a collision would let
//! compaction delete another partition's history.
//!
//! The key does not name the target topic: one source topic-partition of one
//! source site is teed to at most one target topic per target cluster.
//!
//! # Values
//!
//! JSON with the fields of [`SyncRecord`]. Unknown fields are ignored, so
//! later versions may add some.

use serde::{Deserialize, Serialize};

use super::runs::Run;

/// The compacted internal topic on each target cluster that holds the runs.
pub const OFFSET_SYNCS_TOPIC: &str = "__switchyard_offset_syncs";

/// [`OFFSET_SYNCS_TOPIC`] has one partition.
pub const OFFSET_SYNCS_PARTITIONS: i32 = 1;

/// Topic configs [`OFFSET_SYNCS_TOPIC`] is created with.
pub const OFFSET_SYNCS_TOPIC_CONFIGS: &[(&str, &str)] = &[("cleanup.policy", "compact")];

/// Prefix of every key this version writes; other keys are not ours.
const KEY_PREFIX: &str = "v1|";

/// Key suffix for the newest run of a partition.
const HEAD: &str = "head";

/// Highest slot number.
pub const MAX_SLOT: u32 = 63;

/// The slot run `run_index` is persisted under: `trailing_zeros(n)`, capped
/// at [`MAX_SLOT`].
pub fn slot_for(run_index: u64) -> u32 {
    run_index.trailing_zeros().min(MAX_SLOT)
}

/// One persisted run of one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRecord {
    /// Name of the site the records were teed from.
    pub source_site: String,
    /// Topic on the source site.
    pub source_topic: String,
    /// Topic on the target site (this topic's cluster) the records went to.
    pub target_topic: String,
    /// Partition (the same on both sides).
    pub partition: i32,
    /// The run's per-partition sequence number `n >= 1`.
    pub run_index: u64,
    /// First source offset of the run.
    pub source_offset: i64,
    /// Target offset of the run's first record.
    pub target_offset: i64,
    /// Records in the run (`>= 1`).
    pub count: i64,
    /// Wall-clock time of this write, milliseconds since the epoch.
    pub written_at_ms: i64,
}

/// Why a record under one of our keys could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncDecodeError {
    #[error("offset-sync value is not valid JSON for a sync record: {0}")]
    Json(String),
    #[error("offset-sync record is invalid: {0}")]
    Invalid(&'static str),
    #[error(
        "offset-sync key `{key}` does not match its value (expected `{expected}` or its head key)"
    )]
    KeyMismatch { key: String, expected: String },
}

impl SyncRecord {
    /// A record for `run` as the `run_index`-th run of the partition.
    pub fn from_run(
        source_site: &str,
        source_topic: &str,
        target_topic: &str,
        partition: i32,
        run_index: u64,
        run: Run,
        written_at_ms: i64,
    ) -> Self {
        SyncRecord {
            source_site: source_site.to_owned(),
            source_topic: source_topic.to_owned(),
            target_topic: target_topic.to_owned(),
            partition,
            run_index,
            source_offset: run.source,
            target_offset: run.target,
            count: run.count,
            written_at_ms,
        }
    }

    /// The run this record describes.
    pub fn run(&self) -> Run {
        Run {
            source: self.source_offset,
            target: self.target_offset,
            count: self.count,
        }
    }

    /// The slot this record's run goes to.
    pub fn slot(&self) -> u32 {
        slot_for(self.run_index)
    }

    /// The slot key: `v1|{source_site}|{source_topic}|{partition}|{slot}`.
    pub fn key(&self) -> String {
        format!("{}{}", self.key_stem(), self.slot())
    }

    /// The head key: `v1|{source_site}|{source_topic}|{partition}|head`.
    pub fn head_key(&self) -> String {
        format!("{}{HEAD}", self.key_stem())
    }

    fn key_stem(&self) -> String {
        format!(
            "{KEY_PREFIX}{}|{}|{}|",
            escape(&self.source_site),
            escape(&self.source_topic),
            self.partition
        )
    }

    /// The JSON value.
    pub fn value(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of strings and integers always serializes")
    }

    /// Decodes a record read from [`OFFSET_SYNCS_TOPIC`].
    ///
    /// Keys that are not ours (not UTF-8, or not `v1|…`) and tombstones give
    /// `Ok(None)`. A `v1` key with a malformed or inconsistent value gives an
    /// error saying why. Never panics.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Option<SyncRecord>, SyncDecodeError> {
        let Ok(key) = std::str::from_utf8(key) else {
            return Ok(None);
        };
        if !key.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        let Some(value) = value else {
            return Ok(None);
        };
        let record: SyncRecord =
            serde_json::from_slice(value).map_err(|e| SyncDecodeError::Json(e.to_string()))?;
        record.validate()?;
        let expected = record.key();
        if key != expected && key != record.head_key() {
            return Err(SyncDecodeError::KeyMismatch {
                key: key.to_owned(),
                expected,
            });
        }
        Ok(Some(record))
    }

    fn validate(&self) -> Result<(), SyncDecodeError> {
        let invalid = |why| Err(SyncDecodeError::Invalid(why));
        if self.source_site.is_empty() {
            return invalid("empty source_site");
        }
        if self.source_topic.is_empty() {
            return invalid("empty source_topic");
        }
        if self.target_topic.is_empty() {
            return invalid("empty target_topic");
        }
        if self.partition < 0 {
            return invalid("negative partition");
        }
        if self.run_index == 0 {
            return invalid("run_index must be >= 1");
        }
        if self.source_offset < 0 || self.target_offset < 0 {
            return invalid("negative offset");
        }
        if self.count < 1 {
            return invalid("count must be >= 1");
        }
        if self.source_offset.checked_add(self.count).is_none()
            || self.target_offset.checked_add(self.count).is_none()
        {
            return invalid("offset + count overflows");
        }
        Ok(())
    }
}

/// Escapes `%` and `|` so key components cannot run into each other.
fn escape(s: &str) -> String {
    s.replace('%', "%25").replace('|', "%7C")
}

/// Run index and slot for a run about to be persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSlot {
    pub run_index: u64,
    pub slot: u32,
}

/// Hands out run indexes for one partition: a new index (and slot) when a
/// run is opened, the same one while the head run is extended.
#[derive(Debug, Clone, Default)]
pub struct SlotCounter {
    last_index: u64,
    head_source: Option<i64>,
}

impl SlotCounter {
    /// A counter for a partition with nothing persisted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a record read back from the topic so the count resumes after the
    /// newest persisted run (call for every decoded record of the partition).
    pub fn observe(&mut self, record: &SyncRecord) {
        if record.run_index > self.last_index {
            self.last_index = record.run_index;
            self.head_source = Some(record.source_offset);
        }
    }

    /// The index and slot to persist `run` under: unchanged when `run`
    /// extends the current head run (same start), the next index otherwise.
    /// Feed it the runs [`PartitionRuns::record`](super::runs::PartitionRuns::record)
    /// returns, in order.
    pub fn assign(&mut self, run: &Run) -> RunSlot {
        if self.last_index == 0 || self.head_source != Some(run.source) {
            self.last_index = self.last_index.saturating_add(1);
            self.head_source = Some(run.source);
        }
        RunSlot {
            run_index: self.last_index,
            slot: slot_for(self.last_index),
        }
    }

    /// The newest run index handed out or observed (0: none).
    pub fn last_index(&self) -> u64 {
        self.last_index
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::offsets::runs::PartitionRuns;

    fn record(run_index: u64, run: Run) -> SyncRecord {
        SyncRecord::from_run(
            "dc-a",
            "orders",
            "orders",
            3,
            run_index,
            run,
            1_700_000_000_000,
        )
    }

    #[test]
    fn key_and_value_round_trip() {
        let rec = record(
            12,
            Run {
                source: 1_000,
                target: 2_000,
                count: 17,
            },
        );
        assert_eq!(rec.slot(), 2);
        assert_eq!(rec.key(), "v1|dc-a|orders|3|2");
        assert_eq!(rec.head_key(), "v1|dc-a|orders|3|head");
        let value = rec.value();
        let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
        for field in [
            "source_site",
            "source_topic",
            "target_topic",
            "partition",
            "run_index",
            "source_offset",
            "target_offset",
            "count",
            "written_at_ms",
        ] {
            assert!(json.get(field).is_some(), "missing {field} in {json}");
        }
        for key in [rec.key(), rec.head_key()] {
            assert_eq!(
                SyncRecord::decode(key.as_bytes(), Some(&value)),
                Ok(Some(rec.clone()))
            );
        }
        assert_eq!(rec.run().source_end(), 1_017);
    }

    #[test]
    fn unknown_value_fields_are_ignored() {
        let rec = record(
            1,
            Run {
                source: 0,
                target: 0,
                count: 1,
            },
        );
        let mut json: serde_json::Value = serde_json::from_slice(&rec.value()).unwrap();
        json["added_later"] = serde_json::json!({"x": 1});
        let value = serde_json::to_vec(&json).unwrap();
        assert_eq!(
            SyncRecord::decode(rec.key().as_bytes(), Some(&value)),
            Ok(Some(rec))
        );
    }

    #[test]
    fn keys_escape_separators() {
        let a = SyncRecord::from_run(
            "a|b",
            "c",
            "c",
            0,
            1,
            Run {
                source: 0,
                target: 0,
                count: 1,
            },
            0,
        );
        let b = SyncRecord::from_run(
            "a",
            "b|c",
            "c",
            0,
            1,
            Run {
                source: 0,
                target: 0,
                count: 1,
            },
            0,
        );
        let c = SyncRecord::from_run(
            "a%7Cb",
            "c",
            "c",
            0,
            1,
            Run {
                source: 0,
                target: 0,
                count: 1,
            },
            0,
        );
        assert_eq!(a.key(), "v1|a%7Cb|c|0|0");
        assert_ne!(a.key(), b.key());
        assert_ne!(a.key(), c.key());
        for rec in [a, b, c] {
            assert_eq!(
                SyncRecord::decode(rec.head_key().as_bytes(), Some(&rec.value())),
                Ok(Some(rec))
            );
        }
    }

    #[test]
    fn tombstones_and_foreign_keys_are_skipped() {
        let rec = record(
            1,
            Run {
                source: 0,
                target: 0,
                count: 1,
            },
        );
        assert_eq!(SyncRecord::decode(rec.key().as_bytes(), None), Ok(None));
        assert_eq!(
            SyncRecord::decode(b"v2|dc-a|orders|3|0", Some(&rec.value())),
            Ok(None)
        );
        assert_eq!(
            SyncRecord::decode(b"something-else", Some(b"\x00\xff")),
            Ok(None)
        );
        assert_eq!(
            SyncRecord::decode(b"\xff\xfe", Some(&rec.value())),
            Ok(None)
        );
        assert_eq!(SyncRecord::decode(b"", None), Ok(None));
    }

    #[test]
    fn decode_rejects_garbage_without_panicking() {
        let good = record(
            5,
            Run {
                source: 10,
                target: 20,
                count: 3,
            },
        );
        let key = good.key();
        let value = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut json: serde_json::Value = serde_json::from_slice(&good.value()).unwrap();
            f(&mut json);
            serde_json::to_vec(&json).unwrap()
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("binary", vec![0xff, 0x00, 0x7b]),
            ("not an object", b"[1,2,3]".to_vec()),
            ("truncated", good.value()[..10].to_vec()),
            (
                "missing field",
                value(&|j| {
                    j.as_object_mut().unwrap().remove("count");
                }),
            ),
            ("wrong type", value(&|j| j["count"] = "three".into())),
            (
                "huge number",
                value(&|j| j["source_offset"] = serde_json::json!(1e300)),
            ),
            (
                "negative run_index",
                value(&|j| j["run_index"] = (-1).into()),
            ),
            ("zero run_index", value(&|j| j["run_index"] = 0.into())),
            ("zero count", value(&|j| j["count"] = 0.into())),
            (
                "negative offset",
                value(&|j| j["target_offset"] = (-5).into()),
            ),
            (
                "negative partition",
                value(&|j| j["partition"] = (-1).into()),
            ),
            ("overflow", value(&|j| j["source_offset"] = i64::MAX.into())),
            ("empty site", value(&|j| j["source_site"] = "".into())),
            ("other partition", value(&|j| j["partition"] = 4.into())),
            ("other slot", value(&|j| j["run_index"] = 6.into())),
            (
                "other topic",
                value(&|j| j["source_topic"] = "payments".into()),
            ),
        ];
        for (what, bytes) in cases {
            let got = SyncRecord::decode(key.as_bytes(), Some(&bytes));
            assert!(got.is_err(), "{what}: {got:?}");
            assert!(!got.unwrap_err().to_string().is_empty());
        }
        // Byte-level fuzz: no input panics.
        let bytes = good.value();
        for i in 0..bytes.len() {
            for b in [0u8, b'"', b'}', b'9', 0xff] {
                let mut v = bytes.clone();
                v[i] = b;
                let _ = SyncRecord::decode(key.as_bytes(), Some(&v));
                let _ = SyncRecord::decode(&v, Some(&bytes));
            }
        }
    }

    #[test]
    fn slot_for_is_trailing_zeros_capped() {
        assert_eq!(slot_for(1), 0);
        assert_eq!(slot_for(2), 1);
        assert_eq!(slot_for(3), 0);
        assert_eq!(slot_for(4), 2);
        assert_eq!(slot_for(96), 5);
        assert_eq!(slot_for(1 << 63), 63);
        assert_eq!(slot_for(0), 63);
    }

    #[test]
    fn counter_extends_head_and_opens_new_runs() {
        let mut runs = PartitionRuns::new(64);
        let mut counter = SlotCounter::new();
        let mut assigned = Vec::new();
        for (batch, base) in [
            (vec![0, 1], 0),
            (vec![2, 3], 2),
            (vec![5, 6, 8], 4),
            (vec![9], 7),
        ] {
            for run in runs.record(&batch, base) {
                assigned.push((counter.assign(&run), run));
            }
        }
        let idx: Vec<u64> = assigned.iter().map(|(s, _)| s.run_index).collect();
        assert_eq!(idx, vec![1, 1, 2, 3, 3]);
        assert_eq!(
            assigned[4].1,
            Run {
                source: 8,
                target: 6,
                count: 2
            }
        );
        // A restarted proxy resumes after the newest persisted run.
        let mut resumed = SlotCounter::new();
        for (slot, run) in &assigned {
            resumed.observe(&record(slot.run_index, *run));
        }
        assert_eq!(resumed.last_index(), 3);
        let next = resumed.assign(&Run {
            source: 8,
            target: 6,
            count: 3,
        });
        assert_eq!(
            next,
            RunSlot {
                run_index: 3,
                slot: 0
            },
            "extends the head"
        );
        let next = resumed.assign(&Run {
            source: 20,
            target: 10,
            count: 1,
        });
        assert_eq!(
            next,
            RunSlot {
                run_index: 4,
                slot: 2
            }
        );
    }

    /// Writes `n` runs the way the tee does (each update under its slot key
    /// and the head key), compacts, restores, and checks the result.
    #[test]
    fn compaction_keeps_few_exponentially_spread_runs() {
        const N: u64 = 1_000_000;
        // Run n maps source 3n.. to target 2n.. ; every 7th run is written
        // in two updates (it grows), the others in one.
        let true_run = |n: u64| Run {
            source: 3 * n as i64,
            target: 2 * n as i64,
            count: 1 + i64::from(n % 7 == 0),
        };
        let mut compacted: HashMap<String, SyncRecord> = HashMap::new();
        let mut counter = SlotCounter::new();
        for n in 1..=N {
            let full = true_run(n);
            let updates = if full.count == 2 {
                vec![Run { count: 1, ..full }, full]
            } else {
                vec![full]
            };
            for run in updates {
                let slot = counter.assign(&run);
                assert_eq!(slot.run_index, n);
                let rec = record(slot.run_index, run);
                compacted.insert(rec.key(), rec.clone());
                compacted.insert(rec.head_key(), rec);
            }
        }
        assert!(compacted.len() <= 64 + 1, "{} keys", compacted.len());
        assert_eq!(compacted["v1|dc-a|orders|3|head"].run_index, N);
        // Every surviving record is its run's final extent.
        for rec in compacted.values() {
            assert_eq!(rec.run(), true_run(rec.run_index));
        }
        let mut survivors: Vec<u64> = compacted.values().map(|r| r.run_index).collect();
        survivors.sort_unstable();
        survivors.dedup();
        // Exponential spread: the history reaches back at least a third of all
        // runs (the oldest survivor is run 2^19 = 524_288, age 475_712)…
        let oldest = survivors[0];
        assert!(N - oldest >= N / 3, "oldest survivor {oldest}");
        assert_eq!(oldest, 1 << 19);
        // …and a consumer lagging L runs finds a survivor at most 3L+2 back.
        for w in survivors.windows(2) {
            let (older, newer) = (w[0], w[1]);
            let lag = N - (newer - 1); // just before the newer survivor
            let back = N - older;
            assert!(back < 3 * (lag + 1), "{older}..{newer}: {survivors:?}");
        }
        // Restoring the compacted topic gives runs that translate safely.
        let mut restored = PartitionRuns::new(128);
        let mut resumed = SlotCounter::new();
        for (key, rec) in &compacted {
            let rec = SyncRecord::decode(key.as_bytes(), Some(&rec.value()))
                .unwrap()
                .unwrap();
            restored.insert(rec.run());
            resumed.observe(&rec);
        }
        assert_eq!(resumed.last_index(), N);
        assert_eq!(restored.len(), survivors.len());
        assert_eq!(restored.last(), Some(true_run(N)));
        // Target offset of the first true record with source offset >= c.
        let next_target = |c: i64| {
            let n = c / 3;
            if (1..=N as i64).contains(&n) && c - 3 * n < true_run(n as u64).count {
                2 * n + (c - 3 * n)
            } else if n < N as i64 {
                2 * (n + 1)
            } else {
                i64::MAX
            }
        };
        let probes = (0..3 * N as i64 + 10).step_by(997);
        for c in probes.chain([3 * oldest as i64 - 1, 3 * oldest as i64 + 1]) {
            let next_target = next_target(c);
            match restored.translate(c) {
                Some(p) => assert!(p <= next_target, "translate({c}) = {p} > {next_target}"),
                None => assert!(c < 3 * oldest as i64, "translate({c}) = None"),
            }
        }
    }
}
