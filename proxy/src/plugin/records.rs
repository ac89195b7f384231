//! Records in and out of a plugin: the WIT batch (one data buffer plus the
//! flat descriptor tables of `wit/plugin.wit`) built from decoded records,
//! and a plugin's decisions applied to them.

use bytes::Bytes;

use super::{Batch, BatchMeta, CallError, Decision, Route, Stage};
use crate::codec::batch::{self, BatchRef, WireRecord};

/// Words per record in `batch.records` (layout in `wit/plugin.wit`).
pub const RECORD_WORDS: usize = 8;
/// Words per header in `batch.headers`.
pub const HEADER_WORDS: usize = 4;
/// A null key, value or header value.
pub const NULL: u32 = u32::MAX;

/// The batch's data buffer and descriptor tables, filled record by record.
struct Tables {
    data: Vec<u8>,
    records: Vec<u32>,
    headers: Vec<u32>,
    /// Some offset did not fit 32 bits (a batch over 4 GiB; frames are far
    /// smaller).
    too_big: bool,
}

impl Tables {
    fn with_capacity(bytes: usize, records: usize) -> Self {
        Tables {
            data: Vec::with_capacity(bytes),
            records: Vec::with_capacity(records * RECORD_WORDS),
            headers: Vec::new(),
            too_big: false,
        }
    }

    fn put(&mut self, v: Option<&[u8]>) -> (u32, u32) {
        let Some(v) = v else { return (NULL, 0) };
        match (u32::try_from(self.data.len()), u32::try_from(v.len())) {
            (Ok(at), Ok(len)) => {
                self.data.extend_from_slice(v);
                (at, len)
            }
            _ => {
                self.too_big = true;
                (NULL, 0)
            }
        }
    }

    fn record<'h>(
        &mut self,
        delta: i64,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: impl ExactSizeIterator<Item = (&'h [u8], Option<&'h [u8]>)>,
    ) {
        let (ko, kl) = self.put(key);
        let (vo, vl) = self.put(value);
        let ts = timestamp as u64;
        self.records.extend_from_slice(&[
            u32::try_from(delta).unwrap_or(NULL),
            (ts >> 32) as u32,
            ts as u32,
            ko,
            kl,
            vo,
            vl,
            headers.len() as u32,
        ]);
        for (k, v) in headers {
            let (hk, hkl) = self.put(Some(k));
            let (hv, hvl) = self.put(v);
            self.headers.extend_from_slice(&[hk, hkl, hv, hvl]);
        }
    }

    fn finish(self, meta: BatchMeta) -> Result<Batch, CallError> {
        if self.too_big {
            return Err(CallError::BadAnswer("batch larger than 4 GiB".into()));
        }
        Ok(Batch {
            meta,
            records: self.records,
            headers: self.headers,
            data: self.data,
        })
    }
}

/// Builds the batch a plugin sees from decoded records (offset deltas from
/// the first record).
pub fn to_batch(meta: BatchMeta, records: &[WireRecord]) -> Result<Batch, CallError> {
    let bytes: usize = records
        .iter()
        .map(|r| {
            r.key.as_ref().map_or(0, Bytes::len)
                + r.value.as_ref().map_or(0, Bytes::len)
                + r.headers
                    .iter()
                    .map(|(k, v)| k.len() + v.as_ref().map_or(0, Bytes::len))
                    .sum::<usize>()
        })
        .sum();
    let mut t = Tables::with_capacity(bytes, records.len());
    let base = records.first().map_or(0, |r| r.offset);
    for r in records {
        t.record(
            r.offset - base,
            r.timestamp,
            r.key.as_deref(),
            r.value.as_deref(),
            r.headers.iter().map(|(k, v)| (&k[..], v.as_deref())),
        );
    }
    t.finish(meta)
}

/// Builds the batch a plugin sees straight from a Kafka batch (offset
/// deltas from its base offset), without decoding it into records first
/// (no per-record allocation): the cheap path for plugins that usually keep
/// everything.
pub fn to_batch_raw(meta: BatchMeta, b: &BatchRef) -> Result<Batch, CallError> {
    let count = usize::try_from(b.records_count).unwrap_or(0);
    let mut t = Tables::with_capacity(b.bytes.len(), count);
    batch::visit(b, |_, r| {
        t.record(
            r.offset - b.base_offset,
            r.timestamp,
            r.key,
            r.value,
            r.headers.iter().copied(),
        )
    })
    .map_err(|e| CallError::BadAnswer(format!("the batch does not decode: {e}")))?;
    t.finish(meta)
}

/// Where decided records go.
#[derive(Debug, Default)]
pub struct Applied {
    /// Records staying on the batch's topic-partition, in order (values
    /// possibly replaced).
    pub kept: Vec<WireRecord>,
    /// Records for other destinations (produce stage only), grouped by
    /// `(site id, virtual topic)` in order of first appearance; `None` site:
    /// wherever the topic's route puts it.
    pub moved: Vec<(Option<u16>, String, Vec<WireRecord>)>,
    pub dropped: usize,
    /// Anything but "keep all".
    pub changed: bool,
}

/// Checks a plugin's decisions before anything is applied: renames and
/// routes are only allowed on the produce stage, and name valid topics.
pub fn check(decisions: &[Decision], meta: &BatchMeta) -> Result<(), CallError> {
    for d in decisions {
        let topic = match d {
            Decision::Rename(t) => Some(t),
            Decision::Route(r) => r.topic.as_ref(),
            Decision::Keep | Decision::Drop | Decision::ReplaceValue(_) => continue,
        };
        if meta.stage != Stage::Produce {
            let what = if matches!(d, Decision::Rename(_)) {
                "rename"
            } else {
                "route"
            };
            return Err(CallError::BadAnswer(format!(
                "{what} is only allowed on the produce stage, not {:?}",
                meta.stage
            )));
        }
        if let Some(t) = topic.filter(|t| t.is_empty() || t.len() > 249) {
            return Err(CallError::BadAnswer(format!(
                "invalid topic name {t:?} in a decision"
            )));
        }
    }
    Ok(())
}

