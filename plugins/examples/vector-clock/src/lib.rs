//! Vector clocks: writers put a clock in the `switchyard-vclock` header
//! (`east=3,west=1`: how many updates of the key from each site the writer
//! had seen, its own included); Switchyard hands it to the plugin by site id.
//!
//! * the incoming clock dominates the stored one (≥ everywhere, > somewhere):
//!   it is newer, accepted;
//! * the stored one dominates: the incoming write is stale, rejected;
//! * equal: the same write again (a retry), accepted;
//! * concurrent (each has seen something the other has not): a conflict,
//!   resolved deterministically — the later timestamp wins, then the lower
//!   site id — and the winner is stored with the element-wise maximum of both
//!   clocks, so any later write that saw either side supersedes it.
//!
//! A record without a clock is compared by timestamp against the stored
//! version (last write wins), unless the config says `{"missing":"reject"}`.

use serde::Deserialize;
use switchyard_plugin_sdk::{
    export_plugin, plugin_info, Batch, Conflict, Plugin, PluginInfo, Resolution, Site, Version,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    missing: Option<String>,
}

#[derive(Default)]
pub struct VectorClock {
    reject_missing: bool,
}

#[derive(Debug, PartialEq)]
pub enum Order {
    Before,
    After,
    Equal,
    Concurrent,
}

/// How clock `a` relates to clock `b` (missing entries count as 0).
pub fn compare(a: &[u64], b: &[u64]) -> Order {
    let (mut less, mut more) = (false, false);
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        less |= x < y;
        more |= x > y;
    }
    match (less, more) {
        (false, false) => Order::Equal,
        (true, false) => Order::Before,
        (false, true) => Order::After,
        (true, true) => Order::Concurrent,
    }
}

fn merged(a: &[u64], b: &[u64]) -> Vec<u64> {
    (0..a.len().max(b.len()))
        .map(|i| {
            a.get(i)
                .copied()
                .unwrap_or(0)
                .max(b.get(i).copied().unwrap_or(0))
        })
        .collect()
}

impl VectorClock {
    pub fn decide(&self, existing: Option<&Version>, incoming: &Version) -> Resolution {
        let Some(e) = existing else {
            return if incoming.vclock.is_empty() && self.reject_missing {
                Resolution::Reject
            } else {
                Resolution::Accept(incoming.clone())
            };
        };
        let later = |a: &Version, b: &Version| {
            (a.timestamp_ms, std::cmp::Reverse(a.site))
                >= (b.timestamp_ms, std::cmp::Reverse(b.site))
        };
        if incoming.vclock.is_empty() {
            if self.reject_missing || !later(incoming, e) {
                return Resolution::Reject;
            }
            let mut v = incoming.clone();
            v.vclock = e.vclock.clone();
            return Resolution::Accept(v);
        }
        match compare(&incoming.vclock, &e.vclock) {
            Order::After | Order::Equal => Resolution::Accept(incoming.clone()),
            Order::Before => Resolution::Reject,
            Order::Concurrent if later(incoming, e) => {
                let mut v = incoming.clone();
                v.vclock = merged(&incoming.vclock, &e.vclock);
                Resolution::Accept(v)
            }
            Order::Concurrent => Resolution::Reject,
        }
    }
}

impl Plugin for VectorClock {
    fn init(&mut self, config: &str, _sites: &[Site]) -> Result<PluginInfo, String> {
        let c: Config = if config.trim().is_empty() {
            Config::default()
        } else {
            serde_json::from_str(config).map_err(|e| format!("vector-clock config: {e}"))?
        };
        self.reject_missing = match c.missing.as_deref() {
            None | Some("lww") => false,
            Some("reject") => true,
            Some(other) => {
                return Err(format!(
                    "vector-clock: missing must be \"lww\" or \"reject\", not {other:?}"
                ))
            }
        };
        Ok(plugin_info(
            "vector-clock",
            env!("CARGO_PKG_VERSION"),
            &["resolve"],
        ))
    }

    fn resolve(&self, _batch: &Batch, conflicts: &[Conflict]) -> Result<Vec<Resolution>, String> {
        Ok(conflicts
            .iter()
            .map(|c| self.decide(c.existing.as_ref(), &c.incoming))
            .collect())
    }
}

export_plugin!(VectorClock);

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ts: i64, site: u16, clock: &[u64]) -> Version {
        Version {
            timestamp_ms: ts,
            site,
            vclock: clock.to_vec(),
            state: vec![],
        }
    }

    #[test]
    fn dominance_and_concurrency() {
        let p = VectorClock::default();
        assert_eq!(compare(&[2, 1], &[1, 1]), Order::After);
        assert_eq!(compare(&[1], &[1, 0]), Order::Equal);
        assert_eq!(compare(&[2, 0], &[1, 1]), Order::Concurrent);
        // Newer clock wins even with an older timestamp.
        assert!(matches!(
            p.decide(Some(&v(50, 1, &[0, 1])), &v(10, 0, &[1, 1])),
            Resolution::Accept(_)
        ));
        assert!(matches!(
            p.decide(Some(&v(10, 0, &[1, 1])), &v(50, 1, &[0, 1])),
            Resolution::Reject
        ));
        // Concurrent: later timestamp wins, stored with the merged clock.
        match p.decide(Some(&v(10, 1, &[0, 1])), &v(20, 0, &[1, 0])) {
            Resolution::Accept(x) => assert_eq!(x.vclock, vec![1, 1]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            p.decide(Some(&v(20, 0, &[1, 0])), &v(10, 1, &[0, 1])),
            Resolution::Reject
        ));
        // Same timestamp: lower site id wins, the same way everywhere.
        assert!(matches!(
            p.decide(Some(&v(10, 1, &[0, 1])), &v(10, 0, &[1, 0])),
            Resolution::Accept(_)
        ));
        assert!(matches!(
            p.decide(Some(&v(10, 0, &[1, 0])), &v(10, 1, &[0, 1])),
            Resolution::Reject
        ));
    }

    #[test]
    fn missing_clocks() {
        let mut p = VectorClock::default();
        p.init(r#"{"missing":"reject"}"#, &[]).unwrap();
        assert!(matches!(p.decide(None, &v(1, 0, &[])), Resolution::Reject));
        let q = VectorClock::default();
        assert!(
            matches!(q.decide(Some(&v(1, 0, &[3])), &v(2, 1, &[])), Resolution::Accept(x) if x.vclock == vec![3])
        );
        assert!(VectorClock::default()
            .init(r#"{"missing":"x"}"#, &[])
            .is_err());
    }
}
