//! Typed, bounds-checked view of a batch's descriptor tables
//! (layout: `wit/plugin.wit`, record `batch`).

use core::cell::Cell;
use core::fmt;

use crate::bindings::switchyard::plugin::types::{Batch as RawBatch, BatchMeta, Stage};

/// Words per record in `batch.records`.
pub const RECORD_WORDS: usize = 8;
/// Words per header in `batch.headers`.
pub const HEADER_WORDS: usize = 4;
/// The "null" offset.
pub const NULL: u32 = u32::MAX;

/// A malformed descriptor table. Converts into `String`, so a plugin can
/// return it with `?` from [`crate::Plugin::on_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// `records` is not a multiple of 8 words.
    RecordTableLength { words: usize },
    /// `headers` is not a multiple of 4 words.
    HeaderTableLength { words: usize },
    /// A key span points outside `data`.
    KeyOutOfBounds { record: usize },
    /// A value span points outside `data`.
    ValueOutOfBounds { record: usize },
    /// A record declares more headers than `headers` has left.
    HeadersOutOfBounds { record: usize, count: u32 },
    /// A header key is null (Kafka header keys are never null).
    HeaderKeyNull { record: usize, header: usize },
    /// A header key span points outside `data`.
    HeaderKeyOutOfBounds { record: usize, header: usize },
    /// A header value span points outside `data`.
    HeaderValueOutOfBounds { record: usize, header: usize },
    /// The records' header counts do not add up to the `headers` table.
    HeaderCountMismatch { declared: u64, present: usize },
    /// [`Batch::record`] past the end.
    RecordIndex { index: usize, len: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeError::*;
        match *self {
            RecordTableLength { words } => write!(
                f,
                "records table has {words} words, not a multiple of {RECORD_WORDS}"
            ),
            HeaderTableLength { words } => write!(
                f,
                "headers table has {words} words, not a multiple of {HEADER_WORDS}"
            ),
            KeyOutOfBounds { record } => write!(f, "record {record}: key span outside data"),
            ValueOutOfBounds { record } => write!(f, "record {record}: value span outside data"),
            HeadersOutOfBounds { record, count } => write!(
                f,
                "record {record}: {count} headers overrun the headers table"
            ),
            HeaderKeyNull { record, header } => {
                write!(f, "record {record} header {header}: null key")
            }
            HeaderKeyOutOfBounds { record, header } => {
                write!(f, "record {record} header {header}: key span outside data")
            }
            HeaderValueOutOfBounds { record, header } => write!(
                f,
                "record {record} header {header}: value span outside data"
            ),
            HeaderCountMismatch { declared, present } => write!(
                f,
                "records declare {declared} headers, headers table holds {present}"
            ),
            RecordIndex { index, len } => {
                write!(f, "record index {index} out of range ({len} records)")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for String {
    fn from(e: DecodeError) -> String {
        format!("malformed batch: {e}")
    }
}

/// `Ok(None)`: null; `Err(())`: out of bounds.
#[inline]
fn span(data: &[u8], off: u32, len: u32) -> Result<Option<&[u8]>, ()> {
    if off == NULL {
        return Ok(None);
    }
    let start = off as usize;
    let end = start.checked_add(len as usize).ok_or(())?;
    data.get(start..end).map(Some).ok_or(())
}

/// One topic-partition batch as the host passed it: the metadata plus a
/// lazily validated, typed view of its records.
#[derive(Clone)]
pub struct Batch<'a> {
    meta: &'a BatchMeta,
    records: &'a [u32],
    headers: &'a [u32],
    data: &'a [u8],
    checked: Cell<bool>,
}

impl<'a> Batch<'a> {
    /// View of a batch as received from the host (cheap: no validation yet).
    pub fn new(raw: &'a RawBatch) -> Self {
        Self::from_parts(&raw.meta, &raw.records, &raw.headers, &raw.data)
    }

    /// View of raw parts (tests, benchmarks).
    pub fn from_parts(
        meta: &'a BatchMeta,
        records: &'a [u32],
        headers: &'a [u32],
        data: &'a [u8],
    ) -> Self {
        Batch {
            meta,
            records,
            headers,
            data,
            checked: Cell::new(false),
        }
    }

    pub fn meta(&self) -> &'a BatchMeta {
        self.meta
    }
    pub fn stage(&self) -> Stage {
        self.meta.stage
    }
    /// The topic as the client names it (virtual name).
    pub fn topic(&self) -> &'a str {
        &self.meta.topic
    }
    pub fn partition(&self) -> i32 {
        self.meta.partition
    }
    pub fn origin_site(&self) -> u16 {
        self.meta.origin_site
    }
    pub fn local_site(&self) -> u16 {
        self.meta.local_site
    }
    /// The tee's target (stage `tee` only).
    pub fn target_site(&self) -> Option<u16> {
        self.meta.target_site
    }
    pub fn client_id(&self) -> Option<&'a str> {
        self.meta.client_id.as_deref()
    }
    /// Offset of the first record; -1 on produce.
    pub fn base_offset(&self) -> i64 {
        self.meta.base_offset
    }
    /// All key, value and header bytes of the batch.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Number of records (checks only the table length).
    pub fn len(&self) -> Result<usize, DecodeError> {
        if self.records.len() % RECORD_WORDS != 0 {
            return Err(DecodeError::RecordTableLength {
                words: self.records.len(),
            });
        }
        Ok(self.records.len() / RECORD_WORDS)
    }

    pub fn is_empty(&self) -> bool {
        self.records.len() < RECORD_WORDS
    }

    /// Check every span and header count once (cached); after this the
    /// record iterator cannot fail.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.checked.get() {
            return Ok(());
        }
        self.len()?;
        if self.headers.len() % HEADER_WORDS != 0 {
            return Err(DecodeError::HeaderTableLength {
                words: self.headers.len(),
            });
        }
        let mut hdrs = self.headers;
        let mut declared: u64 = 0;
        for (i, w) in self.records.chunks_exact(RECORD_WORDS).enumerate() {
            span(self.data, w[3], w[4]).map_err(|_| DecodeError::KeyOutOfBounds { record: i })?;
            span(self.data, w[5], w[6]).map_err(|_| DecodeError::ValueOutOfBounds { record: i })?;
            declared += u64::from(w[7]);
            let words = (w[7] as usize)
                .checked_mul(HEADER_WORDS)
                .filter(|&n| n <= hdrs.len())
                .ok_or(DecodeError::HeadersOutOfBounds {
                    record: i,
                    count: w[7],
                })?;
            let (mine, rest) = hdrs.split_at(words);
            hdrs = rest;
            for (j, h) in mine.chunks_exact(HEADER_WORDS).enumerate() {
                match span(self.data, h[0], h[1]) {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return Err(DecodeError::HeaderKeyNull {
                            record: i,
                            header: j,
                        })
                    }
                    Err(()) => {
                        return Err(DecodeError::HeaderKeyOutOfBounds {
                            record: i,
                            header: j,
                        })
                    }
                }
                span(self.data, h[2], h[3]).map_err(|_| DecodeError::HeaderValueOutOfBounds {
                    record: i,
                    header: j,
                })?;
            }
        }
        if !hdrs.is_empty() {
            return Err(DecodeError::HeaderCountMismatch {
                declared,
                present: self.headers.len() / HEADER_WORDS,
            });
        }
        self.checked.set(true);
        Ok(())
    }

    /// The records in batch order (validates the tables first).
    pub fn records(&self) -> Result<Records<'a>, DecodeError> {
        self.validate()?;
        Ok(Records {
            table: self.records,
            headers: self.headers,
            data: self.data,
            index: 0,
        })
    }

    /// Record `index` (e.g. `conflict.record-index`). O(index): header
    /// positions are found by walking the previous records.
    pub fn record(&self, index: usize) -> Result<Record<'a>, DecodeError> {
        let len = self.len()?;
        self.records()?
            .nth(index)
            .ok_or(DecodeError::RecordIndex { index, len })
    }
}

