//! Timestamp-based offset translation, the fallback when neither the tee's
//! own offset map nor MM2 checkpoints know a group (reference §3.2(c)).
//!
//! Kafka's ListOffsets by timestamp answers *the first offset, in log order,
//! whose record timestamp is `>= T`*, or the end of the log if there is
//! none. Any copy that preserves CreateTime (the tee, MM2, …) lets a proxy
//! find on the target the position matching a source position: take the
//! timestamp `t` of the source record a group would consume next, subtract
//! a slack `D` for timestamp disorder, and look up `t - D` on the target.
//! That never skips a record as long as no record is more than `D` older
//! than one written before it; choosing `D` is the caller's job.
//!
//! Not every broker answers ListOffsets by timestamp correctly (Tansu
//! answers 0 for any timestamp), so [`offset_for_timestamp`] checks the
//! broker's answer against the records around it, and if the check fails
//! searches the log itself: a binary search over batches by their
//! `maxTimestamp` header field, then a scan of records inside the batch it
//! lands on. The search logic is [`Search`], a pure state machine driven by
//! the batches it asks for, so it is tested against in-memory logs; the
//! async functions here only fetch.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::batch::{batches, decode, BatchRef, WireRecord};
use crate::codec::errors::{
    LEADER_NOT_AVAILABLE, NETWORK_EXCEPTION, NOT_LEADER_OR_FOLLOWER, OFFSET_OUT_OF_RANGE,
    REQUEST_TIMED_OUT,
};
use crate::upstream::client::SiteClient;

/// First fetch size when reading single records. Kafka returns a whole first
/// batch whatever the limit; for brokers that cut it off, the limit grows
/// up to [`MAX_FETCH_BYTES`].
const FETCH_BYTES: i32 = 64 << 10;
const MAX_FETCH_BYTES: i32 = 1 << 28;
/// Reads are below the high watermark, so the broker need not wait.
const FETCH_WAIT_MS: i32 = 1;
/// Batches the scan after the binary search may look at before giving up:
/// with roughly ordered timestamps it ends within a batch or two.
const MAX_SCAN_BATCHES: u32 = 1024;

/// Header facts of one data batch: what the binary search reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSpan {
    pub base_offset: i64,
    /// Offsets up to here belong to the batch, even if compaction removed
    /// its last records.
    pub last_offset: i64,
    /// The batch header's `maxTimestamp`. Compaction keeps it, so it may be
    /// larger than any record still in the batch.
    pub max_timestamp: i64,
}

impl From<&BatchRef> for BatchSpan {
    fn from(b: &BatchRef) -> Self {
        BatchSpan {
            base_offset: b.base_offset,
            last_offset: b.last_offset,
            max_timestamp: b.max_timestamp,
        }
    }
}

/// What a [`Search`] needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The header of the first data batch (not a control batch) whose last
    /// offset is `>= at`, or `None` if there is none before the end: answer
    /// with [`Search::observe_batch`].
    Batch { at: i64 },
    /// The same batch with its records as `(offset, timestamp)` in offset
    /// order: answer with [`Search::observe_records`].
    Records { at: i64 },
    /// The answer.
    Done(i64),
    /// The search used more steps than it should ever need; the log changed
    /// under it or the answers were inconsistent.
    Exhausted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Binary search for the first batch whose max timestamp is `>= t`.
    Bisect,
    /// Record by record from `at`, for the first record with timestamp `>= t`.
    Scan {
        at: i64,
    },
    Done(i64),
}

