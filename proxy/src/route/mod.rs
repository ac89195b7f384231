//! Which site (cluster) serves a topic, under which physical name, and where
//! its records are teed.
//!
//! Routes select topics by exact name, prefix or regex, optionally only for
//! some listeners or client ids, and send them to a site. Topics no route
//! selects go to `default_site` under their own name (the implicit default
//! route). Routes must be disjoint: a topic selected by two routes for the same
//! client would have two homes, so `build` proves pairwise disjointness
//! (`topic_match` finds an example name when two matchers overlap) and reports
//! overlaps as config errors instead of letting the first match win silently.
//!
//! Renaming: a route may store its topics under another name on its site
//! ([`Naming`]: MirrorMaker 2's `{site}.{topic}`, `{topic}-{site}`, or a
//! template). Clients only ever see the virtual name; `to_virtual` maps a
//! physical name back and hides physical names a renaming route owns.
//!
//! Consumer groups and transactional ids live on one site: the site of the
//! route whose `groups` matcher selects the id, else `default_site`. A group
//! consuming topics of another site gets a clear per-partition error (see
//! `api::groups`), because a Kafka coordinator only takes offsets for topics of
//! its own cluster.

pub mod topic_match;

use std::borrow::Cow;
use std::collections::HashSet;

pub use topic_match::{MatchError, TopicMatch};

use crate::config::{Config, ConfigError, MatchConfig, TeeMode, TeeStart};

/// Who is asking: routes may depend on the listener and the client id.
#[derive(Debug, Clone, Copy)]
pub struct Who<'a> {
    pub listener: &'a str,
    pub client_id: &'a str,
}

/// How a route or tee target names topics on its site: `prefix + topic + suffix`.
/// Templates contain `{topic}` exactly once, so the mapping is invertible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    template: String,
    prefix: String,
    suffix: String,
}

impl Naming {
    pub fn identity() -> Self {
        Naming {
            template: "{topic}".into(),
            prefix: String::new(),
            suffix: String::new(),
        }
    }

    /// Parses a policy (`identity`, `mm2`, `suffix`) or template; `site` and
    /// `target` fill the `{site}` and `{target}` placeholders.
    pub fn parse(spec: &str, site: &str, target: Option<&str>) -> Result<Self, String> {
        let template = match spec {
            "identity" => "{topic}",
            "mm2" => "{site}.{topic}",
            "suffix" => "{topic}-{site}",
            t => t,
        };
        let (head, tail) = template.split_once("{topic}").ok_or_else(|| {
            format!("`{spec}` is not identity, mm2, suffix or a template containing {{topic}}")
        })?;
        if tail.contains("{topic}") {
            return Err(format!("`{spec}` contains {{topic}} more than once"));
        }
        let fill = |s: &str| -> Result<String, String> {
            let mut out = s.replace("{site}", site);
            if let Some(t) = target {
                out = out.replace("{target}", t);
            }
            if out.contains('{') || out.contains('}') {
                return Err(format!(
                    "`{spec}` has an unknown placeholder (known: {{topic}}, {{site}}{})",
                    if target.is_some() { ", {target}" } else { "" }
                ));
            }
            if let Some(c) = out
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            {
                return Err(format!(
                    "`{spec}` would put `{c}` in topic names (only a-z A-Z 0-9 . _ - are allowed)"
                ));
            }
            Ok(out)
        };
        Ok(Naming {
            template: template.to_string(),
            prefix: fill(head)?,
            suffix: fill(tail)?,
        })
    }

    pub fn is_identity(&self) -> bool {
        self.prefix.is_empty() && self.suffix.is_empty()
    }

    pub fn template(&self) -> &str {
        &self.template
    }

    /// The physical name of a virtual topic.
    pub fn physical<'a>(&self, topic: &'a str) -> Cow<'a, str> {
        if self.is_identity() {
            Cow::Borrowed(topic)
        } else {
            Cow::Owned(format!("{}{}{}", self.prefix, topic, self.suffix))
        }
    }

    /// The virtual name a physical name stands for, if it has this shape.
    /// The physical names of the topics `m` selects.
    pub fn image(&self, m: &TopicMatch) -> Result<TopicMatch, MatchError> {
        m.renamed(&self.prefix, &self.suffix)
    }

    pub fn virtual_of<'a>(&self, physical: &'a str) -> Option<&'a str> {
        let inner = physical
            .strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())?;
        (!inner.is_empty()).then_some(inner)
    }
}

#[derive(Debug, Clone)]
pub struct TeeTarget {
    pub site: usize,
    pub mode: TeeMode,
    pub naming: Naming,
    pub start: TeeStart,
    /// The tee runs plugins (`routes[].tee[].plugins`): it may share its
    /// target topic with another site's tee, the plugins merging both.
    pub merges: bool,
}