impl fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batch")
            .field("meta", self.meta)
            .field("records", &(self.records.len() / RECORD_WORDS))
            .field("headers", &(self.headers.len() / HEADER_WORDS))
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// One record of a batch; slices borrow the batch's `data`.
#[derive(Clone, Debug, PartialEq)]
pub struct Record<'a> {
    /// Position in the batch (what `conflict.record-index` refers to).
    pub index: usize,
    pub offset_delta: u32,
    /// CreateTime, or LogAppendTime where the broker set it.
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// `(key, value)` pairs in record order.
    pub headers: Headers<'a>,
}

impl<'a> Record<'a> {
    /// The value of the first header named `key` (`Some(None)`: present with a null value).
    pub fn header(&self, key: &[u8]) -> Option<Option<&'a [u8]>> {
        self.headers
            .clone()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// Iterator over a validated batch's records.
#[derive(Clone, Debug)]
pub struct Records<'a> {
    table: &'a [u32],
    headers: &'a [u32],
    data: &'a [u8],
    index: usize,
}

impl<'a> Iterator for Records<'a> {
    type Item = Record<'a>;

    fn next(&mut self) -> Option<Record<'a>> {
        // The tables were validated by `Batch::records`; every `?`/`ok()?`
        // below is unreachable in practice and ends the iteration instead of
        // panicking.
        let w = self.table.get(..RECORD_WORDS)?;
        let hwords = (w[7] as usize).checked_mul(HEADER_WORDS)?;
        let hdrs = self.headers.get(..hwords)?;
        let rec = Record {
            index: self.index,
            offset_delta: w[0],
            timestamp_ms: ((u64::from(w[1]) << 32) | u64::from(w[2])) as i64,
            key: span(self.data, w[3], w[4]).ok()?,
            value: span(self.data, w[5], w[6]).ok()?,
            headers: Headers {
                table: hdrs,
                data: self.data,
            },
        };
        self.table = &self.table[RECORD_WORDS..];
        self.headers = &self.headers[hwords..];
        self.index += 1;
        Some(rec)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.table.len() / RECORD_WORDS;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Records<'_> {}

/// Iterator over one record's headers: `(key, value)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Headers<'a> {
    table: &'a [u32],
    data: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        let h = self.table.get(..HEADER_WORDS)?;
        let key = span(self.data, h[0], h[1]).ok()??;
        let value = span(self.data, h[2], h[3]).ok()?;
        self.table = &self.table[HEADER_WORDS..];
        Some((key, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.table.len() / HEADER_WORDS;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Headers<'_> {}

#[cfg(test)]
mod tests;