/// Finds the first offset in `[start, end)` whose record has a timestamp
/// `>= t`, or `end` if none has, asking for one batch at a time.
///
/// The binary search over batches is exact when batch max timestamps are
/// non-decreasing in log order (each batch's max timestamp is at most the
/// timestamp of every record after it). Producers may write timestamps out
/// of order; the search then lands on *some* batch whose max timestamp is
/// `>= t` with only earlier-timestamped batches probed before it, so the
/// result can be later than Kafka's. Callers absorb that by searching for
/// `t - D`, where `D` bounds the disorder they accept.
#[derive(Debug, Clone)]
pub struct Search {
    t: i64,
    end: i64,
    /// Every data batch ending before `lo` has max timestamp `< t`.
    lo: i64,
    /// The first batch with max timestamp `>= t`, if any was seen, starts at
    /// or after `hi`, with no data batch between `hi` and it.
    hi: i64,
    phase: Phase,
    steps: u32,
    max_bisect_steps: u32,
    scanned: u32,
}

impl Search {
    pub fn new(start: i64, end: i64, t: i64) -> Self {
        let start = start.max(0);
        let end = end.max(start);
        let range = u64::try_from(end - start).unwrap_or(0);
        // Each step at least halves [lo, hi); a few more for rounding.
        let max_bisect_steps = 64 - range.leading_zeros() + 4;
        let mut s = Search {
            t,
            end,
            lo: start,
            hi: end,
            phase: Phase::Bisect,
            steps: 0,
            max_bisect_steps,
            scanned: 0,
        };
        s.settle();
        s
    }

    /// What the search needs next.
    pub fn step(&self) -> Step {
        match self.phase {
            Phase::Done(o) => Step::Done(o),
            Phase::Bisect if self.steps > self.max_bisect_steps => Step::Exhausted,
            Phase::Scan { .. } if self.scanned > MAX_SCAN_BATCHES => Step::Exhausted,
            Phase::Bisect => Step::Batch { at: self.mid() },
            Phase::Scan { at } => Step::Records { at },
        }
    }

    fn mid(&self) -> i64 {
        self.lo + (self.hi - self.lo) / 2
    }

    /// Answers [`Step::Batch`]: the first data batch whose last offset is
    /// `>= at`, if any exists before the end.
    pub fn observe_batch(&mut self, found: Option<BatchSpan>) {
        if self.phase != Phase::Bisect {
            return;
        }
        self.steps += 1;
        let mid = self.mid();
        match found {
            // No data from `mid` on: the answer is before it, or the end.
            None => self.hi = mid,
            Some(b) if b.max_timestamp >= self.t => {
                // `b` holds `mid` or is the first data after it, so nothing
                // between `mid` and `b` can come first: look before both.
                self.hi = mid.min(b.base_offset);
            }
            // `b` and everything before it are earlier than `t` (for ordered
            // timestamps). `mid + 1` guards against an answer that does not
            // hold `mid`, so the range always shrinks.
            Some(b) => {
                self.lo = self
                    .lo
                    .max(mid.saturating_add(1))
                    .max(b.last_offset.saturating_add(1))
            }
        }
        self.settle();
    }

    /// Ends the binary search once its range is empty: the scan starts at
    /// `lo`, the end of the batches known to be earlier than `t`.
    fn settle(&mut self) {
        if self.phase == Phase::Bisect && self.lo >= self.hi {
            self.phase = if self.lo >= self.end {
                Phase::Done(self.end)
            } else {
                Phase::Scan { at: self.lo }
            };
        }
    }

    /// Answers [`Step::Records`]: the first data batch whose last offset is
    /// `>= at` and its records `(offset, timestamp)`, or `None`.
    pub fn observe_records(&mut self, found: Option<(BatchSpan, &[(i64, i64)])>) {
        let Phase::Scan { at } = self.phase else {
            return;
        };
        self.scanned += 1;
        self.phase = match found {
            None => Phase::Done(self.end),
            Some((b, records)) => {
                match records
                    .iter()
                    .find(|&&(offset, ts)| offset >= at && ts >= self.t)
                {
                    Some(&(offset, _)) => Phase::Done(offset.max(at).min(self.end)),
                    None => {
                        let next = b.last_offset.saturating_add(1).max(at.saturating_add(1));
                        if next >= self.end {
                            Phase::Done(self.end)
                        } else {
                            Phase::Scan { at: next }
                        }
                    }
                }
            }
        };
    }
}