/// Active-passive failover of a route: which tee target takes over.
#[derive(Debug, Clone)]
pub struct RouteFailover {
    pub standby: usize,
    /// Physical names on the standby (the tee target's naming).
    pub standby_naming: Naming,
    pub automatic: bool,
    /// MirrorMaker 2 alias of the primary (checkpoint topic name).
    pub mm2_alias: String,
}

/// Which site of a failover route serves it right now. `Held*` is a switch
/// in progress: neither site takes the route's reads or writes (clients get
/// retriable errors) until in-flight writes drained and the tee caught up,
/// which is what keeps writes from ever landing on both sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Primary,
    Standby,
    /// Switching primary → standby.
    FailingOver,
    /// Switching standby → primary.
    FailingBack,
}

impl Side {
    fn code(self) -> u8 {
        match self {
            Side::Primary => 0,
            Side::Standby => 1,
            Side::FailingOver => 2,
            Side::FailingBack => 3,
        }
    }

    fn from_code(c: u8) -> Side {
        match c {
            1 => Side::Standby,
            2 => Side::FailingOver,
            3 => Side::FailingBack,
            _ => Side::Primary,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Side::Primary => "primary",
            Side::Standby => "standby",
            Side::FailingOver => "failing_over",
            Side::FailingBack => "failing_back",
        }
    }

    /// Traffic is held while a switch is in progress.
    pub fn held(self) -> bool {
        matches!(self, Side::FailingOver | Side::FailingBack)
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub topics: TopicMatch,
    pub listeners: Option<Vec<String>>,
    pub client_ids: Option<TopicMatch>,
    pub site: usize,
    pub naming: Naming,
    pub groups: Option<TopicMatch>,
    pub tee: Vec<TeeTarget>,
    pub failover: Option<RouteFailover>,
}

impl Route {
    fn applies_to(&self, who: Who<'_>) -> bool {
        self.listeners
            .as_ref()
            .is_none_or(|ls| ls.iter().any(|l| l == who.listener))
            && self
                .client_ids
                .as_ref()
                .is_none_or(|m| m.matches(who.client_id))
    }

    pub fn has_sync_tee(&self) -> bool {
        self.tee.iter().any(|t| t.mode == TeeMode::Sync)
    }
}

/// Where a topic lives for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// The route; `None` for the default route.
    pub route: Option<usize>,
    pub site: usize,
    pub physical: Cow<'a, str>,
    /// A failover switch is in progress: answer with a retriable error.
    pub held: bool,
}

#[derive(Debug)]
pub struct Router {
    routes: Vec<Route>,
    default_site: usize,
    sites: Vec<String>,
    /// Per route, its [`Side`] (only failover routes ever leave `Primary`).
    /// Atomics so the hot path reads it without a lock.
    sides: Vec<std::sync::atomic::AtomicU8>,
    /// Bumped on every side change, for requests waiting out a switch
    /// ([`Router::settled`]).
    changes: tokio::sync::watch::Sender<u64>,
}

impl Router {
    /// A router with no routes: everything on `default_site`.
    pub fn single(sites: Vec<String>, default_site: usize) -> Self {
        Router {
            routes: Vec::new(),
            default_site,
            sites,
            sides: Vec::new(),
            changes: tokio::sync::watch::Sender::new(0),
        }
    }

    /// The side serving a route now.
    pub fn side(&self, route: usize) -> Side {
        self.sides
            .get(route)
            .map(|a| Side::from_code(a.load(std::sync::atomic::Ordering::Acquire)))
            .unwrap_or(Side::Primary)
    }

