//! Site priority: a write from a higher-priority site beats any write from a
//! lower-priority one, whatever the timestamps (e.g. headquarters over
//! stores); between writes of equal priority the later timestamp wins.
//!
//! Priorities come from the config, `{"order": ["hq", "store1", ...]}`
//! (first = highest), or, without config, from Switchyard's
//! `sites[].priority` (higher wins). A site not listed ranks lowest.

use serde::Deserialize;
use switchyard_plugin_sdk::{
    export_plugin, plugin_info, resolve_by, Batch, Conflict, Plugin, PluginInfo, Resolution, Site,
    Version,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    order: Vec<String>,
}

#[derive(Default)]
pub struct SitePriority {
    /// Rank per site id; higher wins.
    rank: Vec<(u16, u32)>,
}

impl SitePriority {
    fn rank(&self, site: u16) -> u32 {
        self.rank
            .iter()
            .find(|(s, _)| *s == site)
            .map_or(0, |(_, r)| *r)
    }

    pub fn wins(&self, incoming: &Version, existing: &Version) -> bool {
        let key = |v: &Version| (self.rank(v.site), v.timestamp_ms, std::cmp::Reverse(v.site));
        key(incoming) >= key(existing)
    }
}

impl Plugin for SitePriority {
    fn init(&mut self, config: &str, sites: &[Site]) -> Result<PluginInfo, String> {
        self.rank = if config.trim().is_empty() {
            sites.iter().map(|s| (s.id, s.priority)).collect()
        } else {
            let c: Config =
                serde_json::from_str(config).map_err(|e| format!("site-priority config: {e}"))?;
            let n = c.order.len() as u32;
            let mut rank = Vec::new();
            for (i, name) in c.order.iter().enumerate() {
                let site = sites
                    .iter()
                    .find(|s| &s.name == name)
                    .ok_or_else(|| format!("site-priority: no site named {name:?}"))?;
                rank.push((site.id, n - i as u32));
            }
            rank
        };
        Ok(plugin_info(
            "site-priority",
            env!("CARGO_PKG_VERSION"),
            &["resolve"],
        ))
    }

    fn resolve(&self, _batch: &Batch, conflicts: &[Conflict]) -> Result<Vec<Resolution>, String> {
        Ok(resolve_by(conflicts, |incoming, existing| {
            self.wins(incoming, existing)
        }))
    }
}

export_plugin!(SitePriority);

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

    fn sites() -> Vec<Site> {
        vec![
            Site {
                id: 0,
                name: "store".into(),
                priority: 0,
            },
            Site {
                id: 1,
                name: "hq".into(),
                priority: 9,
            },
        ]
    }

    #[test]
    fn higher_site_wins_whatever_the_time() {
        let mut p = SitePriority::default();
        p.init(r#"{"order":["hq","store"]}"#, &sites()).unwrap();
        assert!(p.wins(&v(1, 1), &v(100, 0)));
        assert!(!p.wins(&v(100, 0), &v(1, 1)));
        assert!(p.wins(&v(5, 0), &v(4, 0)));
        assert!(!p.wins(&v(4, 0), &v(5, 0)));
        // From sites[].priority without config.
        let mut q = SitePriority::default();
        q.init("", &sites()).unwrap();
        assert!(q.wins(&v(1, 1), &v(100, 0)));
    }

    #[test]
    fn unknown_site_in_config_is_an_error() {
        assert!(SitePriority::default()
            .init(r#"{"order":["mars"]}"#, &sites())
            .is_err());
    }
}