/// The data record at exactly `offset` among fetched batches; `None` when
/// no batch covers it, it is in a control batch, or compaction removed it.
pub fn record_at(found: &[BatchRef], offset: i64) -> Result<Option<WireRecord>, String> {
    let Some(b) = found
        .iter()
        .find(|b| b.base_offset <= offset && offset <= b.last_offset)
    else {
        return Ok(None);
    };
    if b.is_control {
        return Ok(None);
    }
    let records = decode(b).map_err(|e| e.to_string())?;
    Ok(records.into_iter().find(|r| r.offset == offset))
}

/// The first data record at or after `offset` among fetched batches.
pub fn first_record_from(found: &[BatchRef], offset: i64) -> Result<Option<WireRecord>, String> {
    for b in found
        .iter()
        .filter(|b| !b.is_control && b.last_offset >= offset)
    {
        let records = decode(b).map_err(|e| e.to_string())?;
        if let Some(r) = records.into_iter().find(|r| r.offset >= offset) {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

/// The last data record before `offset`, known only when the batch that
/// covers `offset - 1` is among `found` (a fetch from `offset - 1` returns
/// it first) and holds a data record before `offset`; otherwise `None`,
/// since the record could be in an earlier batch not fetched.
pub fn record_before(found: &[BatchRef], offset: i64) -> Result<Option<WireRecord>, String> {
    let prev = offset.saturating_sub(1);
    let Some(b) = found
        .iter()
        .find(|b| b.base_offset <= prev && prev <= b.last_offset)
    else {
        return Ok(None);
    };
    if b.is_control {
        return Ok(None);
    }
    let records = decode(b).map_err(|e| e.to_string())?;
    Ok(records.into_iter().rev().find(|r| r.offset < offset))
}

/// Why a fetch from one offset got nothing.
enum Missing {
    /// The offset is outside the log (before its start or after its end).
    OutOfRange,
}

/// Fetches from `at` until at least one whole batch arrives, growing the size
/// limit when a batch does not fit. An empty vector means the log holds
/// nothing readable from `at` on.
async fn fetch_from(
    client: &mut SiteClient,
    topic: &str,
    partition: i32,
    at: i64,
    deadline: Instant,
) -> Result<Result<Vec<BatchRef>, Missing>, String> {
    let mut max_bytes = FETCH_BYTES;
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "deadline passed reading {topic}/{partition} at offset {at}"
            ));
        }
        let got = client
            .fetch(topic, &[(partition, at)], max_bytes, FETCH_WAIT_MS)
            .await
            .into_iter()
            .next();
        let Some(got) = got else {
            return Err(format!("no Fetch answer for {topic}/{partition}"));
        };
        match got.error {
            0 => {}
            OFFSET_OUT_OF_RANGE => return Ok(Err(Missing::OutOfRange)),
            NETWORK_EXCEPTION
            | LEADER_NOT_AVAILABLE
            | NOT_LEADER_OR_FOLLOWER
            | REQUEST_TIMED_OUT => {
                // Retriable; the client has noted it and refreshes leaders.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            code => {
                return Err(format!(
                    "Fetch error {code} reading {topic}/{partition} at offset {at}"
                ))
            }
        }
        let records: Bytes = got.records.unwrap_or_default();
        let found = batches(&records)
            .map_err(|e| format!("reading {topic}/{partition} at offset {at}: {e}"))?;
        if found.is_empty() && !records.is_empty() && max_bytes < MAX_FETCH_BYTES {
            max_bytes = max_bytes.saturating_mul(4).min(MAX_FETCH_BYTES);
            continue;
        }
        return Ok(Ok(found));
    }
}