    /// Sets the side serving a failover route (the failover state machine's
    /// one lever on routing).
    pub fn set_side(&self, route: usize, side: Side) {
        if let Some(a) = self.sides.get(route) {
            a.store(side.code(), std::sync::atomic::Ordering::Release);
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Waits, at most `limit`, until none of `routes` is switching sites;
    /// whether they all settled. A request that needs to know where a
    /// switching route lives (Metadata, a coordinator lookup) waits the
    /// switch out instead of asking the old site (possibly dead) or getting
    /// an error that some clients take for a deleted topic and rebalance on.
    pub async fn settled(&self, routes: &[usize], limit: std::time::Duration) -> bool {
        let held = || routes.iter().any(|&r| self.side(r).held());
        if !held() {
            return true;
        }
        let mut changes = self.changes.subscribe();
        tokio::time::timeout(limit, changes.wait_for(|_| !held()))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The site and naming serving a route now: the standby's once failed
    /// over (and while failing back, until the switch completes).
    pub fn serving(&self, route: usize) -> Option<(usize, &Naming, bool)> {
        let r = self.routes.get(route)?;
        let side = self.side(route);
        match (&r.failover, side) {
            (Some(f), Side::Standby | Side::FailingBack) => {
                Some((f.standby, &f.standby_naming, side.held()))
            }
            _ => Some((r.site, &r.naming, side.held())),
        }
    }

    /// Every (site, naming) a route's topics may live under.
    fn homes(r: &Route) -> impl Iterator<Item = (usize, &Naming)> {
        std::iter::once((r.site, &r.naming))
            .chain(r.failover.as_ref().map(|f| (f.standby, &f.standby_naming)))
    }

    /// The site that issues idempotent producer ids and serves unrouted
    /// topics' coordinators: `default_site`, or its standby while a route
    /// on the default site is failed over.
    pub fn home_site(&self) -> usize {
        for (i, r) in self.routes.iter().enumerate() {
            if r.site == self.default_site && r.failover.is_some() {
                if let Some((s, _, _)) = self.serving(i) {
                    return s;
                }
            }
        }
        self.default_site
    }

    /// Whether a route serving from `site` is switching sites right now.
    pub fn site_held(&self, site: usize) -> bool {
        (0..self.routes.len()).any(|i| matches!(self.serving(i), Some((s, _, true)) if s == site))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn default_site(&self) -> usize {
        self.default_site
    }

    pub fn site_name(&self, site: usize) -> &str {
        self.sites.get(site).map(String::as_str).unwrap_or("?")
    }

    /// True when no route renames anything: names pass through untouched.
    pub fn is_identity(&self) -> bool {
        self.routes.iter().all(|r| r.naming.is_identity())
    }

    pub fn resolve<'a>(&self, who: Who<'_>, topic: &'a str) -> Resolved<'a> {
        for (i, r) in self.routes.iter().enumerate() {
            if r.topics.matches(topic) && r.applies_to(who) {
                let (site, naming, held) = self.serving(i).unwrap_or((r.site, &r.naming, false));
                return Resolved {
                    route: Some(i),
                    site,
                    physical: naming.physical(topic),
                    held,
                };
            }
        }
        Resolved {
            route: None,
            site: self.default_site,
            physical: Cow::Borrowed(topic),
            held: false,
        }
    }

    /// The route a client's topic belongs to (`None`: the default route).
    pub fn route_of(&self, who: Who<'_>, topic: &str) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.topics.matches(topic) && r.applies_to(who))
    }

    /// The name a client sees for a physical topic of `site`, or `None` when
    /// the topic is not visible to this client (served from another site, or
    /// its physical name belongs to a renaming route).
    pub fn to_virtual(&self, who: Who<'_>, site: usize, physical: &str) -> Option<String> {
        for (i, r) in self.routes.iter().enumerate() {
            let Some((serving, naming, _)) = self.serving(i) else {
                continue;
            };
            if serving != site || naming.is_identity() {
                continue;
            }
            if let Some(v) = naming.virtual_of(physical) {
                if r.topics.matches(v) {
                    let back = self.resolve(who, v);
                    return (back.site == site && back.physical == physical).then(|| v.to_string());
                }
            }
        }
        let back = self.resolve(who, physical);
        (back.site == site && back.physical == physical).then(|| physical.to_string())
    }

    /// Every virtual name a physical topic of `site` may have for some client
    /// (for the topic-id map, which is shared by all clients).
    pub fn virtual_candidates(&self, site: usize, physical: &str) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.routes {
            for (s, naming) in Self::homes(r) {
                if s == site {
                    if let Some(v) = naming.virtual_of(physical) {
                        if r.topics.matches(v) && !out.iter().any(|o| o == v) {
                            out.push(v.to_string());
                        }
                    }
                }
            }
        }
        if site == self.default_site || out.is_empty() {
            out.push(physical.to_string());
        }
        out
    }

    /// The name `who` knows a physical topic of `site` by: the route
    /// candidate that resolves back to it, else the physical name.
    pub fn client_name(&self, who: Who<'_>, site: usize, physical: &str) -> String {
        self.virtual_candidates(site, physical)
            .into_iter()
            .find(|v| {
                let r = self.resolve(who, v);
                r.site == site && r.physical == physical
            })
            .unwrap_or_else(|| physical.to_string())
    }

    /// The site coordinating a consumer group or transactional id.
    pub fn coordinator_site(&self, who: Who<'_>, key: &str) -> usize {
        self.group_route(who, key)
            .and_then(|i| self.serving(i))
            .map(|(s, _, _)| s)
            .unwrap_or(self.default_site)
    }

    /// The route whose `groups` selects a group or transactional id.
    pub fn group_route(&self, who: Who<'_>, key: &str) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.groups.as_ref().is_some_and(|g| g.matches(key)) && r.applies_to(who))
    }

    /// The problems with a config's routes, each with its key (run with the
    /// config's own checks: `config::load`).
    pub fn check(config: &Config, default_site: usize) -> Vec<ConfigError> {
        Router::build(config, default_site)
            .err()
            .unwrap_or_default()
    }

    /// Builds and checks the routes of a config. `default_site` indexes `config.sites`.
    pub fn build(config: &Config, default_site: usize) -> Result<Router, Vec<ConfigError>> {
        let mut errs = Vec::new();
        let mut err = |key: String, reason: String| errs.push(ConfigError { key, reason });
        let sites: Vec<String> = config.sites.iter().map(|s| s.name.clone()).collect();
        let site_index = |name: &str| sites.iter().position(|s| s == name);
        let listener_names: HashSet<&str> = std::iter::once(config.listen.name.as_str())
            .chain(config.listeners.iter().map(|l| l.name.as_str()))
            .collect();

        let mut routes: Vec<Route> = Vec::new();
        let mut names = HashSet::new();
        for (i, rc) in config.routes.iter().enumerate() {
            let key = |k: &str| format!("routes[{i}].{k}");
            if rc.name.trim().is_empty() {
                err(key("name"), "must not be empty".into());
            } else if !names.insert(rc.name.as_str()) {
                err(key("name"), format!("duplicate route name `{}`", rc.name));
            }
            let topics = match matcher(&rc.topics, false) {
                Ok(m) => Some(m),
                Err(e) => {
                    err(key("topics"), e);
                    None
                }
            };
            let client_ids = match rc.client_ids.as_ref().map(|m| matcher(m, true)) {
                None => Some(None),
                Some(Ok(m)) => Some(Some(m)),
                Some(Err(e)) => {
                    err(key("client_ids"), e);
                    None
                }
            };
            let groups = match rc.groups.as_ref().map(|m| matcher(m, true)) {
                None => Some(None),
                Some(Ok(m)) => Some(Some(m)),
                Some(Err(e)) => {
                    err(key("groups"), e);
                    None
                }
            };
            if let Some(ls) = &rc.listeners {
                if ls.is_empty() {
                    err(
                        key("listeners"),
                        "an empty list matches no client: the route would be unreachable; \
                         leave the key out to match every listener"
                            .into(),
                    );
                }
                for (j, l) in ls.iter().enumerate() {
                    if !listener_names.contains(l.as_str()) {
                        err(
                            format!("routes[{i}].listeners[{j}]"),
                            format!(
                                "no listener named `{l}` (listeners: {})",
                                sorted(&listener_names)
                            ),
                        );
                    }
                }
            }
            let site = site_index(&rc.site);
            if site.is_none() {
                err(
                    key("site"),
                    format!("no site named `{}` in `sites`", rc.site),
                );
            }
            let naming =
                match Naming::parse(rc.naming.as_deref().unwrap_or("identity"), &rc.site, None) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        err(key("naming"), e);
                        None
                    }
                };
            let mut tee = Vec::new();
            let mut tee_sites = HashSet::new();
            for (j, t) in rc.tee.iter().enumerate() {
                let tkey = |k: &str| format!("routes[{i}].tee[{j}].{k}");
                let Some(ts) = site_index(&t.site) else {
                    err(
                        tkey("site"),
                        format!("no site named `{}` in `sites`", t.site),
                    );
                    continue;
                };
                if Some(ts) == site {
                    err(
                        tkey("site"),
                        format!(
                            "`{}` is the route's own site; a tee copies to another site",
                            t.site
                        ),
                    );
                    continue;
                }
                if !tee_sites.insert(ts) {
                    err(
                        tkey("site"),
                        format!("site `{}` is a tee target twice", t.site),
                    );
                    continue;
                }
                match Naming::parse(
                    t.naming.as_deref().unwrap_or("identity"),
                    &rc.site,
                    Some(&t.site),
                ) {
                    Ok(naming) => tee.push(TeeTarget {
                        site: ts,
                        mode: t.mode,
                        naming,
                        start: t.start,
                        merges: !t.plugins.is_empty(),
                    }),
                    Err(e) => err(tkey("naming"), e),
                }
            }
            let failover = rc.failover.as_ref().and_then(|f| {
                let fkey = |k: &str| format!("routes[{i}].failover.{k}");
                let Some(standby) = site_index(&f.standby) else {
                    err(
                        fkey("standby"),
                        format!("no site named `{}` in `sites`", f.standby),
                    );
                    return None;
                };
                let Some(t) = tee.iter().find(|t| t.site == standby) else {
                    err(
                        fkey("standby"),
                        format!(
                            "`{}` is not a tee target of this route; the standby must be one \
                             (add `tee: [{{site: {}, mode: sync}}]`), that is how its data gets there",
                            f.standby, f.standby
                        ),
                    );
                    return None;
                };
                if tee.len() > 1 {
                    err(
                        key("tee"),
                        "a route with failover tees to its standby only: other targets would \
                         lose their source when the route fails over"
                            .into(),
                    );
                }
                if rc.groups.is_none() {
                    err(
                        key("groups"),
                        "a route with failover needs `groups`: the consumer groups of its topics \
                         must fail over with them (a group's offsets live on one site)"
                            .into(),
                    );
                }
                if rc.listeners.is_some() || rc.client_ids.is_some() {
                    err(
                        key("failover"),
                        "a route with failover must serve every client (no `listeners` or \
                         `client_ids`): otherwise some clients would keep writing to the old site"
                            .into(),
                    );
                }
                let alias = f.mm2_source_alias.clone().unwrap_or_else(|| rc.site.clone());
                if alias.is_empty() {
                    err(fkey("mm2_source_alias"), "must not be empty".into());
                }
                Some(RouteFailover {
                    standby,
                    standby_naming: t.naming.clone(),
                    automatic: f.automatic,
                    mm2_alias: alias,
                })
            });
            if rc.failover.is_some() && failover.is_none() {
                continue;
            }
            if let (Some(topics), Some(client_ids), Some(groups), Some(site), Some(naming)) =
                (topics, client_ids, groups, site, naming)
            {
                routes.push(Route {
                    name: rc.name.clone(),
                    topics,
                    listeners: rc.listeners.clone(),
                    client_ids,
                    site,
                    naming,
                    groups,
                    tee,
                    failover,
                });
            }
        }
        if errs.is_empty() {
            for (j, b) in routes.iter().enumerate() {
                for (i, a) in routes[..j].iter().enumerate() {
                    match overlap(a, b) {
                        Ok(None) => {}
                        Ok(Some(example)) => errs.push(ConfigError {
                            key: format!("routes[{j}].topics"),
                            reason: format!(
                                "route `{}` overlaps route `{}` (routes[{i}]): {example} would match both; \
                                 routes must be disjoint (narrow a matcher, or split by listeners/client_ids)",
                                b.name, a.name
                            ),
                        }),
                        Err(e) => errs.push(ConfigError {
                            key: format!("routes[{j}].topics"),
                            reason: e.to_string(),
                        }),
                    }
                    if let (Some(ga), Some(gb)) = (&a.groups, &b.groups) {
                        if a.site != b.site && listeners_meet(a, b) {
                            match ga.overlap(gb) {
                                Ok(Some(g)) => errs.push(ConfigError {
                                    key: format!("routes[{j}].groups"),
                                    reason: format!(
                                        "group `{g}` would be coordinated on both `{}` (route `{}`) and `{}` (route `{}`)",
                                        sites[a.site], a.name, sites[b.site], b.name
                                    ),
                                }),
                                Ok(None) => {}
                                Err(e) => errs.push(ConfigError {
                                    key: format!("routes[{j}].groups"),
                                    reason: e.to_string(),
                                }),
                            }
                        }
                    }
                }
            }
            // Two tee links must never write the same physical topic on one
            // site (two sources interleaved in one log), nor copy the same
            // source topic to the same site twice (routes split by listener
            // or client id over one topic would each tee it: duplicates).
            // Exception: tees from two different sites that both run plugins
            // may merge into one topic (an aggregate with a conflict rule or
            // CRDT): each link tells its records apart by their origin
            // header and keys its offset syncs by its source site.
            // (One route has at most one tee per site, so a pair on one
            // site is always two routes.)
            let links: Vec<(usize, &Route, &TeeTarget)> = routes
                .iter()
                .enumerate()
                .flat_map(|(i, r)| r.tee.iter().map(move |t| (i, r, t)))
                .collect();
            for (x, &(ia, ra, ta)) in links.iter().enumerate() {
                for &(ib, rb, tb) in &links[x + 1..] {
                    if ta.site != tb.site {
                        continue;
                    }
                    let key = format!("routes[{ib}].tee");
                    let clash = (|| -> Result<Option<String>, MatchError> {
                        let written = ta.naming.image(&ra.topics)?;
                        let merging = ra.site != rb.site && ta.merges && tb.merges;
                        if let Some(t) = written.overlap(&tb.naming.image(&rb.topics)?)? {
                            if !merging {
                                return Ok(Some(format!(
                                    "tees of routes `{}` (routes[{ia}]) and `{}` both write topic `{t}` on `{}` \
                                     (copies from two sites may share a topic only when both tees run plugins that merge them)",
                                    ra.name, rb.name, sites[ta.site]
                                )));
                            }
                        }
                        if ra.site == rb.site {
                            let src = ra.naming.image(&ra.topics)?;
                            if let Some(t) = src.overlap(&rb.naming.image(&rb.topics)?)? {
                                return Ok(Some(format!(
                                    "routes `{}` (routes[{ia}]) and `{}` both tee topic `{t}` of `{}` to `{}`: it would be copied twice",
                                    ra.name, rb.name, sites[ra.site], sites[ta.site]
                                )));
                            }
                        }
                        Ok(None)
                    })();
                    match clash {
                        Ok(None) => {}
                        Ok(Some(reason)) => errs.push(ConfigError { key, reason }),
                        Err(e) => errs.push(ConfigError {
                            key,
                            reason: e.to_string(),
                        }),
                    }
                }
            }
        }
        if errs.is_empty() {
            let sides = routes
                .iter()
                .map(|_| std::sync::atomic::AtomicU8::new(Side::Primary.code()))
                .collect();
            Ok(Router {
                routes,
                default_site,
                sites,
                sides,
                changes: tokio::sync::watch::Sender::new(0),
            })
        } else {
            Err(errs)
        }
    }
}

fn sorted(names: &HashSet<&str>) -> String {
    let mut v: Vec<&str> = names.iter().copied().collect();
    v.sort_unstable();
    v.join(", ")
}

/// A matcher from its config (`id`: group, transactional or client ids,
/// not topic names).
pub(crate) fn matcher(m: &MatchConfig, id: bool) -> Result<TopicMatch, String> {
    let given = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|x| x.is_some())
        .count();
    if given != 1 {
        return Err("give exactly one of `exact`, `prefix`, `regex`".into());
    }
    let r = match (&m.exact, &m.prefix, &m.regex, id) {
        (Some(e), _, _, false) => TopicMatch::exact(e),
        (_, Some(p), _, false) => TopicMatch::prefix(p),
        (_, _, Some(r), false) => TopicMatch::regex(r),
        (Some(e), _, _, true) => TopicMatch::id_exact(e),
        (_, Some(p), _, true) => TopicMatch::id_prefix(p),
        (_, _, Some(r), true) => TopicMatch::id_regex(r),
        _ => return Err("give exactly one of `exact`, `prefix`, `regex`".into()),
    };
    r.map_err(|e| e.to_string())
}

