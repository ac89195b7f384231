//! Topic names of one request: what the client calls a topic (virtual) and
//! where it lives (site + physical name).
//!
//! Every handler that carries topic names resolves them here on the way in
//! and maps the answers back on the way out, so renaming happens in one place
//! per request and responses reuse the request's own mapping (no guessing
//! from the physical name, which could be ambiguous across sites).

use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;

use crate::route::{Router, Who};

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

#[derive(Debug, Default, Clone)]
pub struct Names {
    entries: Vec<Entry>,
}

impl Names {
    /// Site and physical name of a virtual topic (remembered for the answer).
    pub fn resolve(
        &mut self,
        router: &Router,
        who: Who<'_>,
        virt: &TopicName,
    ) -> (usize, TopicName) {
        if let Some(e) = self.entries.iter().find(|e| &e.virt == virt) {
            return (e.site, e.phys.clone());
        }
        let r = router.resolve(who, virt.0.as_str());
        let phys = if r.physical == virt.0.as_str() {
            virt.clone()
        } else {
            TopicName(StrBytes::from_string(r.physical.into_owned()))
        };
        self.entries.push(Entry {
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
        self.entries.retain(|e| e.virt != name);
        self.entries.push(Entry {
            virt: name.clone(),
            site,
            phys: name,
            route: None,
            held: false,
        });
    }

    /// The client's name for a physical topic of `site` seen in this request;
    /// names the request did not carry come back unchanged.
    pub fn virt(&self, site: usize, phys: &TopicName) -> TopicName {
        self.entries
            .iter()
            .find(|e| e.site == site && &e.phys == phys)
            .map(|e| e.virt.clone())
            .unwrap_or_else(|| phys.clone())
    }

    pub fn entry(&self, site: usize, phys: &str) -> Option<&Entry> {
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
