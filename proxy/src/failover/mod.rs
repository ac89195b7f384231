//! Active-passive failover of routes: site health, the per-route state
//! machine, fencing of stale consumers, and shadow commits.
//!
//! A route with `failover` is served by its primary site and teed to its
//! standby. Its state ([`Side`]) moves
//!
//! ```text
//! primary --failover--> failing_over --> standby --failback--> failing_back --> primary
//! ```
//!
//! automatically (primary unhealthy past the threshold) or through the admin
//! API. A switch, in order:
//!
//! 1. **Hold**: the route's produce/fetch/list-offsets get
//!    NOT_LEADER_OR_FOLLOWER (retriable) and its groups' commits
//!    COORDINATOR_LOAD_IN_PROGRESS: neither site takes the route's writes.
//! 2. **Drain**: wait (at most `drain_timeout_ms`) for produce requests in
//!    flight to the old site; when it is down, or anything is still in
//!    flight, every connection to it is reset, so nothing Switchyard sent
//!    can land there once the network heals. This is the split-brain guard:
//!    from here on Switchyard writes to the new site only, whatever the old
//!    site does.
//! 3. **Catch up** (planned: old site healthy): wait for the tee to copy
//!    everything the old site acknowledged (`planned_timeout_ms`; if it
//!    cannot, the switch is refused and nothing changes). Unplanned: what the
//!    tee had not copied is the loss (0 with sync tee), logged and reported.
//! 4. **Offsets**: commit the groups' translated offsets on the new site
//!    (planned: from the old site's final commits; unplanned: the latest
//!    commits seen, plus MM2 checkpoints for groups Switchyard never saw).
//! 5. **Flip**: tee direction reversed (new writes on the new site are
//!    copied back for a later failback), producer id mappings of both sites
//!    dropped, the route's epoch bumped (old group members are fenced, their
//!    fetches held), the state persisted on both sites, traffic released.
//!
//! Failback is the same switch the other way, always operator-initiated.

pub mod fence;
pub mod health;
pub mod shadow;
mod state;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

use crate::config::FailoverConfig;
use crate::metrics::Metrics;
use crate::route::{Naming, Route, Router, Side, Who};
use crate::tee::Tee;
use crate::upstream::producer_ids::ProducerIds;
use crate::upstream::Site;

use fence::Fence;
use health::Health;
use shadow::{Clients, Commits, Method, Shadow, Translated};

/// Failover routes serve every client (validated), so routing questions
/// about their groups need no real client.
const ANYONE: Who<'static> = Who {
    listener: "",
    client_id: "",
};

/// Where a group's offsets are being synced from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncMode {
    /// Continuous shadow commits: the source is up; skip what is already
    /// committed, retry conservative translations later.
    Live,
    /// A planned switch: the tee caught up, commit the exact translation.
    Final,
    /// An unplanned switch: the source is gone (no timestamp lookups).
    FinalFromDead,
}

/// One failover route's switching state.
pub struct RouteState {
    pub route: usize,
    pub name: String,
    pub primary: usize,
    pub standby: usize,
    pub automatic: bool,
    pub mm2_alias: String,
    epoch: AtomicU64,
    /// One switch at a time.
    switching: tokio::sync::Mutex<()>,
    last: Mutex<Option<Transition>>,
    uncopied: AtomicI64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub from: &'static str,
    pub to: &'static str,
    /// `automatic` or `manual`.
    pub reason: &'static str,
    /// The old site was healthy and the tee caught up before the flip.
    pub planned: bool,
    pub at_unix_ms: u64,
    pub took_ms: u64,
    /// Records acknowledged on the old site that the tee had not copied.
    pub uncopied_records: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteFailoverStatus {
    pub route: String,
    pub primary: String,
    pub standby: String,
    pub active: String,
    pub state: &'static str,
    pub epoch: u64,
    pub automatic: bool,
    pub last_transition: Option<Transition>,
    pub uncopied_records: i64,
}

/// Why a switch was refused.
#[derive(Debug)]
pub enum SwitchError {
    UnknownRoute,
    NotFailoverRoute,
    Conflict(String),
}

impl std::fmt::Display for SwitchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SwitchError::UnknownRoute => write!(f, "no route with that name"),
            SwitchError::NotFailoverRoute => {
                write!(f, "the route has no `failover` section")
            }
            SwitchError::Conflict(m) => write!(f, "{m}"),
        }
    }
}

/// Failover routes' epochs at one moment (see [`Failover::epochs`]).
pub struct Epochs(Vec<(usize, u64)>);

