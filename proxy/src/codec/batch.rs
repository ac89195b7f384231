//! Kafka record batches (magic v2), read and written record by record.
//!
//! Read and written wherever Switchyard looks inside records: the tee copying
//! a source partition's log (the record set of a Fetch response) to a target
//! cluster (a Produce request), plugins, offset translation by timestamp and
//! MM2 checkpoints, failover state. Each record must arrive as it was written: key, value, timestamp and every header, including
//! repeated header keys and the difference between a null and an empty value.
//! The batch around the records does change: the tee writes as its own
//! idempotent producer, and it marks each record with [`ORIGIN_HEADER`] so that
//! a tee running the other way does not copy it back. The `kafka-protocol`
//! crate's `Record` keeps headers in a map, which collapses repeated keys, so
//! this module walks and writes the v2 layout itself and uses the crate only
//! for its compression codecs.
//!
//! The bytes read here come from a broker. Lengths and counts are checked
//! against the bytes actually present before anything is allocated, and
//! malformed input is an error naming the batch's base offset, never a panic.
//!
//! A batch, integers big-endian (Kafka's `DefaultRecordBatch`):
//!
//! ```text
//!  0 baseOffset i64              27 baseTimestamp i64     53 baseSequence i32
//!  8 batchLength i32 (from 12)   35 maxTimestamp i64      57 recordsCount i32
//! 12 partitionLeaderEpoch i32    43 producerId i64        61 records, compressed
//! 16 magic i8 = 2                51 producerEpoch i16        as one stream
//! 17 crc u32: CRC-32C of 21..end
//! 21 attributes i16: codec (bits 0-2), LogAppendTime (3), transactional (4), control (5)
//! 23 lastOffsetDelta i32
//! ```
//!
//! A record, in zigzag varints, with length -1 for null:
//!
//! ```text
//! length, attributes i8 (unused), timestampDelta (64-bit), offsetDelta,
//! key length, key, value length, value, header count,
//! then per header: key length, key, value length, value
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};

/// The header the tee adds to every record it copies; its value names where
/// the record came from. Records that carry it are never copied again.
pub const ORIGIN_HEADER: &str = "switchyard-origin";

/// baseOffset and batchLength: the part of a batch its length does not count.
const LOG_OVERHEAD: usize = 12;
const LENGTH_OFFSET: usize = 8;
const CRC_OFFSET: usize = 17;
/// The CRC covers the batch from here to its end.
const ATTRIBUTES_OFFSET: usize = 21;
const HEADER_LEN: usize = 61;
/// A length byte plus attributes, two deltas, null key, null value and a zero
/// header count, one byte each.
const MIN_RECORD_LEN: usize = 7;

const ATTR_CODEC: i16 = 0x07;
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// A batch's compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn from_attributes(attributes: i16) -> Option<Self> {
        match attributes & ATTR_CODEC {
            0 => Some(Self::None),
            1 => Some(Self::Gzip),
            2 => Some(Self::Snappy),
            3 => Some(Self::Lz4),
            4 => Some(Self::Zstd),
            _ => None,
        }
    }

    /// The codec's number in a batch's attributes.
    pub fn id(self) -> i16 {
        match self {
            Self::None => 0,
            Self::Gzip => 1,
            Self::Snappy => 2,
            Self::Lz4 => 3,
            Self::Zstd => 4,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(
        "record batch at offset {offset}: magic {magic} is not supported (only v2 batches are)"
    )]
    Magic { offset: i64, magic: i8 },
    #[error("record batch at offset {offset}: length {length} is shorter than a v2 batch header")]
    Length { offset: i64, length: i32 },
    #[error(
        "record batch at offset {offset}: CRC-32C {stored:#010x} does not match {computed:#010x}"
    )]
    Crc {
        offset: i64,
        stored: u32,
        computed: u32,
    },
    #[error("record batch at offset {offset}: {what}")]
    Corrupt { offset: i64, what: &'static str },
    #[error("record batch at offset {offset}, record {index}: {what}")]
    Record {
        offset: i64,
        index: usize,
        what: &'static str,
    },
    #[error("record batch at offset {offset}: {codec:?} decompression failed: {reason}")]
    Decompress {
        offset: i64,
        codec: Compression,
        reason: String,
    },
    #[error("record batch at offset {offset} is a control batch, which holds no data records")]
    Control { offset: i64 },
    #[error("cannot write a record batch with no records")]
    Empty,
    #[error("{count} records do not fit in one record batch")]
    TooManyRecords { count: usize },
    #[error("record from source offset {offset}: {what} too large for a record batch")]
    TooLarge { offset: i64, what: &'static str },
    #[error("an encoded batch of {size} bytes exceeds the 2 GiB batch limit")]
    BatchTooLarge { size: usize },
    #[error("{codec:?} compression failed: {reason}")]
    Compress { codec: Compression, reason: String },
}

/// One v2 batch found in a record set, not yet decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRef {
    pub base_offset: i64,
    /// `base_offset + lastOffsetDelta`. The next fetch starts after it even
    /// when compaction removed the batch's last records.
    pub last_offset: i64,
    pub partition_leader_epoch: i32,
    pub attributes: i16,
    pub compression: Compression,
    pub is_transactional: bool,
    pub is_control: bool,
    pub log_append_time: bool,
    /// What record timestamp deltas count from: the first record's timestamp,
    /// or the delete horizon once the log cleaner has set one.
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
    /// The whole batch, from its base offset on.
    pub bytes: Bytes,
}

/// A record, faithful to the wire: repeated header keys are kept in order,
/// and a null key, value or header value differs from an empty one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRecord {
    /// Absolute offset in the source partition.
    pub offset: i64,
    /// Absolute; for LogAppendTime batches the batch's max timestamp, as
    /// Kafka's consumers see it.
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<(Bytes, Option<Bytes>)>,
}

impl WireRecord {
    /// The value of the record's first [`ORIGIN_HEADER`], if it has one; a
    /// null value reads as empty, because the header's presence is what marks
    /// a teed record.
    pub fn origin(&self) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(key, _)| key.as_ref() == ORIGIN_HEADER.as_bytes())
            .map(|(_, value)| value.as_deref().unwrap_or_default())
    }
}

