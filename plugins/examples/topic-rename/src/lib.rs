//! Renames topics between the client's (virtual) names and the names on the
//! site. Config (JSON), one of:
//!
//! * `{"policy":"mm2","site":"east"}`: MirrorMaker 2's default replication
//!   policy, `orders` <-> `east.orders` (optional `"separator"`, default `.`);
//! * `{"template":"{topic}-x"}`: `orders` <-> `orders-x`; the template must
//!   contain `{topic}` exactly once.
//!
//! `topic-name` maps both directions (to-client only strips names that match
//! the pattern; others are left unchanged). On a route's produce stage
//! Switchyard asks it once per topic (the answer is cached) and moves whole
//! batches to the new name without decoding them: renaming costs no
//! per-record work.

use serde::Deserialize;
use switchyard_plugin_sdk::{export_plugin, plugin_info, Direction, Plugin, PluginInfo, Site};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    policy: Option<String>,
    site: Option<String>,
    separator: Option<String>,
    template: Option<String>,
}

/// `to-site(t) = prefix + t + suffix`.
#[derive(Default, Debug, PartialEq)]
pub struct TopicRename {
    prefix: String,
    suffix: String,
}

const PLACEHOLDER: &str = "{topic}";

impl TopicRename {
    pub fn from_config(config: &str) -> Result<Self, String> {
        let c: Config =
            serde_json::from_str(config).map_err(|e| format!("topic-rename config: {e}"))?;
        match (c.policy.as_deref(), c.template) {
            (Some("mm2"), None) => {
                let site = c
                    .site
                    .filter(|s| !s.is_empty())
                    .ok_or("topic-rename: policy mm2 needs a non-empty \"site\"")?;
                let sep = c.separator.unwrap_or_else(|| ".".into());
                Ok(TopicRename {
                    prefix: format!("{site}{sep}"),
                    suffix: String::new(),
                })
            }
            (Some(p), None) => Err(format!(
                "topic-rename: unknown policy {p:?} (known: \"mm2\")"
            )),
            (None, Some(t)) => {
                if c.site.is_some() || c.separator.is_some() {
                    return Err(
                        "topic-rename: \"site\"/\"separator\" only apply to policy mm2".into(),
                    );
                }
                let (prefix, suffix) = t
                    .split_once(PLACEHOLDER)
                    .filter(|(_, s)| !s.contains(PLACEHOLDER))
                    .ok_or("topic-rename: \"template\" must contain {topic} exactly once")?;
                if prefix.is_empty() && suffix.is_empty() {
                    return Err("topic-rename: template \"{topic}\" renames nothing".into());
                }
                Ok(TopicRename {
                    prefix: prefix.into(),
                    suffix: suffix.into(),
                })
            }
            (Some(_), Some(_)) => {
                Err("topic-rename: give either \"policy\" or \"template\", not both".into())
            }
            (None, None) => Err("topic-rename: config needs \"policy\" or \"template\"".into()),
        }
    }

    pub fn to_site(&self, name: &str) -> String {
        format!("{}{name}{}", self.prefix, self.suffix)
    }

    /// Inverse of `to_site`; `None` for names it cannot have produced.
    pub fn to_client(&self, name: &str) -> Option<String> {
        name.strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())
            .filter(|t| !t.is_empty())
            .map(str::to_string)
    }
}

impl Plugin for TopicRename {
    fn init(&mut self, config: &str, _sites: &[Site]) -> Result<PluginInfo, String> {
        *self = TopicRename::from_config(config)?;
        Ok(plugin_info(
            "topic-rename",
            env!("CARGO_PKG_VERSION"),
            &["topic-name"],
        ))
    }

    fn topic_name(&self, name: &str, direction: Direction) -> Option<String> {
        match direction {
            Direction::ToSite => Some(self.to_site(name)),
            Direction::ToClient => self.to_client(name),
        }
    }
}

export_plugin!(TopicRename);

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(c: &str) -> TopicRename {
        let mut p = TopicRename::default();
        p.init(c, &[]).unwrap();
        p
    }

    #[test]
    fn mm2() {
        let p = plugin(r#"{"policy":"mm2","site":"east"}"#);
        assert_eq!(
            p.topic_name("orders", Direction::ToSite).as_deref(),
            Some("east.orders")
        );
        assert_eq!(
            p.topic_name("east.orders", Direction::ToClient).as_deref(),
            Some("orders")
        );
        assert_eq!(
            p.topic_name("east.a.b", Direction::ToClient).as_deref(),
            Some("a.b")
        );
        assert_eq!(p.topic_name("west.orders", Direction::ToClient), None);
        assert_eq!(p.topic_name("east.", Direction::ToClient), None);
        let q = plugin(r#"{"policy":"mm2","site":"west","separator":"__"}"#);
        assert_eq!(q.to_site("t"), "west__t");
        assert_eq!(q.to_client("west__t").as_deref(), Some("t"));
    }

    #[test]
    fn template() {
        let p = plugin(r#"{"template":"{topic}-x"}"#);
        assert_eq!(
            p.topic_name("orders", Direction::ToSite).as_deref(),
            Some("orders-x")
        );
        assert_eq!(
            p.topic_name("orders-x", Direction::ToClient).as_deref(),
            Some("orders")
        );
        assert_eq!(p.topic_name("orders", Direction::ToClient), None);
        assert_eq!(p.topic_name("-x", Direction::ToClient), None);
        let q = plugin(r#"{"template":"pre.{topic}.post"}"#);
        assert_eq!(q.to_site("t"), "pre.t.post");
        assert_eq!(q.to_client("pre.t.post").as_deref(), Some("t"));
        for name in ["a", "pre.x", "a.post", "pre.post.post"] {
            if let Some(c) = q.to_client(name) {
                assert_eq!(q.to_site(&c), name);
            }
        }
    }

    #[test]
    fn bad_configs() {
        for c in [
            "",
            "{}",
            r#"{"policy":"mm2"}"#,
            r#"{"policy":"mm2","site":""}"#,
            r#"{"policy":"other","site":"a"}"#,
            r#"{"template":"x"}"#,
            r#"{"template":"{topic}"}"#,
            r#"{"template":"{topic}{topic}"}"#,
            r#"{"template":"{topic}-x","site":"a"}"#,
            r#"{"policy":"mm2","site":"a","template":"{topic}-x"}"#,
            r#"{"policy":"mm2","site":"a","extra":1}"#,
        ] {
            assert!(TopicRename::default().init(c, &[]).is_err(), "{c}");
        }
    }
}