/// The first data batch whose last offset is `>= at` and that starts before
/// `end`, fetching past control batches as needed.
async fn data_batch_from(
    client: &mut SiteClient,
    topic: &str,
    partition: i32,
    mut at: i64,
    end: i64,
    deadline: Instant,
) -> Result<Option<BatchRef>, String> {
    while at < end {
        let found = match fetch_from(client, topic, partition, at, deadline).await? {
            Ok(found) => found,
            Err(Missing::OutOfRange) => return Ok(None),
        };
        let Some(last) = found.last().map(|b| b.last_offset) else {
            return Ok(None);
        };
        if let Some(b) = found
            .into_iter()
            .find(|b| !b.is_control && b.last_offset >= at)
        {
            return Ok((b.base_offset < end).then_some(b));
        }
        // Only control batches (or batches before `at`): go on after them.
        at = at.max(last.saturating_add(1));
    }
    Ok(None)
}

/// The timestamp of the record at `offset` of `topic`/`partition`.
///
/// `None` when there is no data record at `offset`: before the log start,
/// at or beyond the end, removed by compaction, or a transaction marker.
/// The caller then uses the next record.
pub async fn timestamp_at(
    client: &mut SiteClient,
    topic: &str,
    partition: i32,
    offset: i64,
    deadline: Instant,
) -> Result<Option<i64>, String> {
    if offset < 0 {
        return Ok(None);
    }
    match fetch_from(client, topic, partition, offset, deadline).await? {
        Ok(found) => Ok(record_at(&found, offset)?.map(|r| r.timestamp)),
        Err(Missing::OutOfRange) => Ok(None),
    }
}

/// The first offset of `topic`/`partition` whose record timestamp is
/// `>= t`, or the high watermark if there is none: Kafka's ListOffsets by
/// timestamp, checked.
///
/// The broker's own answer is used when the records around it agree with it
/// (the record there is `>= t`, the one before it is `< t`); otherwise, and
/// for negative `t` (which ListOffsets reads as "latest" or "earliest"),
/// the log is searched with [`Search`], which assumes roughly ordered
/// timestamps: the caller subtracts a disorder slack from `t` beforehand.
pub async fn offset_for_timestamp(
    client: &mut SiteClient,
    topic: &str,
    partition: i32,
    t: i64,
    deadline: Instant,
) -> Result<i64, String> {
    // Tansu's ListOffsets(latest) is not the end of the log; a Fetch's high
    // watermark is.
    let end = client.high_watermark(topic, partition).await?.max(0);
    let start = client
        .list_offset(topic, partition, -2)
        .await?
        .max(0)
        .min(end);
    if t >= 0 {
        match client.list_offset(topic, partition, t).await {
            Ok(answer) => {
                // -1: no record at or after `t`, i.e. the end.
                let o = if answer < 0 { end } else { answer };
                if verify(client, topic, partition, t, o, start, end, deadline).await? {
                    return Ok(o);
                }
                tracing::debug!(
                    topic,
                    partition,
                    t,
                    answer,
                    start,
                    end,
                    "ListOffsets by timestamp answer does not match the records; searching the log"
                );
            }
            Err(e) => {
                tracing::debug!(topic, partition, t, error = %e,
                    "ListOffsets by timestamp failed; searching the log")
            }
        }
    }
    let mut search = Search::new(start, end, t);
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "deadline passed searching {topic}/{partition} for timestamp {t}"
            ));
        }
        match search.step() {
            Step::Done(o) => return Ok(o),
            Step::Exhausted => {
                return Err(format!(
                    "searching {topic}/{partition} for timestamp {t} did not converge \
                     (the log changed during the search?)"
                ))
            }
            Step::Batch { at } => {
                let b = data_batch_from(client, topic, partition, at, end, deadline).await?;
                search.observe_batch(b.as_ref().map(BatchSpan::from));
            }
            Step::Records { at } => {
                match data_batch_from(client, topic, partition, at, end, deadline).await? {
                    None => search.observe_records(None),
                    Some(b) => {
                        let records: Vec<(i64, i64)> = decode(&b)
                            .map_err(|e| format!("reading {topic}/{partition}: {e}"))?
                            .iter()
                            .map(|r| (r.offset, r.timestamp))
                            .collect();
                        search.observe_records(Some((BatchSpan::from(&b), &records)));
                    }
                }
            }
        }
    }
}

