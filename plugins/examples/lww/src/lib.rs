//! Last write wins: of two writes to the same key, the one with the later
//! timestamp stays. Ties (same millisecond, different sites) go to the site
//! with the higher `priority` (from Switchyard's `sites[].priority`), then to
//! the lower site id, so every Switchyard instance picks the same winner.
//!
//! Runs where records meet stored versions: on a tee target (peer or
//! aggregate cluster) and, for the peer's own clients, on the produce path.
//! A write that loses is dropped before it reaches the cluster, so the last
//! record of each key on the cluster is the winner. Config: none (`""`).
//!
//! A record meeting its own version (same timestamp and site: a retry after
//! a restart) is accepted again.

use switchyard_plugin_sdk::{
    export_plugin, plugin_info, resolve_by, Batch, Conflict, Plugin, PluginInfo, Resolution, Site,
    Version,
};

#[derive(Default)]
pub struct Lww {
    priority: Vec<(u16, u32)>,
}

impl Lww {
    fn priority(&self, site: u16) -> u32 {
        self.priority
            .iter()
            .find(|(s, _)| *s == site)
            .map_or(0, |(_, p)| *p)
    }

    /// True when `incoming` should replace `existing`.
    pub fn wins(&self, incoming: &Version, existing: &Version) -> bool {
        let rank = |v: &Version| {
            (
                v.timestamp_ms,
                self.priority(v.site),
                std::cmp::Reverse(v.site),
            )
        };
        rank(incoming) >= rank(existing)
    }
}

impl Plugin for Lww {
    fn init(&mut self, config: &str, sites: &[Site]) -> Result<PluginInfo, String> {
        if !config.trim().is_empty() && config.trim() != "{}" {
            return Err(format!("lww takes no config, got {config:?}"));
        }
        self.priority = sites.iter().map(|s| (s.id, s.priority)).collect();
        Ok(plugin_info("lww", env!("CARGO_PKG_VERSION"), &["resolve"]))
    }

    fn resolve(&self, _batch: &Batch, conflicts: &[Conflict]) -> Result<Vec<Resolution>, String> {
        Ok(resolve_by(conflicts, |incoming, existing| {
            self.wins(incoming, existing)
        }))
    }
}

export_plugin!(Lww);

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ts: i64, site: u16) -> Version {
        Version {
            timestamp_ms: ts,
            site,
            vclock: vec![],
            state: vec![],
        }
    }

    fn lww() -> Lww {
        let mut p = Lww::default();
        let sites = [
            Site {
                id: 0,
                name: "east".into(),
                priority: 1,
            },
            Site {
                id: 1,
                name: "west".into(),
                priority: 5,
            },
        ];
        p.init("", &sites).unwrap();
        p
    }

    #[test]
    fn later_timestamp_wins_ties_by_priority_then_site_id() {
        let p = lww();
        assert!(p.wins(&v(10, 0), &v(9, 1)));
        assert!(!p.wins(&v(9, 1), &v(10, 0)));
        assert!(p.wins(&v(10, 1), &v(10, 0)), "west has the higher priority");
        assert!(!p.wins(&v(10, 0), &v(10, 1)));
        assert!(
            p.wins(&v(10, 0), &v(10, 0)),
            "its own version again is accepted"
        );
    }

    #[test]
    fn rejects_config() {
        assert!(Lww::default().init("{\"x\":1}", &[]).is_err());
    }
}
