//! The names stage: what the client calls a topic (virtual) and where it
//! lives (site + physical name), for one request.
//!
//! Every handler that carries topic names resolves them here on the way in
//! and maps the answers back on the way out, so renaming happens in one place
//! per request and responses reuse the request's own mapping (no guessing
//! from the physical name, which could be ambiguous across sites). The
//! partitioned APIs run [`resolve`] as a pipeline stage; the answers take the
//! client's names back in each API's `to_client`.

use std::collections::HashMap;

use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;

use super::split::Partitioned;
use super::{Api, Exchange};
use crate::route::{Router, Who};

/// The names stage: every topic of the request under its physical name,
/// each topic's site in `x.site_of` (`None` for the topics in `skip`,
/// already answered). A rename touches the request.
pub fn resolve<A: Api>(x: &mut Exchange<A>, router: &Router, who: Who<'_>, skip: &[usize]) {
    let names = &mut x.names;
    x.site_of = x
        .body
        .topics_mut()
        .iter_mut()
        .enumerate()
        .map(|(ti, t)| {
            if skip.contains(&ti) {
                return None;
            }
            let name = A::Req::topic_name_mut(t);
            let (site, phys) = names.resolve(router, who, name);
            *name = phys;
            Some(site)
        })
        .collect();
    if x.names.renamed() {
        x.touch("names");
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub virt: TopicName,
    pub site: usize,
    pub phys: TopicName,
    /// Index of the route; `None` for the default route.
    pub route: Option<usize>,
    /// The route is switching sites (failover): answer with a retriable error.
    pub held: bool,
}

/// Entries in request order. A request may carry thousands of topics, each
/// looked up once per answer: past [`INDEX_FROM`] entries they are indexed by
/// both names. Most requests carry one or a few, where a scan is cheaper
/// than building the index.
#[derive(Debug, Default, Clone)]
pub struct Names {
    entries: Vec<Entry>,
    /// Empty until there are more than [`INDEX_FROM`] entries.
    by_virt: HashMap<String, usize>,
    /// The first entry with that physical name (the same name on two sites
    /// in one request is rare: then the others are searched).
    by_phys: HashMap<String, usize>,
}

/// Entries past which lookups use the index.
const INDEX_FROM: usize = 16;

impl Names {
    /// Site and physical name of a virtual topic (remembered for the answer).
    pub fn resolve(
        &mut self,
        router: &Router,
        who: Who<'_>,
        virt: &TopicName,
    ) -> (usize, TopicName) {
        if let Some(e) = self.by_virt_name(virt.0.as_str()) {
            return (e.site, e.phys.clone());
        }
        let r = router.resolve(who, virt.0.as_str());
        let phys = if r.physical == virt.0.as_str() {
            virt.clone()
        } else {
            TopicName(StrBytes::from_string(r.physical.into_owned()))
        };
        self.push(Entry {
            virt: virt.clone(),
            site: r.site,
            phys: phys.clone(),
            route: r.route,
            held: r.held,
        });
        (r.site, phys)
    }

    /// Puts a virtual topic on a given site under its own name (a produce
    /// plugin routed records there), whatever the routes say.
    pub fn pin(&mut self, virt: &str, site: usize) {
        let name = TopicName(StrBytes::from_string(virt.to_string()));
        if self.by_virt_name(virt).is_some() {
            self.entries.retain(|e| e.virt != name);
            self.reindex();
        }
        self.push(Entry {
            virt: name.clone(),
            site,
            phys: name,
            route: None,
            held: false,
        });
    }

    fn push(&mut self, e: Entry) {
        let i = self.entries.len();
        if self.indexed() {
            self.by_virt.insert(e.virt.0.to_string(), i);
            self.by_phys.entry(e.phys.0.to_string()).or_insert(i);
            self.entries.push(e);
        } else {
            self.entries.push(e);
            if self.entries.len() > INDEX_FROM {
                self.reindex();
            }
        }
    }

    fn indexed(&self) -> bool {
        !self.by_virt.is_empty()
    }

    fn reindex(&mut self) {
        self.by_virt.clear();
        self.by_phys.clear();
        if self.entries.len() <= INDEX_FROM {
            return;
        }
        for (i, e) in self.entries.iter().enumerate() {
            self.by_virt.insert(e.virt.0.to_string(), i);
            self.by_phys.entry(e.phys.0.to_string()).or_insert(i);
        }
    }

    fn by_virt_name(&self, virt: &str) -> Option<&Entry> {
        if self.indexed() {
            self.entries.get(*self.by_virt.get(virt)?)
        } else {
            self.entries.iter().find(|e| e.virt.0.as_str() == virt)
        }
    }

    /// The client's name for a physical topic of `site` seen in this request;
    /// names the request did not carry come back unchanged.
    pub fn virt(&self, site: usize, phys: &TopicName) -> TopicName {
        self.entry(site, phys.0.as_str())
            .map(|e| e.virt.clone())
            .unwrap_or_else(|| phys.clone())
    }

    pub fn entry(&self, site: usize, phys: &str) -> Option<&Entry> {
        if self.indexed() {
            let first = self.entries.get(*self.by_phys.get(phys)?)?;
            if first.site == site {
                return Some(first);
            }
        }
        self.entries
            .iter()
            .find(|e| e.site == site && e.phys.0.as_str() == phys)
    }

    /// Holds every topic of `route` (a fenced consumer's fetch).
    pub fn hold_route(&mut self, route: usize) -> usize {
        let mut n = 0;
        for e in self.entries.iter_mut().filter(|e| e.route == Some(route)) {
            e.held = true;
            n += 1;
        }
        n
    }

    /// True when the topic's route is switching sites right now.
    pub fn is_held(&self, site: usize, phys: &str) -> bool {
        self.entry(site, phys).is_some_and(|e| e.held)
    }

    /// True when some name differs between client and site.
    pub fn renamed(&self) -> bool {
        self.entries.iter().any(|e| e.virt != e.phys)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// The physical name of a topic in a site's Fetch answer: by its real id
/// from v13 (`view` is the site's view when the request was routed).
pub fn fetch_physical(
    view: &crate::upstream::ClusterView,
    version: i16,
    t: &kafka_protocol::messages::fetch_response::FetchableTopicResponse,
) -> Option<String> {
    if version >= 13 {
        view.names_by_id.get(&t.topic_id).cloned()
    } else {
        Some(t.topic.0.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(n: &str) -> TopicName {
        TopicName(StrBytes::from_string(n.to_string()))
    }

    fn entry(virt: &str, site: usize, phys: &str) -> Entry {
        Entry {
            virt: name(virt),
            site,
            phys: name(phys),
            route: None,
            held: false,
        }
    }

    #[test]
    fn a_few_topics_are_scanned_many_are_indexed() {
        let mut n = Names::default();
        n.push(entry("a", 0, "pa"));
        n.pin("b", 1);
        assert!(!n.indexed());
        assert_eq!(n.virt(0, &name("pa")), name("a"));
        assert_eq!(n.virt(1, &name("b")), name("b"));
        for i in 0..INDEX_FROM {
            n.push(entry(&format!("v{i}"), 0, &format!("p{i}")));
        }
        assert!(n.indexed());
        assert_eq!(
            n.virt(0, &name("pa")),
            name("a"),
            "entries from before the index are in it"
        );
        assert_eq!(n.entry(1, "b").map(|e| e.virt.clone()), Some(name("b")));
    }

    #[test]
    fn lookups_by_either_name_find_the_right_site() {
        let mut n = Names::default();
        for i in 0..1000 {
            n.push(entry(&format!("v{i}"), i % 3, &format!("p{i}")));
        }
        // The same physical name on two sites, under two client names.
        n.push(entry("west.orders", 1, "orders"));
        n.push(entry("east.orders", 2, "orders"));
        assert_eq!(n.virt(2, &name("orders")), name("east.orders"));
        assert_eq!(n.virt(1, &name("orders")), name("west.orders"));
        assert_eq!(
            n.virt(0, &name("orders")),
            name("orders"),
            "not in the request: unchanged"
        );
        assert_eq!(n.virt(1, &name("p997")), name("v997"));
        assert!(n.entry(0, "p997").is_none(), "p997 is on site 1");

        // A plugin pins a topic elsewhere: the old entry is gone, both maps agree.
        n.pin("v5", 0);
        assert_eq!(n.entry(0, "v5").map(|e| e.site), Some(0));
        assert_eq!(
            n.virt(2, &name("p5")),
            name("p5"),
            "v5 no longer lives at p5"
        );
        assert_eq!(n.virt(1, &name("p997")), name("v997"));
    }
}

#[cfg(test)]
mod stage_tests {
    use super::*;
    use crate::api::partitions::ListOffsets;
    use crate::pipeline::testing::{exchange, plane, WHO};
    use kafka_protocol::messages::list_offsets_request::ListOffsetsTopic;
    use kafka_protocol::messages::ListOffsetsRequest;

    fn request(topics: &[&str]) -> ListOffsetsRequest {
        let mut r = ListOffsetsRequest::default();
        for t in topics {
            let mut lt = ListOffsetsTopic::default();
            lt.name = TopicName(StrBytes::from_string(t.to_string()));
            r.topics.push(lt);
        }
        r
    }

    const RENAMING: &str = "  - name: west
    topics: {regex: 'orders'}
    site: b
    naming: suffix
";

    #[test]
    fn resolve_renames_to_physical_and_touches_only_then() {
        let plane = plane(RENAMING);
        let mut x = exchange::<ListOffsets>(request(&["clicks", "orders", "gone"]));
        resolve(&mut x, &plane.router, WHO, &[2]);
        let names: Vec<&str> = x.body.topics.iter().map(|t| t.name.0.as_str()).collect();
        assert_eq!(names, ["clicks", "orders-b", "gone"]);
        assert_eq!(
            x.site_of,
            [Some(0), Some(1), None],
            "skipped topics are not routed"
        );
        assert_eq!(x.touched(), ["names"]);
        assert_eq!(
            x.names
                .virt(1, &TopicName(StrBytes::from_static_str("orders-b")))
                .0
                .as_str(),
            "orders"
        );

        let mut plain = exchange::<ListOffsets>(request(&["clicks"]));
        resolve(&mut plain, &plane.router, WHO, &[]);
        assert!(
            plain.touched().is_empty(),
            "the client's own names: nothing to re-encode"
        );
    }
}