/// Whether offset `o` looks like the right answer for `t`: the first data
/// record at or after it has a timestamp `>= t`, and the last record before
/// it has one `< t`. A spot check, not a proof; it catches brokers that
/// answer a fixed offset. Anything it cannot confirm counts as wrong.
#[allow(clippy::too_many_arguments)]
async fn verify(
    client: &mut SiteClient,
    topic: &str,
    partition: i32,
    t: i64,
    o: i64,
    start: i64,
    end: i64,
    deadline: Instant,
) -> Result<bool, String> {
    if o < start || o > end {
        return Ok(false);
    }
    if o < end {
        let Some(b) = data_batch_from(client, topic, partition, o, end, deadline).await? else {
            return Ok(false);
        };
        match first_record_from(std::slice::from_ref(&b), o)? {
            Some(r) if r.timestamp >= t => {}
            _ => return Ok(false),
        }
    }
    if o > start {
        let found = match fetch_from(client, topic, partition, o - 1, deadline).await? {
            Ok(found) => found,
            Err(Missing::OutOfRange) => return Ok(false),
        };
        match record_before(&found, o)? {
            Some(r) if r.timestamp < t => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::batch::{encode, BatchParams, Compression};
    use bytes::BytesMut;
    use proptest::prelude::*;

    /// One batch of an in-memory log.
    #[derive(Debug, Clone)]
    struct MemBatch {
        span: BatchSpan,
        /// `(offset, timestamp)`; compaction may have removed some.
        records: Vec<(i64, i64)>,
    }

    fn mem(base: i64, last: i64, max_ts: i64, records: &[(i64, i64)]) -> MemBatch {
        MemBatch {
            span: BatchSpan {
                base_offset: base,
                last_offset: last,
                max_timestamp: max_ts,
            },
            records: records.to_vec(),
        }
    }

    /// Drives a search over an in-memory log, as the async code does over a
    /// broker; returns the answer and how many batches were asked for.
    fn run(log: &[MemBatch], start: i64, end: i64, t: i64) -> (i64, u32) {
        let mut s = Search::new(start, end, t);
        // The log is in offset order: binary search for the first batch
        // ending at or after `at`.
        let first_from = |at: i64| {
            let i = log.partition_point(|b| b.span.last_offset < at);
            log.get(i).filter(|b| b.span.base_offset < end)
        };
        let mut asked = 0;
        loop {
            asked += 1;
            match s.step() {
                Step::Done(o) => return (o, asked - 1),
                Step::Exhausted => panic!("search exhausted on {log:?} for {t}"),
                Step::Batch { at } => s.observe_batch(first_from(at).map(|b| b.span)),
                Step::Records { at } => {
                    s.observe_records(first_from(at).map(|b| (b.span, &b.records[..])))
                }
            }
        }
    }

    /// Kafka's definition, by brute force.
    fn expected(log: &[MemBatch], end: i64, t: i64) -> i64 {
        log.iter()
            .flat_map(|b| b.records.iter())
            .find(|&&(_, ts)| ts >= t)
            .map(|&(o, _)| o)
            .unwrap_or(end)
    }

    fn sample_log() -> Vec<MemBatch> {
        vec![
            mem(0, 2, 12, &[(0, 10), (1, 11), (2, 12)]),
            // 3..=4 compacted away entirely; 6 compacted, header keeps 30.
            mem(5, 6, 30, &[(5, 20)]),
            mem(7, 9, 40, &[(7, 31), (8, 35), (9, 40)]),
            mem(10, 10, 40, &[(10, 40)]),
            mem(11, 14, 50, &[(11, 41), (12, 41), (13, 45), (14, 50)]),
        ]
    }

    #[test]
    fn search_matches_kafka_on_an_ordered_log() {
        let log = sample_log();
        for t in -5..60 {
            let (got, asked) = run(&log, 0, 15, t);
            assert_eq!(got, expected(&log, 15, t), "t = {t}");
            assert!(asked <= 9, "t = {t}: {asked} steps");
        }
        // Specific points: ties, a compacted max, the end.
        assert_eq!(run(&log, 0, 15, 11).0, 1);
        assert_eq!(run(&log, 0, 15, 21).0, 7); // batch 5..6 claims 30, holds 20
        assert_eq!(run(&log, 0, 15, 40).0, 9);
        assert_eq!(run(&log, 0, 15, 41).0, 11);
        assert_eq!(run(&log, 0, 15, 51).0, 15);
    }

    #[test]
    fn search_respects_the_log_start_and_empty_logs() {
        let log = sample_log();
        // Retention removed 0..=6.
        let tail: Vec<MemBatch> = log[2..].to_vec();
        assert_eq!(run(&tail, 7, 15, 0).0, 7);
        assert_eq!(run(&tail, 7, 15, 36).0, 9);
        assert_eq!(run(&[], 0, 0, 5).0, 0);
        assert_eq!(run(&[], 42, 42, 5).0, 42);
        // An end before the start is treated as an empty log.
        assert_eq!(run(&[], 10, 3, 5).0, 10);
    }

    #[test]
    fn search_on_disordered_timestamps_still_ends() {
        // Batch 1 has a timestamp far in the past; the search lands on some
        // batch with max >= t, never loops, never leaves the range.
        let log = vec![
            mem(0, 0, 100, &[(0, 100)]),
            mem(1, 1, 5, &[(1, 5)]),
            mem(2, 2, 200, &[(2, 200)]),
        ];
        for t in 0..250 {
            let (got, _) = run(&log, 0, 3, t);
            assert!((0..=3).contains(&got));
        }
    }

    #[test]
    fn search_makes_logarithmic_probes() {
        // 1 000 000 single-record batches, timestamp = 2 * offset.
        let log: Vec<MemBatch> = (0..1_000_000)
            .map(|o| mem(o, o, 2 * o, &[(o, 2 * o)]))
            .collect();
        for t in [0, 1, 2, 777_777, 1_999_998, 1_999_999, 5_000_000] {
            let (got, asked) = run(&log, 0, 1_000_000, t);
            assert_eq!(got, expected(&log, 1_000_000, t));
            assert!(asked <= 25, "t = {t}: {asked} steps");
        }
    }

    #[test]
    fn inconsistent_answers_cannot_loop_forever() {
        // A "broker" that always answers the same batch, whatever is asked.
        let b = BatchSpan {
            base_offset: 0,
            last_offset: 0,
            max_timestamp: 0,
        };
        let mut s = Search::new(0, 1 << 40, 10);
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 200, "no progress");
            match s.step() {
                Step::Done(_) | Step::Exhausted => break,
                Step::Batch { .. } => s.observe_batch(Some(b)),
                Step::Records { .. } => s.observe_records(Some((b, &[]))),
            }
        }
    }

    prop_compose! {
        /// An ordered log with compaction holes: non-decreasing timestamps,
        /// random batch sizes and gaps, records removed at random while
        /// batch headers keep their original extent and max timestamp.
        fn ordered_log()(
            shape in proptest::collection::vec((1i64..5, 0i64..3, 0i64..4), 0..40),
            keep_seed in any::<u64>(),
            start_ts in 0i64..10,
        ) -> (Vec<MemBatch>, i64) {
            let mut log = Vec::new();
            let mut offset = 0;
            let mut ts = start_ts;
            let mut seed = keep_seed;
            for (size, gap, step) in shape {
                offset += gap;
                let base = offset;
                let mut records = Vec::new();
                for o in base..base + size {
                    ts += step;
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    if seed >> 62 != 0 {
                        records.push((o, ts));
                    }
                }
                log.push(mem(base, base + size - 1, ts, &records));
                offset += size;
            }
            (log, offset)
        }
    }

    proptest! {
        #[test]
        fn search_equals_brute_force_on_ordered_logs(
            (log, end) in ordered_log(),
            t in -2i64..200,
        ) {
            let start = log.first().map(|b| b.span.base_offset).unwrap_or(0);
            let (got, _) = run(&log, start, end, t);
            prop_assert_eq!(got, expected(&log, end, t));
        }
    }

    fn fix_crc(batch: &mut [u8]) {
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }

    /// A batch at `base` holding records with these timestamps, and
    /// `last_offset_delta` widened by `extra` (records compacted away at
    /// the end) and the given attributes.
    fn batch(base: i64, timestamps: &[i64], extra: i32, attributes: i16) -> BytesMut {
        let records: Vec<WireRecord> = timestamps
            .iter()
            .map(|&timestamp| WireRecord {
                offset: 0,
                timestamp,
                key: None,
                value: Some(Bytes::from_static(b"v")),
                headers: vec![],
            })
            .collect();
        let params = BatchParams {
            compression: Compression::Lz4,
            producer_id: 1,
            producer_epoch: 0,
            base_sequence: 0,
        };
        let mut b = BytesMut::from(&encode(&records, &params).unwrap()[..]);
        b[..8].copy_from_slice(&base.to_be_bytes());
        let delta = i32::from_be_bytes(b[23..27].try_into().unwrap()) + extra;
        b[23..27].copy_from_slice(&delta.to_be_bytes());
        let attrs = i16::from_be_bytes(b[21..23].try_into().unwrap()) | attributes;
        b[21..23].copy_from_slice(&attrs.to_be_bytes());
        fix_crc(&mut b);
        b
    }

    fn set(parts: &[BytesMut]) -> Vec<BatchRef> {
        let mut all = BytesMut::new();
        for p in parts {
            all.extend_from_slice(p);
        }
        batches(&all.freeze()).unwrap()
    }

    #[test]
    fn picks_records_out_of_fetched_batches() {
        // 10..=12 (13, 14 compacted away), a control batch at 15, 16..=17.
        let found = set(&[
            batch(10, &[100, 101, 102], 2, 0),
            batch(15, &[0], 0, 0x30),
            batch(16, &[103, 104], 0, 0),
        ]);
        let ts = |r: Result<Option<WireRecord>, String>| r.unwrap().map(|r| r.timestamp);
        assert_eq!(ts(record_at(&found, 10)), Some(100));
        assert_eq!(ts(record_at(&found, 12)), Some(102));
        assert_eq!(ts(record_at(&found, 13)), None); // compacted
        assert_eq!(ts(record_at(&found, 15)), None); // control
        assert_eq!(ts(record_at(&found, 17)), Some(104));
        assert_eq!(ts(record_at(&found, 9)), None);
        assert_eq!(ts(record_at(&found, 18)), None);

        assert_eq!(ts(first_record_from(&found, 0)), Some(100));
        assert_eq!(ts(first_record_from(&found, 11)), Some(101));
        assert_eq!(ts(first_record_from(&found, 13)), Some(103));
        assert_eq!(ts(first_record_from(&found, 18)), None);

        assert_eq!(ts(record_before(&found, 11)), Some(100));
        assert_eq!(ts(record_before(&found, 15)), Some(102)); // 14 covered, compacted
        assert_eq!(ts(record_before(&found, 16)), None); // 15 is a marker
        assert_eq!(ts(record_before(&found, 17)), Some(103));
        assert_eq!(ts(record_before(&found, 10)), None); // 9 not fetched
                                                         // A fetch from 12 returns the batch starting at 10: 12 is picked
                                                         // out of it.
        assert_eq!(ts(record_at(&found[..1], 12)), Some(102));
    }

    #[test]
    fn spans_come_from_batch_headers() {
        let found = set(&[batch(10, &[100, 300, 200], 2, 0)]);
        assert_eq!(
            BatchSpan::from(&found[0]),
            BatchSpan {
                base_offset: 10,
                last_offset: 14,
                max_timestamp: 300
            }
        );
    }
}
