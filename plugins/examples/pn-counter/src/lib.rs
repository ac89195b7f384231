//! PN-counter CRDT: records carry signed counter changes (`"+5"`, `"-2"`,
//! `"3"` as ASCII) keyed by counter; every site counts its own increments
//! (P) and decrements (N). Where the sites' records meet (a tee target such
//! as an aggregate cluster), each record is merged into the stored per-site
//! counts and its value replaced by the counter's total, `sum(P) - sum(N)`:
//! the last record of a key on the target is the current total, and the
//! order in which the sites' records arrive does not matter.
//!
//! Replays: the stored state remembers, per site, the source offset of the
//! last change applied (the tee passes source offsets), so a record copied
//! again after a restart does not count twice; it is written again with the
//! unchanged total. Use it on tee targets (on the produce path offsets are
//! not known yet and a client's retry would count twice).
//!
//! A value that is not an integer is dropped (and logged). Config: none.

use switchyard_plugin_sdk::{
    export_plugin, log, plugin_info, Batch, Conflict, LogLevel, Plugin, PluginInfo, Resolution,
    Site, Version,
};

#[derive(Default)]
pub struct PnCounter;

/// Per-site counts: (site, increments, decrements, last source offset).
#[derive(Debug, Default, PartialEq)]
pub struct Counts(pub Vec<(u16, u64, u64, i64)>);

impl Counts {
    pub fn decode(b: &[u8]) -> Counts {
        Counts(
            b.chunks_exact(26)
                .map(|c| {
                    let u = |r: std::ops::Range<usize>| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(&c[r]);
                        a
                    };
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u64::from_be_bytes(u(2..10)),
                        u64::from_be_bytes(u(10..18)),
                        i64::from_be_bytes(u(18..26)),
                    )
                })
                .collect(),
        )
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * 26);
        for (s, p, n, o) in &self.0 {
            out.extend_from_slice(&s.to_be_bytes());
            out.extend_from_slice(&p.to_be_bytes());
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(&o.to_be_bytes());
        }
        out
    }

    pub fn total(&self) -> i128 {
        self.0
            .iter()
            .map(|(_, p, n, _)| i128::from(*p) - i128::from(*n))
            .sum()
    }

    /// Applies `delta` from `site` at source `offset` (-1: unknown); false
    /// when that offset was applied already.
    pub fn apply(&mut self, site: u16, delta: i64, offset: i64) -> bool {
        let i = match self.0.iter().position(|e| e.0 == site) {
            Some(i) => i,
            None => {
                self.0.push((site, 0, 0, -1));
                self.0.len() - 1
            }
        };
        let e = &mut self.0[i];
        if offset >= 0 && offset <= e.3 {
            return false;
        }
        if delta >= 0 {
            e.1 = e.1.saturating_add(delta as u64);
        } else {
            e.2 = e.2.saturating_add(delta.unsigned_abs());
        }
        if offset >= 0 {
            e.3 = offset;
        }
        true
    }
}

pub fn parse_delta(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?.trim();
    s.strip_prefix('+').unwrap_or(s).parse().ok()
}

impl Plugin for PnCounter {
    fn init(&mut self, config: &str, _sites: &[Site]) -> Result<PluginInfo, String> {
        if !config.trim().is_empty() && config.trim() != "{}" {
            return Err(format!("pn-counter takes no config, got {config:?}"));
        }
        Ok(plugin_info(
            "pn-counter",
            env!("CARGO_PKG_VERSION"),
            &["resolve"],
        ))
    }

    fn resolve(&self, batch: &Batch, conflicts: &[Conflict]) -> Result<Vec<Resolution>, String> {
        let base = batch.base_offset();
        conflicts
            .iter()
            .map(|c| {
                let r = batch
                    .record(c.record_index as usize)
                    .map_err(|e| e.to_string())?;
                let Some(delta) = r.value.and_then(parse_delta) else {
                    log(
                        LogLevel::Warn,
                        &format!(
                            "pn-counter: record {} of {} has no integer value; dropped",
                            r.index,
                            batch.topic()
                        ),
                    );
                    return Ok(Resolution::Reject);
                };
                let mut counts = c
                    .existing
                    .as_ref()
                    .map(|e| Counts::decode(&e.state))
                    .unwrap_or_default();
                let offset = if base >= 0 {
                    base + i64::from(r.offset_delta)
                } else {
                    -1
                };
                counts.apply(c.incoming.site, delta, offset);
                let version = Version {
                    timestamp_ms: c.incoming.timestamp_ms,
                    site: c.incoming.site,
                    vclock: Vec::new(),
                    state: counts.encode(),
                };
                Ok(Resolution::Merge((
                    counts.total().to_string().into_bytes(),
                    version,
                )))
            })
            .collect()
    }
}

export_plugin!(PnCounter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_per_site_and_ignores_replays() {
        let mut c = Counts::default();
        assert!(c.apply(0, 5, 10));
        assert!(c.apply(1, -2, 3));
        assert!(c.apply(0, 1, 11));
        assert!(!c.apply(0, 5, 10), "a replayed offset does not count twice");
        assert_eq!(c.total(), 4);
        assert_eq!(Counts::decode(&c.encode()), c);
        assert_eq!(parse_delta(b"+7"), Some(7));
        assert_eq!(parse_delta(b"-3"), Some(-3));
        assert_eq!(parse_delta(b"x"), None);
    }
}