/// The producer fields and codec for [`encode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchParams {
    pub compression: Compression,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl BatchParams {
    /// No producer id, no compression: Switchyard's own bookkeeping records
    /// (state topics), where a retry rewriting a record is harmless.
    pub const PLAIN: BatchParams = BatchParams {
        compression: Compression::None,
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

/// Where the producer fields sit in a v2 batch header.
const LAST_OFFSET_DELTA_OFFSET: usize = 23;
const PRODUCER_ID_OFFSET: usize = 43;
const PRODUCER_EPOCH_OFFSET: usize = 51;
const BASE_SEQUENCE_OFFSET: usize = 53;
const RECORDS_COUNT_OFFSET: usize = 57;

/// The header fields of one whole v2 batch of a produce request, read
/// without checking its CRC or touching its records: the broker checks
/// those, and a request is only routed, never judged, here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerFields {
    /// Where the batch starts in the record set, and its whole length.
    pub at: usize,
    pub len: usize,
    pub transactional: bool,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
    pub last_offset_delta: i32,
}

/// The whole v2 batches of a record set, in order. The walk stops at the
/// first piece that is not one (the broker will say what is wrong with it).
pub fn producer_fields(records: &[u8]) -> Vec<ProducerFields> {
    let be_i16 = |b: &[u8], at: usize| i16::from_be_bytes([b[at], b[at + 1]]);
    let be_i32 = |b: &[u8], at: usize| i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(b) = records.get(at..).filter(|b| b.len() >= HEADER_LEN) {
        let len = usize::try_from(be_i32(b, LENGTH_OFFSET)).unwrap_or(0) + LOG_OVERHEAD;
        if len < HEADER_LEN || len > b.len() || b[16] != 2 {
            break;
        }
        let pid_bytes = &b[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8];
        let mut pid = [0u8; 8];
        pid.copy_from_slice(pid_bytes);
        out.push(ProducerFields {
            at,
            len,
            transactional: be_i16(b, ATTRIBUTES_OFFSET) & ATTR_TRANSACTIONAL != 0,
            producer_id: i64::from_be_bytes(pid),
            producer_epoch: be_i16(b, PRODUCER_EPOCH_OFFSET),
            base_sequence: be_i32(b, BASE_SEQUENCE_OFFSET),
            records_count: be_i32(b, RECORDS_COUNT_OFFSET),
            last_offset_delta: be_i32(b, LAST_OFFSET_DELTA_OFFSET),
        });
        at += len;
    }
    out
}

/// Writes producer id, epoch and base sequence into one whole v2 batch and
/// recomputes its CRC-32C (which covers everything from the attributes on).
/// A slice shorter than a batch header is left alone.
pub fn set_producer(batch: &mut [u8], producer_id: i64, epoch: i16, base_sequence: i32) {
    if batch.len() < HEADER_LEN {
        return;
    }
    batch[PRODUCER_ID_OFFSET..PRODUCER_ID_OFFSET + 8].copy_from_slice(&producer_id.to_be_bytes());
    batch[PRODUCER_EPOCH_OFFSET..PRODUCER_EPOCH_OFFSET + 2].copy_from_slice(&epoch.to_be_bytes());
    batch[BASE_SEQUENCE_OFFSET..BASE_SEQUENCE_OFFSET + 4]
        .copy_from_slice(&base_sequence.to_be_bytes());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
    batch[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
}

/// Walks a record set: batches back to back, as in a Fetch response.
///
/// A Fetch response may end partway through a batch (the size limit cuts it);
/// such a trailing piece ends the walk without error, and the next fetch
/// starts at its offset. A magic other than 2, a length shorter than a batch
/// header, a CRC mismatch or a nonsensical header field is an error.
pub fn batches(records: &Bytes) -> Result<Vec<BatchRef>, BatchError> {
    walk(records, true)
}

/// [`batches`] without checking any CRC: for a reader that takes only some
/// of the batches (a tee resuming inside a fetched record set, or stopping
/// when its write is full) and checks each one it decodes with
/// [`check_crc`]. A CRC pass costs as much as a copy, and a fetch carries
/// more batches than one round uses.
pub fn headers(records: &Bytes) -> Result<Vec<BatchRef>, BatchError> {
    walk(records, false)
}

/// Checks the CRC-32C of a batch [`headers`] found.
pub fn check_crc(b: &BatchRef) -> Result<(), BatchError> {
    let (Some(c), Some(covered)) = (
        b.bytes.get(CRC_OFFSET..ATTRIBUTES_OFFSET),
        b.bytes.get(ATTRIBUTES_OFFSET..),
    ) else {
        return Err(BatchError::Corrupt {
            offset: b.base_offset,
            what: "batch shorter than its header",
        });
    };
    crc_matches(
        b.base_offset,
        u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
        covered,
    )
}

/// The one CRC-32C comparison: `stored` against what `covered` (the batch
/// from its attributes on) gives.
fn crc_matches(offset: i64, stored: u32, covered: &[u8]) -> Result<(), BatchError> {
    let computed = crc32c::crc32c(covered);
    if stored != computed {
        return Err(BatchError::Crc {
            offset,
            stored,
            computed,
        });
    }
    Ok(())
}

fn walk(records: &Bytes, crc: bool) -> Result<Vec<BatchRef>, BatchError> {
    let mut found = Vec::new();
    let mut rest = records.clone();
    // Stopping before the magic byte is only possible in a cut-off batch.
    while let Some((offset, length, magic)) = prefix(&rest) {
        if magic != 2 {
            return Err(BatchError::Magic { offset, magic });
        }
        let batch_len = match usize::try_from(length) {
            Ok(n) if n >= HEADER_LEN - LOG_OVERHEAD => n + LOG_OVERHEAD,
            _ => return Err(BatchError::Length { offset, length }),
        };
        if batch_len > rest.len() {
            break;
        }
        found.push(parse_header(offset, rest.split_to(batch_len), crc)?);
    }
    Ok(found)
}

/// Base offset, length and magic, or `None` if the bytes end before them.
fn prefix(rest: &Bytes) -> Option<(i64, i32, i8)> {
    let mut r = Reader::new(rest);
    let offset = r.i64().ok()?;
    let length = r.i32().ok()?;
    let _partition_leader_epoch = r.i32().ok()?;
    let magic = r.i8().ok()?;
    Some((offset, length, magic))
}

/// `batch` is one whole batch, at least a header long.
fn parse_header(offset: i64, batch: Bytes, crc: bool) -> Result<BatchRef, BatchError> {
    let corrupt = |what| BatchError::Corrupt { offset, what };
    let mut r = Reader::new(&batch);
    r.take(LOG_OVERHEAD).map_err(corrupt)?;
    let partition_leader_epoch = r.i32().map_err(corrupt)?;
    r.i8().map_err(corrupt)?;
    let stored = r.u32().map_err(corrupt)?;
    if crc {
        crc_matches(offset, stored, r.rest())?;
    }
    let attributes = r.i16().map_err(corrupt)?;
    let last_offset_delta = r.i32().map_err(corrupt)?;
    let base_timestamp = r.i64().map_err(corrupt)?;
    let max_timestamp = r.i64().map_err(corrupt)?;
    let producer_id = r.i64().map_err(corrupt)?;
    let producer_epoch = r.i16().map_err(corrupt)?;
    let base_sequence = r.i32().map_err(corrupt)?;
    let records_count = r.i32().map_err(corrupt)?;

    let compression =
        Compression::from_attributes(attributes).ok_or(corrupt("unknown compression codec"))?;
    if records_count < 0 {
        return Err(corrupt("negative record count"));
    }
    let last_offset = offset
        .checked_add(i64::from(last_offset_delta))
        .ok_or(corrupt("last offset overflows"))?;
    Ok(BatchRef {
        base_offset: offset,
        last_offset,
        partition_leader_epoch,
        attributes,
        compression,
        is_transactional: attributes & ATTR_TRANSACTIONAL != 0,
        is_control: attributes & ATTR_CONTROL != 0,
        log_append_time: attributes & ATTR_LOG_APPEND_TIME != 0,
        base_timestamp,
        max_timestamp,
        producer_id,
        producer_epoch,
        base_sequence,
        records_count,
        bytes: batch,
    })
}

/// Decodes the records of a data batch, decompressing them if needed. Keys,
/// values and headers of an uncompressed batch share its bytes.
///
/// Control batches (transaction markers) hold no records to copy and are an
/// error here; the caller skips them.
pub fn decode(batch: &BatchRef) -> Result<Vec<WireRecord>, BatchError> {
    let mut records = Vec::with_capacity(usize::try_from(batch.records_count).unwrap_or(0));
    visit(batch, |data, raw| {
        let share = |s: &[u8]| data.slice_ref(s);
        records.push(WireRecord {
            offset: raw.offset,
            timestamp: raw.timestamp,
            key: raw.key.map(share),
            value: raw.value.map(share),
            headers: raw
                .headers
                .iter()
                .map(|(k, v)| (share(k), v.map(share)))
                .collect(),
        });
    })?;
    Ok(records)
}

/// A record as it lies in a batch's (decompressed) bytes.
#[derive(Debug)]
pub struct RawRecord<'a> {
    pub offset: i64,
    /// As [`WireRecord::timestamp`].
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

/// Walks the records of a data batch without copying them or allocating
/// per record (one header list is reused): `f(data, record)` for each, in
/// order, where `data` is the batch's decompressed record bytes the
/// record's slices point into, after every length was checked against the
/// bytes present. Errors as [`decode`].
pub fn visit(
    batch: &BatchRef,
    mut f: impl FnMut(&Bytes, &RawRecord<'_>),
) -> Result<(), BatchError> {
    let offset = batch.base_offset;
    let corrupt = |what| BatchError::Corrupt { offset, what };
    if batch.is_control {
        return Err(BatchError::Control { offset });
    }
    if batch.bytes.len() < HEADER_LEN {
        return Err(corrupt("shorter than a batch header"));
    }
    // An empty batch (all its records compacted or filtered away) has no
    // compressed stream at all, whatever its codec says.
    if batch.records_count == 0 && batch.bytes.len() == HEADER_LEN {
        return Ok(());
    }
    let data =
        decompress(batch.compression, batch.bytes.slice(HEADER_LEN..)).map_err(|reason| {
            BatchError::Decompress {
                offset,
                codec: batch.compression,
                reason,
            }
        })?;

    let count =
        usize::try_from(batch.records_count).map_err(|_| corrupt("negative record count"))?;
    if count > data.len() / MIN_RECORD_LEN {
        return Err(corrupt(
            "record count exceeds what the batch's bytes can hold",
        ));
    }
    let mut r = Reader::new(&data);
    let mut headers = Vec::new();
    for index in 0..count {
        let raw = read_record(&mut r, batch, headers).map_err(|what| BatchError::Record {
            offset,
            index,
            what,
        })?;
        f(&data, &raw);
        headers = raw.headers;
    }
    if r.remaining() != 0 {
        return Err(corrupt("bytes left after the last record"));
    }
    Ok(())
}

/// One record; `headers` is a list to reuse (it comes back in the record).
#[inline]
fn read_record<'a>(
    r: &mut Reader<'a>,
    batch: &BatchRef,
    mut headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
) -> Result<RawRecord<'a>, &'static str> {
    let len = usize::try_from(r.varint()?).map_err(|_| "negative record length")?;
    let mut body = Reader::new(r.take(len)?);
    let _attributes = body.i8()?;
    let timestamp_delta = body.varlong()?;
    let offset_delta = body.varint()?;
    let key = body.nullable()?;
    let value = body.nullable()?;
    let count = usize::try_from(body.varint()?).map_err(|_| "negative header count")?;
    // A header is at least two bytes: two empty lengths.
    if count > body.remaining() / 2 {
        return Err("header count exceeds what the record's bytes can hold");
    }
    headers.clear();
    for _ in 0..count {
        let key = body.nullable()?.ok_or("null header key")?;
        headers.push((key, body.nullable()?));
    }
    if body.remaining() != 0 {
        return Err("record length does not match its fields");
    }

    let offset = batch
        .base_offset
        .checked_add(i64::from(offset_delta))
        .ok_or("offset overflows")?;
    let timestamp = if batch.log_append_time {
        batch.max_timestamp
    } else {
        batch
            .base_timestamp
            .checked_add(timestamp_delta)
            .ok_or("timestamp overflows")?
    };
    Ok(RawRecord {
        offset,
        timestamp,
        key,
        value,
        headers,
    })
}

/// Encodes `records` as one v2 batch, in the form a producer sends it: base
/// offset 0, offset deltas 0..n, CreateTime with deltas from the first
/// record's timestamp, not transactional, partition leader epoch -1, and the
/// producer fields and codec of `params`.
pub fn encode(records: &[WireRecord], params: &BatchParams) -> Result<Bytes, BatchError> {
    encode_as(
        records,
        &Layout {
            base_offset: 0,
            partition_leader_epoch: -1,
            compression: params.compression,
            transactional: false,
            log_append_time: None,
            producer_id: params.producer_id,
            producer_epoch: params.producer_epoch,
            base_sequence: params.base_sequence,
            last_offset_delta: None,
        },
    )
}

/// The frame [`encode_as`] puts around records: everything of a batch
/// header but its length, CRC and record count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    pub compression: Compression,
    pub transactional: bool,
    /// `Some(broker time)` for a LogAppendTime batch (every record's
    /// timestamp); `None`: CreateTime, each record's own.
    pub log_append_time: Option<i64>,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    /// `None`: offset deltas 0..n (a producer's batch, the broker assigns
    /// offsets). `Some(last)`: each record keeps its own offset (delta from
    /// `base_offset`) and the batch keeps `lastOffsetDelta = last`, so a
    /// consumer moves past records that were taken out, as after compaction.
    pub last_offset_delta: Option<i32>,
}

impl BatchRef {
    /// The layout of this batch, keeping its offsets.
    pub fn layout(&self) -> Layout {
        Layout {
            base_offset: self.base_offset,
            partition_leader_epoch: self.partition_leader_epoch,
            compression: self.compression,
            transactional: self.is_transactional,
            log_append_time: self.log_append_time.then_some(self.max_timestamp),
            producer_id: self.producer_id,
            producer_epoch: self.producer_epoch,
            base_sequence: self.base_sequence,
            last_offset_delta: i32::try_from(self.last_offset - self.base_offset).ok(),
        }
    }
}

/// Encodes `records` as one v2 batch framed by `layout`. With offsets kept
/// (`layout.last_offset_delta`), a batch may be empty: Kafka's log cleaner
/// leaves such batches too, and consumers step over them.
pub fn encode_as(records: &[WireRecord], layout: &Layout) -> Result<Bytes, BatchError> {
    if records.is_empty() && layout.last_offset_delta.is_none() {
        return Err(BatchError::Empty);
    }
    let count = i32::try_from(records.len()).map_err(|_| BatchError::TooManyRecords {
        count: records.len(),
    })?;
    let deltas: Vec<i32> = match layout.last_offset_delta {
        None => (0..count).collect(),
        Some(_) => records
            .iter()
            .map(|r| {
                r.offset
                    .checked_sub(layout.base_offset)
                    .and_then(|d| i32::try_from(d).ok())
                    .ok_or(BatchError::TooLarge {
                        offset: r.offset,
                        what: "its distance to the batch's base offset is",
                    })
            })
            .collect::<Result<_, _>>()?,
    };
    let last_offset_delta = layout.last_offset_delta.unwrap_or(count.saturating_sub(1));
    let (base_timestamp, max_timestamp) = match (layout.log_append_time, records.first()) {
        (Some(t), _) => (t, t),
        (None, Some(first)) => (
            first.timestamp,
            records
                .iter()
                .map(|r| r.timestamp)
                .fold(first.timestamp, i64::max),
        ),
        (None, None) => (-1, -1),
    };

    let lens = records
        .iter()
        .zip(&deltas)
        .map(|(record, &delta)| {
            body_len(
                record,
                delta,
                record_timestamp_delta(record, layout, base_timestamp),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let records_len = lens.iter().fold(0usize, |sum, &len| {
        sum.saturating_add(len + varint_len(len as i64))
    });

    // An empty batch has no compressed stream: clients would try to
    // decompress zero bytes (librdkafka fails with _BAD_COMPRESSION).
    let mut attributes = if records.is_empty() {
        Compression::None.id()
    } else {
        layout.compression.id()
    };
    if layout.log_append_time.is_some() {
        attributes |= ATTR_LOG_APPEND_TIME;
    }
    if layout.transactional {
        attributes |= ATTR_TRANSACTIONAL;
    }
    let uncompressed = layout.compression == Compression::None;
    let mut out = BytesMut::with_capacity(HEADER_LEN + if uncompressed { records_len } else { 0 });
    out.put_i64(layout.base_offset);
    out.put_i32(0); // batch length, set below
    out.put_i32(layout.partition_leader_epoch);
    out.put_i8(2);
    out.put_u32(0); // CRC, set below
    out.put_i16(attributes);
    out.put_i32(last_offset_delta);
    out.put_i64(base_timestamp);
    out.put_i64(max_timestamp);
    out.put_i64(layout.producer_id);
    out.put_i16(layout.producer_epoch);
    out.put_i32(layout.base_sequence);
    out.put_i32(count);

    let put = |buf: &mut BytesMut| {
        for ((record, &delta), &len) in records.iter().zip(&deltas).zip(&lens) {
            put_record(
                buf,
                record,
                len,
                delta,
                record_timestamp_delta(record, layout, base_timestamp),
            );
        }
    };
    if uncompressed {
        put(&mut out);
    } else if !records.is_empty() {
        let mut raw = BytesMut::with_capacity(records_len);
        put(&mut raw);
        compress(layout.compression, raw, &mut out).map_err(|reason| BatchError::Compress {
            codec: layout.compression,
            reason,
        })?;
    }

    let length = i32::try_from(out.len() - LOG_OVERHEAD)
        .map_err(|_| BatchError::BatchTooLarge { size: out.len() })?;
    out[LENGTH_OFFSET..LOG_OVERHEAD].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES_OFFSET..]);
    out[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
    Ok(out.freeze())
}

/// LogAppendTime batches carry no meaningful record timestamps (the broker's
/// time applies to all): deltas are written as 0.
fn record_timestamp_delta(record: &WireRecord, layout: &Layout, base_timestamp: i64) -> i64 {
    if layout.log_append_time.is_some() {
        0
    } else {
        record.timestamp.wrapping_sub(base_timestamp)
    }
}

/// The record's length without its own length prefix, after checking that
/// every length and delta fits the 32-bit fields `put_record` writes.
fn body_len(
    record: &WireRecord,
    offset_delta: i32,
    timestamp_delta: i64,
) -> Result<usize, BatchError> {
    let too_large = |what| BatchError::TooLarge {
        offset: record.offset,
        what,
    };
    let field = |bytes: Option<&Bytes>, what| match bytes {
        None => Ok(1),
        Some(b) => match i32::try_from(b.len()) {
            Ok(n) => Ok(varint_len(i64::from(n)) + b.len()),
            Err(_) => Err(too_large(what)),
        },
    };
    let header_count =
        i32::try_from(record.headers.len()).map_err(|_| too_large("its header count is"))?;

    let mut len = (1 + varint_len(timestamp_delta) + varint_len(i64::from(offset_delta)))
        .saturating_add(field(record.key.as_ref(), "its key is")?)
        .saturating_add(field(record.value.as_ref(), "its value is")?)
        .saturating_add(varint_len(i64::from(header_count)));
    for (key, value) in &record.headers {
        len = len
            .saturating_add(field(Some(key), "a header key is")?)
            .saturating_add(field(value.as_ref(), "a header value is")?);
    }
    i32::try_from(len).map_err(|_| too_large("it is"))?;
    Ok(len)
}

/// Writes a record whose length and deltas `body_len` computed and checked.
fn put_record(
    buf: &mut BytesMut,
    record: &WireRecord,
    len: usize,
    offset_delta: i32,
    timestamp_delta: i64,
) {
    fn put_field(buf: &mut BytesMut, bytes: Option<&Bytes>) {
        match bytes {
            None => put_varint(buf, -1),
            Some(b) => {
                put_varint(buf, b.len() as i64);
                buf.put_slice(b);
            }
        }
    }
    put_varint(buf, len as i64);
    buf.put_i8(0);
    put_varint(buf, timestamp_delta);
    put_varint(buf, i64::from(offset_delta));
    put_field(buf, record.key.as_ref());
    put_field(buf, record.value.as_ref());
    put_varint(buf, record.headers.len() as i64);
    for (key, value) in &record.headers {
        put_field(buf, Some(key));
        put_field(buf, value.as_ref());
    }
}

/// Keeps the records that carry no [`ORIGIN_HEADER`] and appends
/// `ORIGIN_HEADER: origin` to each, after its own headers. Returns them, with
/// their source offsets, and how many were dropped because a tee had already
/// copied them here.
pub fn for_tee(records: Vec<WireRecord>, origin: &str) -> (Vec<WireRecord>, usize) {
    let total = records.len();
    let name = Bytes::from_static(ORIGIN_HEADER.as_bytes());
    let origin = Bytes::copy_from_slice(origin.as_bytes());
    let kept: Vec<WireRecord> = records
        .into_iter()
        .filter(|r| r.origin().is_none())
        .map(|mut r| {
            r.headers.push((name.clone(), Some(origin.clone())));
            r
        })
        .collect();
    let dropped = total - kept.len();
    (kept, dropped)
}

/// The crate's decoders stream into a growing buffer, so the output is as
/// large as the data really expands to; only Snappy's claimed sizes need a
/// check first.
fn decompress(codec: Compression, mut data: Bytes) -> Result<Bytes, String> {
    fn all(buf: &mut Bytes) -> anyhow::Result<Bytes> {
        Ok(std::mem::take(buf))
    }
    let out = match codec {
        Compression::None => return Ok(data),
        Compression::Gzip => Gzip::decompress(&mut data, all),
        Compression::Snappy => {
            check_snappy_sizes(&data).map_err(String::from)?;
            Snappy::decompress(&mut data, all)
        }
        Compression::Lz4 => Lz4::decompress(&mut data, all),
        Compression::Zstd => Zstd::decompress(&mut data, all),
    };
    out.map_err(|e| format!("{e:#}"))
}

/// Appends `raw`, compressed with `codec`, to `out`.
fn compress(codec: Compression, raw: BytesMut, out: &mut BytesMut) -> Result<(), String> {
    // The crate's compressors hand us an empty buffer to fill with what they
    // should compress; swapping ours in avoids a copy.
    fn fill(raw: BytesMut) -> impl FnOnce(&mut BytesMut) -> anyhow::Result<()> {
        move |buf| {
            *buf = raw;
            Ok(())
        }
    }
    let done = match codec {
        Compression::None => {
            out.extend_from_slice(&raw);
            Ok(())
        }
        Compression::Gzip => Gzip::compress(out, fill(raw)),
        Compression::Snappy => Snappy::compress(out, fill(raw)),
        Compression::Lz4 => Lz4::compress(out, fill(raw)),
        Compression::Zstd => Zstd::compress(out, fill(raw)),
    };
    done.map_err(|e| format!("{e:#}"))
}

/// The crate's Snappy decoder allocates (and zeroes) each block's output from
/// the length the block claims, before decoding it: a few hostile bytes could
/// claim 4 GiB. No Snappy element turns fewer than 3 input bytes into 64
/// output bytes, so a block claiming more than 22 times its size is corrupt.
fn check_snappy_sizes(data: &Bytes) -> Result<(), &'static str> {
    // snappy-java's stream header, which Kafka's Java clients write; the
    // crate (like snappy-java) reads data without it as one raw block.
    const XERIAL_HEADER: &[u8] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
    fn plausible(block: &[u8]) -> Result<(), &'static str> {
        let size = block.len() as u64;
        if size == 0 {
            return Ok(());
        }
        let claimed = Reader::new(block).uvarint(5)?;
        if claimed > size.saturating_mul(22) {
            return Err("a Snappy block claims more output than its size allows");
        }
        Ok(())
    }
    if !data.starts_with(XERIAL_HEADER) {
        return plausible(data);
    }
    let mut r = Reader::new(&data[XERIAL_HEADER.len()..]);
    while r.remaining() > 0 {
        let len = r.u32()?;
        plausible(r.take(len as usize)?)?;
    }
    Ok(())
}

/// Kafka's varints are zigzag LEB128; a 32-bit varint and a 64-bit one encode
/// a value in both ranges to the same bytes, so one writer serves both.
fn put_varint(buf: &mut BytesMut, v: i64) {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    while u >= 0x80 {
        buf.put_u8(u as u8 | 0x80);
        u >>= 7;
    }
    buf.put_u8(u as u8);
}

fn varint_len(v: i64) -> usize {
    let u = ((v << 1) ^ (v >> 63)) as u64;
    let bits = 64 - (u | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Reads wire bytes front to back; every read checks what is left first.
/// Byte fields are zero-copy slices of the input.
/// Reads fields from borrowed bytes; every read checks the length first.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline]
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    #[inline]
    fn remaining(&self) -> usize {
        self.buf.len()
    }

    #[inline]
    fn rest(&self) -> &'a [u8] {
        self.buf
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        if n > self.buf.len() {
            return Err("length runs past the end of the data");
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], &'static str> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or("data ends inside a field")?;
        self.buf = rest;
        Ok(*head)
    }

    #[inline]
    fn i8(&mut self) -> Result<i8, &'static str> {
        self.array().map(i8::from_be_bytes)
    }

    #[inline]
    fn i16(&mut self) -> Result<i16, &'static str> {
        self.array().map(i16::from_be_bytes)
    }

    #[inline]
    fn i32(&mut self) -> Result<i32, &'static str> {
        self.array().map(i32::from_be_bytes)
    }

    #[inline]
    fn u32(&mut self) -> Result<u32, &'static str> {
        self.array().map(u32::from_be_bytes)
    }

    #[inline]
    fn i64(&mut self) -> Result<i64, &'static str> {
        self.array().map(i64::from_be_bytes)
    }

    /// An unsigned LEB128 of at most `max_bytes` bytes that must fit 64 bits.
    #[inline]
    fn uvarint(&mut self, max_bytes: u32) -> Result<u64, &'static str> {
        // Most varints in a record (lengths, deltas) are one byte.
        if let Some((&b, rest)) = self.buf.split_first() {
            if b < 0x80 {
                self.buf = rest;
                return Ok(u64::from(b));
            }
        }
        let mut value = 0u64;
        for i in 0..max_bytes {
            let [byte] = self.array()?;
            let chunk = u64::from(byte & 0x7f);
            let shift = 7 * i;
            let part = chunk.checked_shl(shift).ok_or("varint overflows")?;
            if part >> shift != chunk {
                return Err("varint overflows");
            }
            value |= part;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("varint is too long")
    }

    #[inline]
    fn varint(&mut self) -> Result<i32, &'static str> {
        let u = u32::try_from(self.uvarint(5)?).map_err(|_| "varint overflows 32 bits")?;
        Ok((u >> 1) as i32 ^ -((u & 1) as i32))
    }

    #[inline]
    fn varlong(&mut self) -> Result<i64, &'static str> {
        let u = self.uvarint(10)?;
        Ok((u >> 1) as i64 ^ -((u & 1) as i64))
    }

    /// A length-prefixed byte string; length -1 is null.
    #[inline]
    fn nullable(&mut self) -> Result<Option<&'a [u8]>, &'static str> {
        match self.varint()? {
            -1 => Ok(None),
            n => {
                let n = usize::try_from(n).map_err(|_| "negative length")?;
                self.take(n).map(Some)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        self as kp, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };
    use proptest::prelude::*;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn kp_codec(c: Compression) -> kp::Compression {
        match c {
            Compression::None => kp::Compression::None,
            Compression::Gzip => kp::Compression::Gzip,
            Compression::Snappy => kp::Compression::Snappy,
            Compression::Lz4 => kp::Compression::Lz4,
            Compression::Zstd => kp::Compression::Zstd,
        }
    }

    fn b(s: &[u8]) -> Bytes {
        Bytes::copy_from_slice(s)
    }

    /// Large enough to span several LZ4 (64 KiB) and Snappy (32 KiB) blocks,
    /// varied enough not to compress to nothing.
    fn big_value() -> Bytes {
        (0..150_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 % 7)
            .collect::<Vec<u8>>()
            .into()
    }

    fn crate_record(
        offset: i64,
        timestamp: i64,
        key: Option<Bytes>,
        value: Option<Bytes>,
    ) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 7,
            producer_id: 4242,
            producer_epoch: 5,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: offset as i32 - 90,
            timestamp,
            key,
            value,
            headers: IndexMap::new(),
        }
    }

    fn crate_encode(records: &[Record], c: Compression) -> Bytes {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records,
            &RecordEncodeOptions {
                version: 2,
                compression: kp_codec(c),
            },
        )
        .expect("crate encodes");
        buf.freeze()
    }

    fn crate_headers(r: &Record) -> Vec<(Bytes, Option<Bytes>)> {
        r.headers
            .iter()
            .map(|(k, v)| (b(k.as_bytes()), v.clone()))
            .collect()
    }

    fn fix_crc(batch: &mut [u8]) {
        let crc = crc32c::crc32c(&batch[ATTRIBUTES_OFFSET..]);
        batch[CRC_OFFSET..ATTRIBUTES_OFFSET].copy_from_slice(&crc.to_be_bytes());
    }

    /// A batch around hand-made record bytes, with a valid CRC.
    fn raw_batch(
        base_offset: i64,
        attributes: i16,
        last_offset_delta: i32,
        timestamp: i64,
        count: i32,
        records: &[u8],
    ) -> Bytes {
        let mut batch = BytesMut::new();
        batch.put_i64(base_offset);
        batch.put_i32((HEADER_LEN - LOG_OVERHEAD + records.len()) as i32);
        batch.put_i32(0);
        batch.put_i8(2);
        batch.put_u32(0);
        batch.put_i16(attributes);
        batch.put_i32(last_offset_delta);
        batch.put_i64(timestamp);
        batch.put_i64(timestamp);
        batch.put_i64(-1);
        batch.put_i16(-1);
        batch.put_i32(-1);
        batch.put_i32(count);
        batch.put_slice(records);
        fix_crc(&mut batch);
        batch.freeze()
    }

    fn params(compression: Compression) -> BatchParams {
        BatchParams {
            compression,
            producer_id: 9001,
            producer_epoch: 3,
            base_sequence: 41,
        }
    }

    fn rec(timestamp: i64, headers: &[(&[u8], Option<&[u8]>)]) -> WireRecord {
        WireRecord {
            offset: 0,
            timestamp,
            key: Some(b(b"k")),
            value: Some(b(b"v")),
            headers: headers.iter().map(|(k, v)| (b(k), v.map(b))).collect(),
        }
    }

    #[test]
    fn encode_as_keeps_offsets_and_frame_when_records_are_taken_out() {
        for codec in ALL {
            for log_append in [None, Some(1_700_000_009_999)] {
                let layout = Layout {
                    base_offset: 500,
                    partition_leader_epoch: 4,
                    compression: codec,
                    transactional: true,
                    log_append_time: log_append,
                    producer_id: 77,
                    producer_epoch: 2,
                    base_sequence: 10,
                    last_offset_delta: Some(9),
                };
                let mut kept = vec![
                    rec(1_700_000_000_005, &[]),
                    rec(1_700_000_000_001, &[(b"h", None)]),
                ];
                kept[0].offset = 502;
                kept[1].offset = 507;
                let bytes = encode_as(&kept, &layout).unwrap();
                let found = batches(&bytes).unwrap(); // checks the CRC
                assert_eq!(found.len(), 1);
                let got = &found[0];
                assert_eq!((got.base_offset, got.last_offset), (500, 509));
                assert_eq!(got.layout(), layout);
                assert_eq!(got.records_count, 2);
                let back = decode(got).unwrap();
                assert_eq!(
                    back.iter().map(|r| r.offset).collect::<Vec<_>>(),
                    [502, 507]
                );
                match log_append {
                    Some(t) => assert!(back.iter().all(|r| r.timestamp == t)),
                    None => assert_eq!(back, kept),
                }
                // Every record taken out: an empty batch still spans 500..=509.
                let empty = encode_as(&[], &layout).unwrap();
                let e = &batches(&empty).unwrap()[0];
                assert_eq!(
                    (e.base_offset, e.last_offset, e.records_count),
                    (500, 509, 0)
                );
                assert!(decode(e).unwrap().is_empty());
            }
        }
        // A producer's batch cannot be empty.
        let mut producer = Layout {
            last_offset_delta: None,
            ..encode_params_layout()
        };
        producer.base_offset = 0;
        assert!(matches!(encode_as(&[], &producer), Err(BatchError::Empty)));
    }

    fn encode_params_layout() -> Layout {
        Layout {
            base_offset: 0,
            partition_leader_epoch: -1,
            compression: Compression::None,
            transactional: false,
            log_append_time: None,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            last_offset_delta: None,
        }
    }

    #[test]
    fn walks_and_decodes_crate_batches_with_every_codec() {
        const T: i64 = 1_700_000_000_000;
        for codec in ALL {
            // Offset gaps, as compaction leaves them; a timestamp earlier than the first.
            let mut first = vec![
                crate_record(100, T, Some(b(b"k0")), Some(b(b"v0"))),
                crate_record(101, T + 5, None, Some(Bytes::new())),
                crate_record(103, T - 20, Some(Bytes::new()), None),
                crate_record(104, T + 1_000_000, Some(b(b"big")), Some(big_value())),
                crate_record(107, T + 3, Some(b(b"k7")), Some(b(b"v7"))),
            ];
            first[0]
                .headers
                .insert(StrBytes::from_static_str("a"), Some(b(b"1")));
            first[0]
                .headers
                .insert(StrBytes::from_static_str("b"), None);
            first[0]
                .headers
                .insert(StrBytes::from_static_str("c"), Some(Bytes::new()));
            let mut second: Vec<Record> = (200..203)
                .map(|o| crate_record(o, T + o, Some(b(b"x")), Some(b(b"y"))))
                .collect();
            for r in &mut second {
                r.producer_id = 77;
                r.sequence = r.offset as i32;
            }
            let mut set = BytesMut::new();
            set.extend_from_slice(&crate_encode(&first, codec));
            set.extend_from_slice(&crate_encode(&second, Compression::None));
            let set = set.freeze();

            let ours = batches(&set).unwrap();
            let infos = RecordBatchDecoder::decode_batch_info(&mut set.clone()).unwrap();
            assert_eq!(ours.len(), 2, "{codec:?}");
            assert_eq!(ours[0].bytes.len() + ours[1].bytes.len(), set.len());
            for (batch, info) in ours.iter().zip(&infos) {
                assert_eq!(batch.base_offset, info.min_offset);
                assert_eq!(batch.records_count, info.record_count);
                assert_eq!(kp_codec(batch.compression), info.compression);
                assert_eq!(batch.is_transactional, info.transactional);
                assert_eq!(batch.is_control, info.control);
                assert!(!batch.log_append_time);
                assert_eq!(batch.base_timestamp, info.min_timestamp);
                assert_eq!(batch.producer_id, info.producer_id);
                assert_eq!(batch.producer_epoch, info.producer_epoch);
                assert_eq!(batch.base_sequence, info.base_sequence);
                assert_eq!(batch.partition_leader_epoch, info.partition_leader_epoch);
                assert_eq!(batch.attributes & ATTR_CODEC, batch.compression.id());
            }
            assert_eq!(ours[0].compression, codec);
            assert_eq!((ours[0].last_offset, ours[1].last_offset), (107, 202));
            assert_eq!(ours[0].max_timestamp, T + 1_000_000);
            assert_eq!(ours[0].base_sequence, 10);

            let expected = RecordBatchDecoder::decode_all(&mut set.clone()).unwrap();
            for (batch, set) in ours.iter().zip(&expected) {
                let decoded = decode(batch).unwrap();
                assert_eq!(decoded.len(), set.records.len());
                for (ours, theirs) in decoded.iter().zip(&set.records) {
                    assert_eq!(ours.offset, theirs.offset, "{codec:?}");
                    assert_eq!(ours.timestamp, theirs.timestamp);
                    assert_eq!(ours.key, theirs.key);
                    assert_eq!(ours.value, theirs.value);
                    assert_eq!(ours.headers, crate_headers(theirs));
                }
            }
        }
    }

    #[test]
    fn crate_decodes_our_batches_with_every_codec() {
        let records = vec![
            WireRecord {
                offset: 500,
                timestamp: 1_000,
                key: None,
                value: Some(big_value()),
                headers: vec![(b(b"h"), None), (b(b"i"), Some(Bytes::new()))],
            },
            WireRecord {
                offset: 501,
                timestamp: 900,
                key: Some(Bytes::new()),
                value: None,
                headers: vec![],
            },
            WireRecord {
                offset: 502,
                timestamp: 5_000,
                key: Some(b(b"key")),
                value: Some(b(b"value")),
                headers: vec![(b(b"trace"), Some(b(b"abc")))],
            },
        ];
        for codec in ALL {
            let batch = encode(&records, &params(codec)).unwrap();
            let set = RecordBatchDecoder::decode(&mut batch.clone()).unwrap();
            assert_eq!(set.compression, kp_codec(codec));
            assert_eq!(set.records.len(), records.len());
            for (i, (theirs, ours)) in set.records.iter().zip(&records).enumerate() {
                assert_eq!(theirs.offset, i as i64, "{codec:?}");
                assert_eq!(theirs.sequence, 41 + i as i32);
                assert_eq!(theirs.producer_id, 9001);
                assert_eq!(theirs.producer_epoch, 3);
                assert_eq!(theirs.partition_leader_epoch, -1);
                assert_eq!(theirs.timestamp_type, TimestampType::Creation);
                assert!(!theirs.transactional && !theirs.control);
                assert_eq!(theirs.timestamp, ours.timestamp);
                assert_eq!(theirs.key, ours.key);
                assert_eq!(theirs.value, ours.value);
                assert_eq!(crate_headers(theirs), ours.headers);
            }

            let walked = batches(&batch).unwrap();
            assert_eq!(walked.len(), 1);
            let w = &walked[0];
            assert_eq!((w.base_offset, w.last_offset, w.records_count), (0, 2, 3));
            assert_eq!((w.base_timestamp, w.max_timestamp), (1_000, 5_000));
            assert_eq!(w.compression, codec);
            assert_eq!(w.bytes, batch);
        }
    }

    #[test]
    fn duplicate_header_keys_and_null_values_survive() {
        let records = vec![
            WireRecord {
                offset: 10,
                timestamp: 42,
                key: Some(Bytes::new()),
                value: None,
                headers: vec![
                    (b(b"a"), Some(b(b"1"))),
                    (b(b"a"), Some(b(b"2"))),
                    (b(b"a"), None),
                    (b(b"b"), Some(Bytes::new())),
                    (b(b"a"), Some(b(b"2"))),
                ],
            },
            WireRecord {
                offset: 11,
                timestamp: 41,
                key: None,
                value: Some(Bytes::new()),
                headers: vec![(Bytes::new(), None), (Bytes::new(), Some(Bytes::new()))],
            },
        ];
        for codec in ALL {
            let batch = encode(&records, &params(codec)).unwrap();
            let walked = batches(&batch).unwrap();
            let decoded = decode(&walked[0]).unwrap();
            let renumbered: Vec<WireRecord> = records
                .iter()
                .zip(0..)
                .map(|(r, offset)| WireRecord {
                    offset,
                    ..r.clone()
                })
                .collect();
            assert_eq!(decoded, renumbered, "{codec:?}");
            // And again, as the tee would: decode, re-encode, decode.
            let again = encode(&decoded, &params(Compression::None)).unwrap();
            assert_eq!(decode(&batches(&again).unwrap()[0]).unwrap(), renumbered);
        }
    }

    #[test]
    fn for_tee_drops_teed_records_and_marks_the_rest() {
        let records = vec![
            WireRecord {
                offset: 1,
                ..rec(1, &[(b"x", Some(b"1"))])
            },
            WireRecord {
                offset: 2,
                ..rec(2, &[(b"x", None), (b"switchyard-origin", Some(b"eu"))])
            },
            WireRecord {
                offset: 3,
                ..rec(3, &[])
            },
            WireRecord {
                offset: 4,
                ..rec(4, &[(b"switchyard-origin", None)])
            },
        ];
        assert_eq!(records[1].origin(), Some(&b"eu"[..]));
        assert_eq!(records[3].origin(), Some(&b""[..]));
        assert_eq!(records[0].origin(), None);

        let (kept, dropped) = for_tee(records, "us-east");
        assert_eq!(dropped, 2);
        assert_eq!(kept.iter().map(|r| r.offset).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(
            kept[0].headers,
            [
                (b(b"x"), Some(b(b"1"))),
                (b(b"switchyard-origin"), Some(b(b"us-east")))
            ]
        );
        assert_eq!(kept[1].headers.len(), 1);
        assert!(kept.iter().all(|r| r.origin() == Some(&b"us-east"[..])));
        // A second pass (the record coming back) drops them all.
        assert_eq!(for_tee(kept, "eu").1, 2);
    }

    fn two_batches() -> (Bytes, usize) {
        let a = encode(&[rec(1, &[]), rec(2, &[])], &params(Compression::None)).unwrap();
        let mut b2 =
            BytesMut::from(&encode(&[rec(3, &[])], &params(Compression::Zstd)).unwrap()[..]);
        b2[..8].copy_from_slice(&2i64.to_be_bytes()); // outside the CRC
        let mut set = BytesMut::from(&a[..]);
        set.extend_from_slice(&b2);
        (set.freeze(), a.len())
    }

    #[test]
    fn a_cut_off_trailing_batch_ends_the_walk() {
        let (set, first_len) = two_batches();
        for cut in 0..=set.len() {
            let walked = batches(&set.slice(..cut)).unwrap();
            let expected = usize::from(cut >= first_len) + usize::from(cut == set.len());
            assert_eq!(walked.len(), expected, "cut at {cut}");
        }
        let walked = batches(&set).unwrap();
        assert_eq!((walked[1].base_offset, walked[1].last_offset), (2, 2));
        assert_eq!(decode(&walked[1]).unwrap()[0].offset, 2);
    }

    #[test]
    fn headers_leave_the_crc_to_the_batches_decoded() {
        let (set, _) = two_batches();
        let mut bad = BytesMut::from(&set[..]);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let bad = bad.freeze();
        // The second batch's records are damaged: the walk still finds both,
        // the first checks out, the second is refused once it is checked.
        let found = headers(&bad).unwrap();
        assert_eq!(found.len(), 2);
        check_crc(&found[0]).unwrap();
        let err = check_crc(&found[1]).unwrap_err();
        assert!(matches!(err, BatchError::Crc { offset: 2, .. }), "{err}");
        assert_eq!(headers(&set).unwrap(), batches(&set).unwrap());
    }

    #[test]
    fn corrupt_headers_are_errors_naming_the_offset() {
        let (set, first_len) = two_batches();
        let mut bad = BytesMut::from(&set[..]);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let err = batches(&bad.freeze()).unwrap_err();
        assert!(matches!(err, BatchError::Crc { offset: 2, .. }), "{err}");
        assert!(err.to_string().contains("offset 2"), "{err}");

        let mut magic1 = BytesMut::from(&set[..]);
        magic1[first_len + 16] = 1;
        let err = batches(&magic1.freeze()).unwrap_err();
        assert!(
            matches!(
                err,
                BatchError::Magic {
                    offset: 2,
                    magic: 1
                }
            ),
            "{err}"
        );

        for length in [-1, 0, 48] {
            let mut short = BytesMut::from(&set[..]);
            short[8..12].copy_from_slice(&i32::to_be_bytes(length));
            let err = batches(&short.freeze()).unwrap_err();
            assert!(matches!(err, BatchError::Length { offset: 0, .. }), "{err}");
        }

        let mut codec7 = BytesMut::from(&set[..first_len]);
        codec7[22] |= 7;
        fix_crc(&mut codec7);
        let err = batches(&codec7.freeze()).unwrap_err();
        assert!(
            matches!(err, BatchError::Corrupt { offset: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn corrupt_records_are_errors() {
        let long = WireRecord {
            value: Some(b(&[b'v'; 30])),
            ..rec(1, &[])
        };
        let batch = encode(
            &[long.clone(), long.clone(), long],
            &params(Compression::None),
        )
        .unwrap();
        let with_count = |count: i32| {
            let mut b2 = BytesMut::from(&batch[..]);
            b2[57..61].copy_from_slice(&count.to_be_bytes());
            fix_crc(&mut b2);
            batches(&b2.freeze()).unwrap().remove(0)
        };
        assert!(matches!(
            decode(&with_count(1_000_000)),
            Err(BatchError::Corrupt { .. })
        ));
        assert!(matches!(
            decode(&with_count(2)),
            Err(BatchError::Corrupt { .. })
        ));
        assert!(matches!(
            decode(&with_count(4)),
            Err(BatchError::Record { index: 3, .. })
        ));
        assert_eq!(decode(&with_count(3)).unwrap().len(), 3);

        // Length 8 for six one-byte fields, then two stray bytes inside the record.
        let stray = raw_batch(5, 0, 0, 0, 1, &[16, 0, 0, 0, 1, 1, 0, 0, 0]);
        let err = decode(&batches(&stray).unwrap()[0]).unwrap_err();
        assert!(
            matches!(
                err,
                BatchError::Record {
                    offset: 5,
                    index: 0,
                    ..
                }
            ),
            "{err}"
        );
        // A header key that is null.
        let null_key = raw_batch(5, 0, 0, 0, 1, &[16, 0, 0, 0, 1, 1, 2, 1, 1]);
        let err = decode(&batches(&null_key).unwrap()[0]).unwrap_err();
        assert!(err.to_string().contains("null header key"), "{err}");
        let fine = raw_batch(5, 0, 0, 0, 1, &[16, 0, 0, 0, 1, 1, 2, 0, 1]);
        let decoded = decode(&batches(&fine).unwrap()[0]).unwrap();
        assert_eq!(decoded[0].headers, [(Bytes::new(), None)]);

        let mut control = batches(&batch).unwrap().remove(0);
        control.is_control = true;
        assert!(matches!(
            decode(&control),
            Err(BatchError::Control { offset: 0 })
        ));
    }

    #[test]
    fn control_and_transactional_flags_are_read() {
        let mut marker = crate_record(300, 1, None, Some(b(b"\0\0\0\0\0\0")));
        marker.control = true;
        marker.transactional = true;
        let set = crate_encode(&[marker], Compression::None);
        let walked = batches(&set).unwrap();
        assert!(walked[0].is_control && walked[0].is_transactional);
        assert!(matches!(
            decode(&walked[0]),
            Err(BatchError::Control { offset: 300 })
        ));
    }

    #[test]
    fn log_append_time_batches_report_the_max_timestamp() {
        for codec in ALL {
            let records = [rec(10, &[]), rec(30, &[]), rec(20, &[])];
            let mut batch = BytesMut::from(&encode(&records, &params(codec)).unwrap()[..]);
            // What a broker does for a LogAppendTime topic.
            batch[22] |= 0x08;
            batch[35..43].copy_from_slice(&99i64.to_be_bytes());
            fix_crc(&mut batch);
            let walked = batches(&batch.freeze()).unwrap();
            assert!(walked[0].log_append_time);
            let decoded = decode(&walked[0]).unwrap();
            assert_eq!(
                decoded.iter().map(|r| r.timestamp).collect::<Vec<_>>(),
                [99, 99, 99]
            );
        }
    }

    #[test]
    fn encode_refuses_an_empty_batch() {
        assert!(matches!(
            encode(&[], &params(Compression::None)),
            Err(BatchError::Empty)
        ));
    }

    #[test]
    fn varints_round_trip_and_reject_overflow() {
        for v in [
            0,
            1,
            -1,
            63,
            -64,
            64,
            300,
            i64::from(i32::MAX),
            i64::from(i32::MIN),
            i64::MAX,
            i64::MIN,
        ] {
            let mut buf = BytesMut::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "{v}");
            assert_eq!(Reader::new(&buf).varlong(), Ok(v));
            if let Ok(v32) = i32::try_from(v) {
                assert_eq!(Reader::new(&buf).varint(), Ok(v32));
            } else {
                assert!(Reader::new(&buf).varint().is_err(), "{v}");
            }
        }
        let varint = |bytes: &[u8]| Reader::new(bytes).varint();
        let varlong = |bytes: &[u8]| Reader::new(bytes).varlong();
        assert!(varint(&[0xff, 0xff, 0xff, 0xff, 0x1f]).is_err()); // 35 bits
        assert!(varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]).is_err()); // 6 bytes
        assert!(varint(&[0x80]).is_err()); // ends mid-varint
        assert!(varlong(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x03]).is_err());
        assert!(varlong(&[0x80; 11]).is_err());
    }

    #[test]
    fn snappy_blocks_claiming_huge_output_are_refused_before_allocating() {
        let mut xerial = BytesMut::from(&b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01"[..]);
        xerial.put_u32(6);
        xerial.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]); // claims 4 GiB
        let refused = |data| {
            let err = decompress(Compression::Snappy, data).unwrap_err();
            assert!(err.contains("claims more output"), "{err}");
        };
        refused(xerial.freeze());
        refused(b(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x00, 0x00]));
        // Real data passes the check, including highly compressible data.
        for value in [Bytes::from(vec![0u8; 200_000]), big_value()] {
            let records = [WireRecord {
                value: Some(value),
                ..rec(1, &[])
            }];
            let batch = encode(&records, &params(Compression::Snappy)).unwrap();
            let decoded = decode(&batches(&batch).unwrap()[0]).unwrap();
            assert_eq!(decoded[0].value, records[0].value);
        }
    }

    fn bytes_of(max: usize) -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn tee_record() -> impl Strategy<Value = WireRecord> {
        let header = (
            prop::sample::select(vec![&b"a"[..], b"b", b"", b"switchyard-origin"]).prop_map(b),
            prop::option::of(bytes_of(8)),
        );
        (
            -1i64..1 << 45,
            prop::option::of(bytes_of(16)),
            prop::option::of(bytes_of(64)),
            proptest::collection::vec(header, 0..5),
        )
            .prop_map(|(timestamp, key, value, headers)| WireRecord {
                offset: 0,
                timestamp,
                key,
                value,
                headers,
            })
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in bytes_of(600)) {
            if let Ok(found) = batches(&data) {
                for batch in &found {
                    let _ = decode(batch);
                }
            }
        }

        /// Garbage behind a valid header and CRC reaches the record and
        /// decompression code.
        #[test]
        fn garbage_records_never_panic(
            body in bytes_of(300),
            attributes in 0i16..8,
            count in -2i32..40,
            deltas in (any::<i32>(), any::<i64>(), any::<i64>()),
        ) {
            let batch = raw_batch(deltas.2, attributes, deltas.0, deltas.1, count, &body);
            if let Ok(found) = batches(&batch) {
                for batch in &found {
                    let _ = decode(batch);
                }
            }
        }

        #[test]
        fn records_round_trip(
            records in proptest::collection::vec(tee_record(), 1..20),
            codec in prop::sample::select(ALL.to_vec()),
        ) {
            let batch = encode(&records, &params(codec)).unwrap();
            let walked = batches(&batch).unwrap();
            prop_assert_eq!(walked.len(), 1);
            let decoded = decode(&walked[0]).unwrap();
            let renumbered: Vec<WireRecord> = records
                .into_iter()
                .zip(0..)
                .map(|(r, offset)| WireRecord { offset, ..r })
                .collect();
            prop_assert_eq!(decoded, renumbered);
        }
    }
}