/// Applies one decision per record (`decisions` empty: keep all), which
/// [`check`] accepted.
pub fn apply(records: Vec<WireRecord>, decisions: Vec<Decision>, meta: &BatchMeta) -> Applied {
    if decisions.is_empty() {
        return Applied {
            kept: records,
            ..Applied::default()
        };
    }
    let mut out = Applied {
        kept: Vec::with_capacity(records.len()),
        ..Applied::default()
    };
    for (mut r, d) in records.into_iter().zip(decisions) {
        let dest = match d {
            Decision::Keep => None,
            Decision::Drop => {
                out.dropped += 1;
                out.changed = true;
                continue;
            }
            Decision::ReplaceValue(v) => {
                r.value = v.map(Bytes::from);
                out.changed = true;
                None
            }
            Decision::Rename(t) => (t != meta.topic).then_some((None, t)),
            Decision::Route(Route { site, topic }) => {
                let topic = topic.unwrap_or_else(|| meta.topic.clone());
                let other_site = site.is_some_and(|s| s != meta.local_site);
                (other_site || topic != meta.topic).then_some((site, topic))
            }
        };
        match dest {
            None => out.kept.push(r),
            Some((site, topic)) => {
                out.changed = true;
                match out
                    .moved
                    .iter_mut()
                    .find(|(s, t, _)| *s == site && *t == topic)
                {
                    Some((_, _, v)) => v.push(r),
                    None => out.moved.push((site, topic, vec![r])),
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        offset: i64,
        key: Option<&str>,
        value: Option<&str>,
        headers: &[(&str, Option<&str>)],
    ) -> WireRecord {
        WireRecord {
            offset,
            timestamp: 1_700_000_000_123 + offset,
            key: key.map(|k| Bytes::copy_from_slice(k.as_bytes())),
            value: value.map(|v| Bytes::copy_from_slice(v.as_bytes())),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        Bytes::copy_from_slice(k.as_bytes()),
                        v.map(|v| Bytes::copy_from_slice(v.as_bytes())),
                    )
                })
                .collect(),
        }
    }

    fn meta(stage: Stage) -> BatchMeta {
        BatchMeta {
            stage,
            topic: "orders".into(),
            partition: 2,
            origin_site: 0,
            local_site: 0,
            target_site: None,
            client_id: None,
            base_offset: 10,
        }
    }

    #[test]
    fn tables_describe_every_field() {
        let recs = vec![
            rec(10, Some("k"), None, &[("h1", Some("x")), ("h1", None)]),
            rec(12, None, Some("vv"), &[]),
        ];
        let b = to_batch(meta(Stage::Fetch), &recs).unwrap();
        assert_eq!(b.records.len(), 16);
        assert_eq!(b.headers.len(), 8);
        let r0 = &b.records[..8];
        assert_eq!(r0[0], 0);
        let ts = (u64::from(r0[1]) << 32 | u64::from(r0[2])) as i64;
        assert_eq!(ts, 1_700_000_000_133);
        assert_eq!(&b.data[r0[3] as usize..][..r0[4] as usize], b"k");
        assert_eq!((r0[5], r0[7]), (NULL, 2));
        let h = &b.headers;
        assert_eq!(&b.data[h[0] as usize..][..h[1] as usize], b"h1");
        assert_eq!(&b.data[h[2] as usize..][..h[3] as usize], b"x");
        assert_eq!(h[6], NULL);
        let r1 = &b.records[8..];
        assert_eq!((r1[0], r1[3]), (2, NULL));
        assert_eq!(&b.data[r1[5] as usize..][..r1[6] as usize], b"vv");
    }

    #[test]
    fn decisions_split_keep_drop_replace_and_move() {
        let recs: Vec<_> = (0..5).map(|i| rec(i, Some("k"), Some("v"), &[])).collect();
        let d = vec![
            Decision::Keep,
            Decision::Drop,
            Decision::ReplaceValue(None),
            Decision::Rename("other".into()),
            Decision::Route(Route {
                site: Some(1),
                topic: None,
            }),
        ];
        check(&d, &meta(Stage::Produce)).unwrap();
        let a = apply(recs.clone(), d, &meta(Stage::Produce));
        assert!(a.changed);
        assert_eq!(a.dropped, 1);
        assert_eq!(a.kept.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 2]);
        assert_eq!(a.kept[1].value, None);
        assert_eq!(a.moved.len(), 2);
        assert_eq!((a.moved[0].0, a.moved[0].1.as_str()), (None, "other"));
        assert_eq!((a.moved[1].0, a.moved[1].1.as_str()), (Some(1), "orders"));
        // A rename to the same topic, a route to the own site: kept.
        let same = vec![
            Decision::Rename("orders".into()),
            Decision::Route(Route {
                site: Some(0),
                topic: None,
            }),
        ];
        check(&same, &meta(Stage::Produce)).unwrap();
        let a = apply(recs[..2].to_vec(), same, &meta(Stage::Produce));
        assert!(!a.changed && a.kept.len() == 2);
        // Moving records is a produce-stage decision only.
        for stage in [Stage::Tee, Stage::Fetch] {
            let e = check(&[Decision::Rename("x".into())], &meta(stage));
            assert!(matches!(e, Err(CallError::BadAnswer(_))));
        }
        let e = check(&[Decision::Rename(String::new())], &meta(Stage::Produce));
        assert!(matches!(e, Err(CallError::BadAnswer(_))));
    }
}