pub struct Failover {
    pub health: Arc<Health>,
    pub fence: Fence,
    pub shadow: Shadow,
    routes: Vec<Arc<RouteState>>,
    router: Arc<Router>,
    tee: Arc<Tee>,
    sites: Vec<Arc<Site>>,
    producer_ids: Arc<ProducerIds>,
    cfg: FailoverConfig,
    metrics: Arc<Metrics>,
    /// Switchyard's own connections for shadow commits (one per site,
    /// shared by the shadow loop and sync-tee routes' inline commits).
    clients: tokio::sync::Mutex<Clients>,
}

/// An inline shadow commit (sync-tee routes) waits at most this long before
/// the client's commit is answered anyway (the shadow loop retries).
const INLINE_SHADOW_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a switch keeps retrying a group's final commit on the new site
/// (its traffic is held meanwhile). A cluster whose `__consumer_offsets`
/// does not exist yet answers COORDINATOR_NOT_AVAILABLE until it is
/// created; a group whose final offsets were not committed would find none
/// there and start over from its reset policy (an application that commits
/// only inside transactions, as Kafka Streams does, has no earlier shadow
/// commit to fall back on).
const FINAL_COMMIT_WAIT: Duration = Duration::from_secs(10);

impl Failover {
    pub fn new(
        cfg: FailoverConfig,
        router: Arc<Router>,
        tee: Arc<Tee>,
        sites: Vec<Arc<Site>>,
        producer_ids: Arc<ProducerIds>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let routes = router
            .routes()
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let f = r.failover.as_ref()?;
                metrics
                    .failover
                    .state
                    .with_label_values(&[r.name.as_str()])
                    .set(0);
                Some(Arc::new(RouteState {
                    route: i,
                    name: r.name.clone(),
                    primary: r.site,
                    standby: f.standby,
                    automatic: f.automatic,
                    mm2_alias: f.mm2_alias.clone(),
                    epoch: AtomicU64::new(0),
                    switching: tokio::sync::Mutex::new(()),
                    last: Mutex::new(None),
                    uncopied: AtomicI64::new(0),
                }))
            })
            .collect();
        let sites_for_clients = sites.clone();
        Arc::new(Failover {
            health: Health::new(&sites, cfg.health.clone(), &metrics),
            fence: Fence::default(),
            shadow: Shadow::default(),
            routes,
            router,
            tee,
            sites,
            producer_ids,
            cfg,
            metrics,
            clients: tokio::sync::Mutex::new(Clients::new(&sites_for_clients)),
        })
    }

    /// True when some route can fail over (the rest of the machinery idles).
    pub fn enabled(&self) -> bool {
        !self.routes.is_empty()
    }

    /// Restores persisted route states (before serving), then starts health
    /// checks, automatic failover and the shadow committer.
    pub async fn start(self: &Arc<Self>, stop: watch::Receiver<bool>) {
        if !self.enabled() {
            return;
        }
        for rs in &self.routes {
            if let Some(saved) = state::load(&self.sites, rs, Duration::from_secs(5)).await {
                self.adopt(rs, &saved, "restored at start");
            }
        }
        self.health.start(self.metrics.clone(), stop.clone());
        for rs in &self.routes {
            tokio::spawn(supervise(self.clone(), rs.clone(), stop.clone()));
        }
        tokio::spawn(shadow_loop(self.clone(), stop));
    }

    fn adopt(&self, rs: &RouteState, saved: &state::Saved, why: &str) {
        if saved.epoch <= rs.epoch.load(Ordering::Acquire) {
            return;
        }
        let side = if saved.standby {
            Side::Standby
        } else {
            Side::Primary
        };
        tracing::warn!(route = %rs.name, epoch = saved.epoch, side = side.name(), why,
            "route failover state adopted from the state topic");
        rs.epoch.store(saved.epoch, Ordering::Release);
        self.tee.set_direction(rs.route, !saved.standby);
        self.router.set_side(rs.route, side);
        self.set_state_metric(rs, side);
    }

    fn set_state_metric(&self, rs: &RouteState, side: Side) {
        let v = match side {
            Side::Primary => 0,
            Side::Standby => 1,
            Side::FailingOver => 2,
            Side::FailingBack => 3,
        };
        self.metrics
            .failover
            .state
            .with_label_values(&[rs.name.as_str()])
            .set(v);
    }

    fn route_named(&self, name: &str) -> Result<Arc<RouteState>, SwitchError> {
        match self.routes.iter().find(|r| r.name == name) {
            Some(r) => Ok(r.clone()),
            None if self.router.routes().iter().any(|r| r.name == name) => {
                Err(SwitchError::NotFailoverRoute)
            }
            None => Err(SwitchError::UnknownRoute),
        }
    }

    fn state_of(&self, route: usize) -> Option<&Arc<RouteState>> {
        self.routes.iter().find(|r| r.route == route)
    }

    /// The route's epoch (bumped by every switch), for fencing.
    pub fn epoch(&self, route: usize) -> u64 {
        self.state_of(route)
            .map(|r| r.epoch.load(Ordering::Acquire))
            .unwrap_or(0)
    }

    /// Every failover route's epoch now, for [`Failover::moved_since`].
    pub fn epochs(&self) -> Epochs {
        Epochs(
            self.routes
                .iter()
                .map(|r| (r.route, r.epoch.load(Ordering::Acquire)))
                .collect(),
        )
    }

    /// The routes that switched sites since `then`, or are switching now: a
    /// site's answer to a request routed at `then` no longer speaks for them.
    pub fn moved_since(&self, then: &Epochs) -> Vec<usize> {
        then.0
            .iter()
            .filter(|(route, epoch)| {
                self.epoch(*route) != *epoch || self.router.side(*route).held()
            })
            .map(|(route, _)| *route)
            .collect()
    }

    /// Counts a request refused or held because its client is from before
    /// a switch (`what`: heartbeat, sync_group, offset_commit, fetch, ...).
    pub fn count_fenced(&self, route: usize, what: &str) {
        if let Some(r) = self.router.routes().get(route) {
            self.metrics
                .failover
                .fenced
                .with_label_values(&[r.name.as_str(), what])
                .inc();
        }
    }

    /// The failover route coordinating a group, if any.
    pub fn group_route(&self, group: &str) -> Option<usize> {
        let r = self.router.group_route(ANYONE, group)?;
        self.state_of(r).map(|_| r)
    }

    /// `POST /api/v1/routes/{route}/failover`.
    pub async fn fail_over(&self, route: &str, force: bool) -> Result<Transition, SwitchError> {
        let rs = self.route_named(route)?;
        self.switch(&rs, true, force, "manual").await
    }

    /// `POST /api/v1/routes/{route}/failback`.
    pub async fn fail_back(&self, route: &str, force: bool) -> Result<Transition, SwitchError> {
        let rs = self.route_named(route)?;
        self.switch(&rs, false, force, "manual").await
    }

    async fn switch(
        &self,
        rs: &Arc<RouteState>,
        to_standby: bool,
        force: bool,
        reason: &'static str,
    ) -> Result<Transition, SwitchError> {
        let Ok(_one) = rs.switching.try_lock() else {
            return Err(SwitchError::Conflict(
                "a switch of this route is already in progress".into(),
            ));
        };
        let (from, to, settled, held) = if to_standby {
            (rs.primary, rs.standby, Side::Primary, Side::FailingOver)
        } else {
            (rs.standby, rs.primary, Side::Standby, Side::FailingBack)
        };
        let side = self.router.side(rs.route);
        if side != settled {
            return Err(SwitchError::Conflict(format!(
                "route `{}` is {} (a {} needs it {})",
                rs.name,
                side.name(),
                if to_standby { "failover" } else { "failback" },
                settled.name()
            )));
        }
        let (from_site, to_site) = (self.sites[from].clone(), self.sites[to].clone());
        let (Some(from_h), Some(to_h)) = (self.health.site(from), self.health.site(to)) else {
            return Err(SwitchError::Conflict("unknown site".into()));
        };
        if !to_h.check_now(self.health.config(), &self.metrics).await {
            let why = to_h
                .status()
                .and_then(|s| s.last_error)
                .unwrap_or_else(|| "failing its health checks".into());
            return Err(SwitchError::Conflict(format!(
                "site `{}` is unhealthy ({why}); not switching to it",
                to_site.name
            )));
        }
        let from_healthy = if reason == "manual" {
            from_h.check_now(self.health.config(), &self.metrics).await
        } else {
            from_h.is_healthy()
        };
        let planned = from_healthy && !force;
        let started = Instant::now();
        tracing::warn!(route = %rs.name, from = %from_site.name, to = %to_site.name, reason, planned,
            "switching route: holding its traffic");
        self.router.set_side(rs.route, held);
        self.set_state_metric(rs, held);

        // Drain (planned only: a dead site answers nothing), then fence the
        // old site off.
        let drained = planned
            && from_site
                .writes_drained(Instant::now() + Duration::from_millis(self.cfg.drain_timeout_ms))
                .await;
        let severed = !planned || !drained;
        if severed {
            tracing::warn!(site = %from_site.name, in_flight = from_site.writes_in_flight(),
                "cutting every connection to the old site");
            from_site.sever();
        }

        // Catch up (planned) or account for what is lost (unplanned).
        let uncopied = if planned {
            let deadline = Instant::now() + Duration::from_millis(self.cfg.planned_timeout_ms);
            if !self.tee.caught_up(rs.route, &from_site, deadline).await {
                self.router.set_side(rs.route, settled);
                self.set_state_metric(rs, settled);
                let left = self.tee.uncopied(rs.route, &from_site);
                tracing::warn!(route = %rs.name, uncopied = left,
                    "switch refused: the tee did not catch up in time; nothing changed");
                return Err(SwitchError::Conflict(format!(
                    "the tee from `{}` did not catch up within failover.planned_timeout_ms ({} ms, {left} records left); \
                     nothing changed. Retry, or add ?force=true to switch anyway and lose what was not copied",
                    from_site.name, self.cfg.planned_timeout_ms
                )));
            }
            0
        } else {
            self.tee.uncopied(rs.route, &from_site)
        };
        if uncopied > 0 {
            tracing::error!(route = %rs.name, from = %from_site.name, records = uncopied,
                "unplanned switch: records acknowledged on the old site were not copied yet (async tee loss)");
        }
        rs.uncopied.store(uncopied, Ordering::Release);
        self.metrics
            .failover
            .uncopied
            .with_label_values(&[rs.name.as_str()])
            .set(uncopied);

        // Offsets.
        let mut clients = self.clients.lock().await;
        self.final_offsets(rs, from, to, planned, &mut clients)
            .await;

        // Flip.
        self.tee.set_direction(rs.route, !to_standby);
        self.producer_ids.forget_sites(&[from, to]);
        let epoch = rs.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.fence.switched(
            rs.route,
            epoch,
            Duration::from_millis(self.cfg.fence_timeout_ms),
        );
        let now_side = if to_standby {
            Side::Standby
        } else {
            Side::Primary
        };
        self.router.set_side(rs.route, now_side);
        self.set_state_metric(rs, now_side);
        if severed {
            // Again, now that nothing routes there: a request routed just
            // before the hold may have opened a new connection to the old
            // site after the first cut; against an unreachable site it would
            // wait the whole request timeout, stalling that client's
            // connection. Cut, it fails now and the client retries here.
            from_site.sever();
        }
        let t = Transition {
            from: settled.name(),
            to: now_side.name(),
            reason,
            planned,
            at_unix_ms: now_ms(),
            took_ms: started.elapsed().as_millis() as u64,
            uncopied_records: uncopied,
        };
        self.metrics
            .failover
            .transitions
            .with_label_values(&[rs.name.as_str(), t.from, t.to, reason])
            .inc();
        tracing::warn!(route = %rs.name, from = t.from, to = t.to, active = %to_site.name, epoch,
            reason, planned, took_ms = t.took_ms, uncopied, "route switched");
        if let Ok(mut l) = rs.last.lock() {
            *l = Some(t.clone());
        }
        state::save(
            &self.sites,
            rs,
            &state::Saved {
                epoch,
                standby: to_standby,
            },
        )
        .await;
        Ok(t)
    }

    /// Physical name of a virtual topic of the route on a site.
    fn naming_on<'a>(&self, route: &'a Route, site: usize) -> &'a Naming {
        match &route.failover {
            Some(f) if f.standby == site => &f.standby_naming,
            _ => &route.naming,
        }
    }

    /// Step 4 of a switch: the new site gets the groups' translated offsets.
    async fn final_offsets(
        &self,
        rs: &RouteState,
        from: usize,
        to: usize,
        planned: bool,
        clients: &mut Clients,
    ) {
        let Some(route) = self.router.routes().get(rs.route) else {
            return;
        };
        self.clear_left_behind(rs, to, clients).await;
        // Commits seen since the last shadow round.
        for (r, group, f, commits) in self.shadow.take_pending(Some(rs.route)) {
            if f == from {
                let mode = if planned {
                    SyncMode::Final
                } else {
                    SyncMode::FinalFromDead
                };
                self.sync_group(r, &group, from, to, commits, mode, clients)
                    .await;
            }
        }
        if planned {
            // The old site is up: its committed offsets are the truth. The
            // route's topics are named explicitly (some brokers answer an
            // "all topics" OffsetFetch with a null list).
            let naming = self.naming_on(route, from);
            let topics: Vec<(String, Vec<i32>)> = self.sites[from]
                .view()
                .topics
                .iter()
                .filter(|(phys, _)| {
                    naming
                        .virtual_of(phys)
                        .is_some_and(|v| route.topics.matches(v))
                })
                .map(|(phys, t)| (phys.clone(), (0..t.leaders.len() as i32).collect()))
                .collect();
            for group in self.shadow.known_groups(rs.route) {
                let Some(c) = clients.one(from) else { continue };
                let got = match c.group_offsets(&group, Some(&topics)).await {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::warn!(route = %rs.name, group, error = %e,
                            "could not read the group's final offsets on the old site");
                        continue;
                    }
                };
                let commits: Commits = got
                    .into_iter()
                    .filter_map(|o| {
                        let virt = naming.virtual_of(&o.topic)?;
                        route
                            .topics
                            .matches(virt)
                            .then(|| ((virt.to_string(), o.partition), (o.offset, o.metadata)))
                    })
                    .collect();
                self.sync_group(
                    rs.route,
                    &group,
                    from,
                    to,
                    commits,
                    SyncMode::Final,
                    clients,
                )
                .await;
            }
        } else if to == rs.standby {
            self.checkpoint_sweep(rs, route, to, clients).await;
        }
    }

    /// Members an earlier switch left on `site` would block commits for their
    /// groups there (and its coordinator might leave their partitions
    /// unassigned until their sessions expire; some brokers never expire
    /// them): they are removed as soon as the site is reachable.
    async fn clear_left_behind(&self, rs: &RouteState, site: usize, clients: &mut Clients) {
        let mut behind: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (g, m) in self.fence.take_left_behind(rs.route, site) {
            behind.entry(g).or_default().push(m);
        }
        let Some(c) = clients.one(site) else { return };
        for (group, members) in behind {
            match c.remove_members(&group, &members).await {
                Ok(()) => tracing::info!(route = %rs.name, group, site = %self.sites[site].name,
                    members = members.len(), "removed group members left behind by an earlier switch"),
                Err(e) => {
                    tracing::debug!(route = %rs.name, group, site = %self.sites[site].name,
                        error = %e, "could not remove members left behind yet; retrying later");
                    self.fence.leave_behind(rs.route, site, &group, members);
                }
            }
        }
    }

    /// Unplanned failover: groups MirrorMaker 2 checkpointed but Switchyard
    /// never shadow-committed get the checkpoints' offsets on the standby
    /// (like MM2's `sync.group.offsets`, only moving offsets forward).
    async fn checkpoint_sweep(
        &self,
        rs: &RouteState,
        route: &Route,
        to: usize,
        clients: &mut Clients,
    ) {
        let Some(c) = clients.one(to) else { return };
        let Some(store) = self
            .shadow
            .checkpoints(rs.route, to, c, &rs.mm2_alias, true)
            .await
        else {
            return;
        };
        let naming = self.naming_on(route, to);
        // group → (virtual topic, standby topic, partition, downstream, upstream)
        type Entry = (String, String, i32, i64, i64);
        let mut per_group: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for cp in store.iter() {
            if self.router.group_route(ANYONE, &cp.group) != Some(rs.route) {
                continue;
            }
            let Some(virt) = naming.virtual_of(&cp.topic) else {
                continue;
            };
            if !route.topics.matches(virt)
                || self
                    .shadow
                    .has_mark(rs.route, &cp.group, to, virt, cp.partition)
            {
                continue;
            }
            per_group.entry(cp.group.clone()).or_default().push((
                virt.to_string(),
                cp.topic.clone(),
                cp.partition,
                cp.downstream_offset,
                cp.upstream_offset,
            ));
        }
        for (group, entries) in per_group {
            let mut wanted: BTreeMap<String, Vec<i32>> = BTreeMap::new();
            for (_, topic, p, _, _) in &entries {
                wanted.entry(topic.clone()).or_default().push(*p);
            }
            let wanted: Vec<(String, Vec<i32>)> = wanted.into_iter().collect();
            let current = c
                .group_offsets(&group, Some(&wanted))
                .await
                .unwrap_or_default();
            let mut commit = Vec::new();
            for (virt, topic, p, down, up) in &entries {
                let have = current
                    .iter()
                    .find(|o| &o.topic == topic && o.partition == *p)
                    .map(|o| o.offset);
                if have.is_some_and(|h| h >= *down) {
                    continue;
                }
                commit.push(shadow::offsets_for(topic, *p, *down, None));
                self.count_translation(rs, Method::Checkpoint, 0);
                self.shadow
                    .committed(shadow::mark_key(rs.route, &group, to, virt, *p), *up, *down);
            }
            if !commit.is_empty() {
                let r = c.commit_offsets(&group, &commit).await;
                self.count_commit(rs, &group, &r);
            }
        }
    }

    fn count_translation(&self, rs: &RouteState, m: Method, redelivered: i64) {
        let labels = [rs.name.as_str(), m.label()];
        self.metrics
            .failover
            .translations
            .with_label_values(&labels)
            .inc();
        if redelivered > 0 {
            self.metrics
                .failover
                .redelivered
                .with_label_values(&labels)
                .inc_by(redelivered as u64);
        }
    }

    fn count_commit(
        &self,
        rs: &RouteState,
        group: &str,
        r: &Result<Vec<(String, i32, i16)>, String>,
    ) -> bool {
        let (ok, why) = match r {
            Ok(parts) => match parts.iter().find(|(_, _, e)| *e != 0) {
                None => (true, String::new()),
                Some((t, p, e)) => (false, format!("{t}/{p}: error {e}")),
            },
            Err(e) => (false, e.clone()),
        };
        self.metrics
            .failover
            .shadow_commits
            .with_label_values(&[rs.name.as_str(), if ok { "ok" } else { "failed" }])
            .inc();
        if !ok {
            tracing::debug!(route = %rs.name, group, error = %why, "shadow commit failed");
        }
        ok
    }

    /// Translates a group's commits from `from` to `to` and commits them there.
    #[allow(clippy::too_many_arguments)]
    async fn sync_group(
        &self,
        route: usize,
        group: &str,
        from: usize,
        to: usize,
        commits: Commits,
        mode: SyncMode,
        clients: &mut Clients,
    ) -> bool {
        let from_alive = mode != SyncMode::FinalFromDead;
        let (Some(rs), Some(r)) = (self.state_of(route), self.router.routes().get(route)) else {
            return false;
        };
        let (from_naming, to_naming) = (self.naming_on(r, from), self.naming_on(r, to));
        let alias = if from == rs.primary {
            rs.mm2_alias.clone()
        } else {
            self.sites[from].name.clone()
        };
        let mut out = Vec::new();
        let mut marks = Vec::new();
        let mut retry = Commits::new();
        for ((virt, p), (c, meta)) in commits {
            let to_topic = to_naming.physical(&virt).into_owned();
            let t = match self
                .translate(
                    rs,
                    from,
                    to,
                    &virt,
                    from_naming.physical(&virt).as_ref(),
                    &to_topic,
                    group,
                    p,
                    c,
                    &alias,
                    from_alive,
                    clients,
                )
                .await
            {
                Some(t) => t,
                None => {
                    self.metrics
                        .failover
                        .translations
                        .with_label_values(&[rs.name.as_str(), "none"])
                        .inc();
                    if from_alive {
                        retry.insert((virt, p), (c, meta));
                    }
                    continue;
                }
            };
            tracing::debug!(route = %rs.name, group, topic = %virt, partition = p, from = %self.sites[from].name,
                to = %self.sites[to].name, offset = c, translated = t.offset, method = t.method.label(), exact = t.exact,
                ?mode, "offset translated");
            if !t.exact && mode == SyncMode::Live {
                // Past what the tee copied yet: committed conservatively now,
                // translated again next round.
                retry.insert((virt.clone(), p), (c, meta.clone()));
            }
            let key = shadow::mark_key(route, group, to, &virt, p);
            let offset = if mode == SyncMode::Live {
                match self.shadow.monotone(&key, c, t.offset) {
                    Some(o) => o,
                    None => continue,
                }
            } else {
                // A switch: the tee caught up (or the source is gone); this
                // translation is the best there will be.
                t.offset
            };
            self.count_translation(rs, t.method, t.redelivered);
            out.push(shadow::offsets_for(&to_topic, p, offset, meta));
            marks.push((virt, p, c, offset));
        }
        let exact = retry.is_empty();
        if !retry.is_empty() {
            self.shadow.put_back(route, group, from, retry);
        }
        if out.is_empty() {
            return exact;
        }
        let Some(client) = clients.one(to) else {
            return false;
        };
        let mut r = client.commit_offsets(group, &out).await;
        if mode != SyncMode::Live {
            let until = tokio::time::Instant::now() + FINAL_COMMIT_WAIT;
            let mut backoff = Duration::from_millis(100);
            while !commit_ok(&r) && tokio::time::Instant::now() + backoff < until {
                tracing::debug!(route = %rs.name, group, "final commit not taken yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                r = client.commit_offsets(group, &out).await;
            }
            if !commit_ok(&r) {
                tracing::warn!(route = %rs.name, group, wait_s = FINAL_COMMIT_WAIT.as_secs(),
                    "a group's final offsets could not be committed on the new site; it will resume from what is committed there (or its reset policy)");
            }
        }
        if self.count_commit(rs, group, &r) {
            for (virt, p, c, offset) in marks {
                self.shadow
                    .committed(shadow::mark_key(route, group, to, &virt, p), c, offset);
            }
            return exact;
        } else if from_alive {
            // Retried next round (newer commits of the group win).
            let again: Commits = marks
                .into_iter()
                .zip(out)
                .map(|((virt, p, c, _), o)| ((virt, p), (c, o.metadata)))
                .collect();
            self.shadow.put_back(route, group, from, again);
        }
        false
    }

    /// One offset, by runs, then MM2 checkpoints, then timestamps.
    #[allow(clippy::too_many_arguments)]
    async fn translate(
        &self,
        rs: &RouteState,
        from: usize,
        to: usize,
        virt: &str,
        from_topic: &str,
        to_topic: &str,
        group: &str,
        partition: i32,
        offset: i64,
        alias: &str,
        from_alive: bool,
        clients: &mut Clients,
    ) -> Option<Translated> {
        let (fs, ts) = (&self.sites[from], &self.sites[to]);
        if let Some((o, exact)) = self
            .tee
            .translate(rs.route, fs, ts, virt, partition, offset)
        {
            return Some(Translated {
                offset: o,
                method: Method::Runs,
                redelivered: 0,
                exact,
            });
        }
        if let Some(c) = clients.one(to) {
            if let Some(store) = self.shadow.checkpoints(rs.route, to, c, alias, false).await {
                if let Some(cp) = store.get(group, to_topic, partition) {
                    if cp.upstream_offset <= offset {
                        return Some(Translated {
                            offset: cp.downstream_offset,
                            method: Method::Checkpoint,
                            redelivered: offset - cp.upstream_offset,
                            exact: true,
                        });
                    }
                }
            }
        }
        if !from_alive {
            return None;
        }
        let (fc, tc) = clients.pair(from, to)?;
        match shadow::by_timestamp(
            fc,
            tc,
            from_topic,
            to_topic,
            partition,
            offset,
            self.cfg.timestamp_slack_ms,
        )
        .await
        {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(route = %rs.name, group, topic = virt, partition, offset, error = %e,
                    "timestamp translation failed; retried next round");
                None
            }
        }
    }

    /// An OffsetCommit succeeded on `site` for `group`: the shadow committer
    /// translates it to the other site. On routes with a sync tee the
    /// translated commit is made before the client's commit is answered
    /// (bounded), so an unplanned failover redelivers no committed record:
    /// RPO 0 for offsets as for records.
    pub async fn observe_commit(&self, group: &str, site: usize, commits: Commits) {
        let Some(route) = self.group_route(group) else {
            return;
        };
        let Some(rs) = self.state_of(route).cloned() else {
            return;
        };
        let inline = self
            .router
            .routes()
            .get(route)
            .is_some_and(|r| r.has_sync_tee())
            && self.router.side(route) == Side::Primary
            && site == rs.primary
            && self.health.site(rs.standby).is_some_and(|h| h.is_healthy());
        if !inline {
            self.shadow.observe(route, group, site, commits);
            return;
        }
        self.shadow.remember_group(route, group);
        let work = async {
            // A consumer may commit records the tee has not copied yet (it
            // reads the primary's log, the tee follows it by milliseconds):
            // wait for them, so the translation is exact, not the end of
            // what was copied (which would deliver them again after a failover).
            let deadline = Instant::now() + INLINE_SHADOW_TIMEOUT / 2;
            if let Some(r) = self.router.routes().get(route) {
                let source = &self.sites[site];
                for ((virt, p), (c, _)) in &commits {
                    let phys = r.naming.physical(virt);
                    self.tee
                        .wait_copied(route, source, &phys, *p, *c, deadline)
                        .await;
                }
            }
            let mut clients = self.clients.lock().await;
            self.clear_left_behind(&rs, rs.standby, &mut clients).await;
            self.sync_group(
                route,
                group,
                site,
                rs.standby,
                commits.clone(),
                SyncMode::Live,
                &mut clients,
            )
            .await;
        };
        if tokio::time::timeout(INLINE_SHADOW_TIMEOUT, work)
            .await
            .is_err()
        {
            self.shadow.observe(route, group, site, commits);
        }
    }

    /// An OffsetCommit from a member the last switch fenced (it joined in
    /// `joined`, the epoch before the current one), with offsets of the site
    /// that served then. After a *planned* switch the tee had copied
    /// everything, so they translate exactly: they are committed on the new
    /// site (never moving the group back) and the client's commit succeeds.
    /// Without this, a record a consumer processed while its commit was
    /// held by the switch would be delivered again after it rejoined.
    /// Returns false (the caller answers UNKNOWN_MEMBER_ID) when the switch
    /// was unplanned, is older, or the new site refused the commit (e.g. the
    /// group already has members there).
    pub async fn late_commit(
        &self,
        route: usize,
        group: &str,
        joined: u64,
        commits: Commits,
    ) -> bool {
        let Some(rs) = self.state_of(route).cloned() else {
            return false;
        };
        let epoch = rs.epoch.load(Ordering::Acquire);
        let planned = rs
            .last
            .lock()
            .ok()
            .and_then(|l| l.as_ref().map(|t| t.planned))
            .unwrap_or(false);
        let side = self.router.side(route);
        if !planned || side.held() || joined + 1 != epoch || commits.is_empty() {
            return false;
        }
        let (to, from) = match side {
            Side::Standby => (rs.standby, rs.primary),
            _ => (rs.primary, rs.standby),
        };
        let mut clients = self.clients.lock().await;
        let ok = self
            .sync_group(
                route,
                group,
                from,
                to,
                commits,
                SyncMode::Live,
                &mut clients,
            )
            .await;
        tracing::info!(route = %rs.name, group, applied = ok,
            "late commit of a member fenced by the planned switch translated to the new site");
        ok
    }

    pub fn status(&self) -> Vec<RouteFailoverStatus> {
        self.routes
            .iter()
            .map(|rs| {
                let side = self.router.side(rs.route);
                let active = match side {
                    Side::Standby | Side::FailingBack => rs.standby,
                    _ => rs.primary,
                };
                RouteFailoverStatus {
                    route: rs.name.clone(),
                    primary: self.sites[rs.primary].name.clone(),
                    standby: self.sites[rs.standby].name.clone(),
                    active: self.sites[active].name.clone(),
                    state: side.name(),
                    epoch: rs.epoch.load(Ordering::Acquire),
                    automatic: rs.automatic,
                    last_transition: rs.last.lock().ok().and_then(|l| l.clone()),
                    uncopied_records: rs.uncopied.load(Ordering::Acquire),
                }
            })
            .collect()
    }
}