fn listeners_meet(a: &Route, b: &Route) -> bool {
    match (&a.listeners, &b.listeners) {
        (Some(la), Some(lb)) => la.iter().any(|l| lb.contains(l)),
        _ => true,
    }
}

/// An example of a (topic, listener, client) two routes would both select.
fn overlap(a: &Route, b: &Route) -> Result<Option<String>, MatchError> {
    if !listeners_meet(a, b) {
        return Ok(None);
    }
    let client = match (&a.client_ids, &b.client_ids) {
        (Some(ca), Some(cb)) => match ca.overlap(cb)? {
            Some(c) => Some(c),
            None => return Ok(None),
        },
        (Some(_), None) | (None, Some(_)) | (None, None) => None,
    };
    Ok(a.topics.overlap(&b.topics)?.map(|t| match client {
        Some(c) => format!("topic `{t}` from client id `{c}`"),
        None => format!("topic `{t}`"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::Loaded;

    const BASE: &str = "
cluster_id: c1
listen:
  bind: 127.0.0.1:9092
listeners:
  - name: internal
    bind: 127.0.0.1:9192
sites:
  - name: a
    bootstrap: [\"127.0.0.1:19092\"]
  - name: b
    bootstrap: [\"127.0.0.1:19093\"]
  - name: hub
    bootstrap: [\"127.0.0.1:19094\"]
default_site: a
";

    fn router(routes: &str) -> Result<std::sync::Arc<Router>, String> {
        Loaded::text(&format!("{BASE}routes:\n{routes}"))
            .map(|v| v.router)
            .map_err(|e| e.to_string())
    }

    const WHO: Who<'static> = Who {
        listener: "default",
        client_id: "app",
    };

    #[test]
    fn naming_policies_round_trip() {
        for (spec, phys) in [
            ("identity", "orders"),
            ("mm2", "store1.orders"),
            ("suffix", "orders-store1"),
            (
                "{topic}.from.{site}.to.{target}",
                "orders.from.store1.to.hub",
            ),
        ] {
            let n = Naming::parse(spec, "store1", Some("hub")).unwrap();
            assert_eq!(n.physical("orders"), phys, "{spec}");
            assert_eq!(n.virtual_of(phys), Some("orders"), "{spec}");
        }
        let n = Naming::parse("mm2", "s", None).unwrap();
        assert_eq!(n.virtual_of("t.orders"), None);
        assert_eq!(n.virtual_of("s."), None);
        assert!(Naming::parse("{topic}{topic}", "s", None).is_err());
        assert!(Naming::parse("orders", "s", None).is_err());
        assert!(Naming::parse("{topic}-{region}", "s", None).is_err());
        assert!(Naming::parse("{topic}/{site}", "s", None).is_err());
    }

    #[test]
    fn resolves_and_renames() {
        let r = router(
            "  - name: orders
    topics: {prefix: orders}
    site: b
    naming: mm2
  - name: internal-pay
    topics: {exact: payments}
    listeners: [internal]
    site: hub
",
        )
        .unwrap();
        let o = r.resolve(WHO, "orders.eu");
        assert_eq!((o.site, o.physical.as_ref()), (1, "b.orders.eu"));
        assert_eq!(r.resolve(WHO, "payments").site, 0);
        let internal = Who {
            listener: "internal",
            client_id: "x",
        };
        assert_eq!(r.resolve(internal, "payments").site, 2);
        assert_eq!(
            r.to_virtual(WHO, 1, "b.orders.eu").as_deref(),
            Some("orders.eu")
        );
        // Physical names owned by a renaming route are hidden, other site's
        // topics are not visible from this one.
        assert_eq!(r.to_virtual(WHO, 1, "orders.eu"), None);
        assert_eq!(r.to_virtual(WHO, 0, "clicks").as_deref(), Some("clicks"));
        assert_eq!(r.to_virtual(WHO, 1, "clicks"), None);
        assert_eq!(r.to_virtual(WHO, 2, "payments"), None);
        assert_eq!(
            r.to_virtual(internal, 2, "payments").as_deref(),
            Some("payments")
        );
    }

    #[test]
    fn overlapping_routes_are_errors_with_an_example() {
        let e = router(
            "  - name: one
    topics: {prefix: orders}
    site: a
  - name: two
    topics: {regex: 'ord.*s'}
    site: b
",
        )
        .unwrap_err();
        assert!(
            e.contains("routes[1].topics") && e.contains("would match both"),
            "{e}"
        );
        // Disjoint by listener or client id: fine.
        router(
            "  - name: one
    topics: {prefix: orders}
    listeners: [internal]
    site: a
  - name: two
    topics: {prefix: orders}
    listeners: [default]
    site: b
  - name: three
    topics: {prefix: pay}
    client_ids: {prefix: 'pos-'}
    site: a
  - name: four
    topics: {prefix: pay}
    client_ids: {prefix: 'web-'}
    site: b
",
        )
        .unwrap();
        let e = router(
            "  - name: three
    topics: {prefix: pay}
    client_ids: {prefix: 'pos-'}
    site: a
  - name: four
    topics: {prefix: pay}
    client_ids: {regex: 'pos-[0-9]+'}
    site: b
",
        )
        .unwrap_err();
        assert!(e.contains("client id `pos-0`"), "{e}");
    }

    #[test]
    fn unreachable_and_broken_routes_are_errors() {
        for (routes, want) in [
            (
                "  - name: x\n    topics: {regex: 'a b'}\n    site: a\n",
                "matches no valid topic name",
            ),
            (
                "  - name: x\n    topics: {exact: t}\n    listeners: []\n    site: a\n",
                "unreachable",
            ),
            (
                "  - name: x\n    topics: {exact: t}\n    listeners: [nope]\n    site: a\n",
                "no listener named `nope`",
            ),
            (
                "  - name: x\n    topics: {exact: t, prefix: u}\n    site: a\n",
                "exactly one",
            ),
            ("  - name: x\n    topics: {exact: t}\n    site: zz\n", "no site named `zz`"),
            (
                "  - name: x\n    topics: {exact: t}\n    site: a\n    tee: [{site: a}]\n",
                "own site",
            ),
            (
                "  - name: x\n    topics: {exact: t}\n    site: a\n    naming: '{topic}-{nope}'\n",
                "unknown placeholder",
            ),
            (
                "  - name: x\n    topics: {exact: t}\n    site: a\n    tee: [{site: hub, mode: sometimes}]\n",
                "mode",
            ),
        ] {
            let e = router(routes).unwrap_err();
            assert!(e.contains(want), "{routes}\n=> {e}");
        }
    }

    #[test]
    fn tees_of_two_sites_may_merge_into_one_topic_through_plugins() {
        let file = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
        let routes = |plugins: &str| {
            format!(
                "  - name: one
    topics: {{exact: counters}}
    client_ids: {{prefix: a-}}
    site: a
    tee: [{{site: hub{plugins}}}]
  - name: two
    topics: {{exact: counters}}
    client_ids: {{prefix: b-}}
    site: b
    tee: [{{site: hub, plugins: [merge]}}]
plugins:
  - {{name: merge, path: '{file}'}}
"
            )
        };
        assert!(router(&routes(", plugins: [merge]")).is_ok());
        let e = router(&routes("")).unwrap_err();
        assert!(e.contains("both write topic `counters` on `hub`"), "{e}");
    }

    #[test]
    fn tees_never_collide() {
        // Different templates, same names: `{topic}-a` from site a equals `{topic}-{site}`.
        let e = router(
            "  - name: one
    topics: {prefix: orders}
    site: a
    tee: [{site: hub, naming: '{topic}-{site}'}]
  - name: two
    topics: {prefix: ord}
    site: b
    tee: [{site: hub, naming: '{topic}-a'}]
",
        )
        .unwrap_err();
        assert!(e.contains("both write topic `orders-a` on `hub`"), "{e}");
        // Two routes split by listener over one topic would tee it twice.
        let e = router(
            "  - name: one
    topics: {exact: orders}
    listeners: [internal]
    site: a
    tee: [{site: hub, naming: '{topic}-x'}]
  - name: two
    topics: {exact: orders}
    listeners: [default]
    site: a
    tee: [{site: hub, naming: '{topic}-y'}]
",
        )
        .unwrap_err();
        assert!(e.contains("copied twice"), "{e}");
        // Hub-and-spoke from two sites into one hub: distinct names, fine.
        router(
            "  - name: one
    topics: {prefix: pos.}
    listeners: [default]
    site: a
    tee: [{site: hub, naming: suffix}]
  - name: two
    topics: {prefix: pos.}
    site: b
    listeners: [internal]
    tee: [{site: hub, naming: suffix}]
",
        )
        .unwrap();
    }

    /// Everything on site `a`, failing over to `b`.
    fn failing_over_router() -> std::sync::Arc<Router> {
        router(
            "  - name: main
    topics: {regex: '.*'}
    groups: {regex: '.*'}
    site: a
    tee: [{site: b, mode: sync}]
    failover: {standby: b}
",
        )
        .unwrap()
    }

    #[test]
    fn a_switching_route_holds_its_sites() {
        let r = failing_over_router();
        let serving = |r: &Router| (r.home_site(), r.site_held(0), r.site_held(1));
        assert_eq!(serving(&r), (0, false, false));
        r.set_side(0, Side::FailingOver);
        // Still the old site, held: requests for it wait for the switch.
        assert_eq!(serving(&r), (0, true, false));
        r.set_side(0, Side::Standby);
        assert_eq!(serving(&r), (1, false, false));
        r.set_side(0, Side::FailingBack);
        assert_eq!(serving(&r), (1, false, true));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_wait_out_a_switch() {
        let r = failing_over_router();
        let limit = std::time::Duration::from_secs(5);
        assert!(r.settled(&[0], limit).await, "nothing switching: no wait");
        r.set_side(0, Side::FailingOver);
        let waiter = {
            let r = r.clone();
            tokio::spawn(async move { r.settled(&[0], limit).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        r.set_side(0, Side::Standby);
        assert!(waiter.await.unwrap(), "settled once the switch completed");
        r.set_side(0, Side::FailingBack);
        assert!(
            !r.settled(&[0], limit).await,
            "a switch that does not end: given up after the limit"
        );
    }

    #[test]
    fn groups_live_on_one_site() {
        let r = router(
            "  - name: one
    topics: {prefix: orders}
    site: b
    groups: {prefix: 'billing-'}
",
        )
        .unwrap();
        assert_eq!(r.coordinator_site(WHO, "billing-1"), 1);
        assert_eq!(r.coordinator_site(WHO, "other"), 0);
        let e = router(
            "  - name: one
    topics: {prefix: orders}
    site: b
    groups: {prefix: 'billing-'}
  - name: two
    topics: {prefix: pay}
    site: hub
    groups: {regex: 'bill.*'}
",
        )
        .unwrap_err();
        assert!(e.contains("coordinated on both"), "{e}");
    }
}