/// Automatic failover: when the primary goes unhealthy while serving, and
/// the standby is healthy. Also picks up switches made by another
/// Switchyard instance (a higher epoch in the state topic).
async fn supervise(fo: Arc<Failover>, rs: Arc<RouteState>, mut stop: watch::Receiver<bool>) {
    let Some(primary) = fo.health.site(rs.primary).cloned() else {
        return;
    };
    let mut healthy = primary.watch();
    let mut state_check = Instant::now();
    loop {
        if rs.automatic
            && !*healthy.borrow()
            && fo.router.side(rs.route) == Side::Primary
            && fo.health.site(rs.standby).is_some_and(|s| s.is_healthy())
        {
            match fo.switch(&rs, true, true, "automatic").await {
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(route = %rs.name, error = %e, "automatic failover failed");
                }
            }
        }
        if state_check.elapsed() >= Duration::from_secs(5) {
            state_check = Instant::now();
            if let Some(saved) = state::load(&fo.sites, &rs, Duration::from_secs(2)).await {
                if saved.epoch > rs.epoch.load(Ordering::Acquire) {
                    if let Ok(_one) = rs.switching.try_lock() {
                        fo.adopt(&rs, &saved, "switched by another instance");
                    }
                }
            }
        }
        tokio::select! {
            _ = healthy.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Commits the translated offsets every `shadow_commit_interval_ms`.
async fn shadow_loop(fo: Arc<Failover>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(fo.cfg.shadow_commit_interval_ms);

    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        for (route, group, from, commits) in fo.shadow.take_pending(None) {
            let Some(rs) = fo.state_of(route).cloned() else {
                continue;
            };
            // Only commits made on the serving site, towards the other one;
            // nothing while a switch is running (it syncs offsets itself).
            let side = fo.router.side(route);
            let (serving, other) = match side {
                Side::Primary => (rs.primary, rs.standby),
                Side::Standby => (rs.standby, rs.primary),
                _ => {
                    fo.shadow.put_back(route, &group, from, commits);
                    continue;
                }
            };
            if from != serving {
                continue;
            }
            if !fo.health.site(other).is_some_and(|h| h.is_healthy()) {
                fo.shadow.put_back(route, &group, from, commits);
                continue;
            }
            let mut clients = fo.clients.lock().await;
            fo.clear_left_behind(&rs, other, &mut clients).await;
            fo.sync_group(
                route,
                &group,
                from,
                other,
                commits,
                SyncMode::Live,
                &mut clients,
            )
            .await;
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether a commit's answer says every partition was taken.
fn commit_ok(r: &Result<Vec<(String, i32, i16)>, String>) -> bool {
    matches!(r, Ok(parts) if parts.iter().all(|(_, _, e)| *e == 0))
}
