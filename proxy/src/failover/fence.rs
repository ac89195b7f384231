//! Fencing consumers that still live in the old site's offset space.
//!
//! A consumer keeps its positions in memory. After a switch, a member that
//! joined its group on the old site would go on fetching the new site at
//! old-site offsets, which are different records (reference §3.3). Two
//! levers stop that:
//!
//! * **Membership.** Every member id returned by a JoinGroup is remembered
//!   with the route's epoch at that moment. After a switch, Heartbeat,
//!   SyncGroup, OffsetCommit and LeaveGroup from an older member are answered
//!   here with UNKNOWN_MEMBER_ID: the client drops its assignment as lost,
//!   rejoins on the new site and re-reads the committed (translated)
//!   offsets. Its late commits (old offset space) are refused by the same rule.
//! * **Fetches.** Fetch requests carry no group or member id. Clients are
//!   identified by (client id, address): the ones that had members on the
//!   old site get NOT_LEADER_OR_FOLLOWER (retriable) for the route's
//!   partitions until as many members from that client have joined again,
//!   or `failover.fence_timeout_ms` passed. Clients that never joined a
//!   group (`assign()` with their own offsets) are not held; they continue
//!   at their own offsets on the new site (documented in the README).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Who a connection belongs to, as far as Kafka requests tell.
pub type ClientKey = (String, IpAddr);

/// Members not heard of for this long are forgotten (crashed clients).
const MEMBER_IDLE: Duration = Duration::from_secs(600);
const MAX_MEMBERS: usize = 100_000;

struct Member {
    route: usize,
    /// The site whose coordinator handed out the id.
    site: usize,
    epoch: u64,
    key: ClientKey,
    seen: Instant,
}

struct Held {
    /// Members from this client still to rejoin.
    pending: u32,
    until: Instant,
}

#[derive(Default)]
struct State {
    members: HashMap<(String, String), Member>,
    held: HashMap<(ClientKey, usize), Held>,
    /// Members a switch left behind on a site, per (route, site): their
    /// coordinator there still counts them until their session expires (some
    /// brokers never expire them), which blocks offset commits for the group.
    left_behind: HashMap<(usize, usize), Vec<(String, String)>>,
    /// Transactional ids: the route epoch of their last InitProducerId.
    txns: HashMap<String, u64>,
}

#[derive(Default)]
pub struct Fence {
    state: Mutex<State>,
    /// Any fetch hold in place: the fetch path checks nothing else otherwise.
    holding: AtomicBool,
}

impl Fence {
    /// A JoinGroup answered `member` for `group` (route `route`, epoch `epoch`).
    pub fn joined(
        &self,
        route: usize,
        site: usize,
        epoch: u64,
        group: &str,
        member: &str,
        key: ClientKey,
    ) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st.members.len() >= MAX_MEMBERS {
            let now = Instant::now();
            st.members
                .retain(|_, m| now.duration_since(m.seen) < MEMBER_IDLE);
            if st.members.len() >= MAX_MEMBERS {
                st.members.clear();
            }
        }
        let fresh = st
            .members
            .get(&(group.to_string(), member.to_string()))
            .is_none_or(|m| m.epoch < epoch);
        if fresh {
            if let Some(h) = st.held.get_mut(&(key.clone(), route)) {
                h.pending = h.pending.saturating_sub(1);
                if h.pending == 0 {
                    st.held.remove(&(key.clone(), route));
                }
            }
        }
        st.members.insert(
            (group.to_string(), member.to_string()),
            Member {
                route,
                site,
                epoch,
                key,
                seen: Instant::now(),
            },
        );
        let holding = !st.held.is_empty();
        drop(st);
        self.holding.store(holding, Ordering::Release);
    }

    /// True when `member` of `group` joined before the route's current
    /// epoch: the request must be refused with UNKNOWN_MEMBER_ID.
    pub fn is_stale(&self, epoch: u64, group: &str, member: &str) -> bool {
        self.stale_epoch(epoch, group, member).is_some()
    }

    /// The epoch `member` of `group` joined in, when that is before the
    /// route's current `epoch` (the member is fenced from now on).
    pub fn stale_epoch(&self, epoch: u64, group: &str, member: &str) -> Option<u64> {
        if member.is_empty() {
            return None;
        }
        let mut st = self.state.lock().ok()?;
        let k = (group.to_string(), member.to_string());
        match st.members.get_mut(&k) {
            // Fenced once is enough: the client rejoins under a new id, and
            // a forgotten member is no longer counted by later switches.
            Some(m) if m.epoch < epoch => {
                let joined = m.epoch;
                st.members.remove(&k);
                Some(joined)
            }
            Some(m) => {
                m.seen = Instant::now();
                None
            }
            None => None,
        }
    }

    pub fn left(&self, group: &str, member: &str) {
        if let Ok(mut st) = self.state.lock() {
            st.members.remove(&(group.to_string(), member.to_string()));
        }
    }

    /// A route switched to `epoch`: hold fetches of every client that had
    /// members on the old site.
    pub fn switched(&self, route: usize, epoch: u64, hold_for: Duration) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let until = Instant::now() + hold_for;
        let mut per_key: HashMap<ClientKey, u32> = HashMap::new();
        let mut behind: Vec<((usize, usize), (String, String))> = Vec::new();
        for ((g, m), mem) in &st.members {
            if mem.route == route && mem.epoch < epoch {
                behind.push(((route, mem.site), (g.clone(), m.clone())));
            }
        }
        for (k, v) in behind {
            let list = st.left_behind.entry(k).or_default();
            if list.len() < MAX_MEMBERS {
                list.push(v);
            }
        }
        // Members of the epoch that just ended; older ones were fenced by
        // the previous switch already (or are gone).
        st.members
            .retain(|_, m| m.route != route || m.epoch + 1 >= epoch);
        for m in st.members.values() {
            if m.route == route && m.epoch < epoch {
                *per_key.entry(m.key.clone()).or_default() += 1;
            }
        }
        for (key, n) in per_key {
            st.held.insert((key, route), Held { pending: n, until });
        }
        let holding = !st.held.is_empty();
        drop(st);
        self.holding.store(holding, Ordering::Release);
    }

    /// A transactional producer initialised (InitProducerId answered) at `epoch`.
    pub fn txn_initialised(&self, txn: &str, epoch: u64) {
        if let Ok(mut st) = self.state.lock() {
            if st.txns.len() >= MAX_MEMBERS {
                st.txns.clear();
            }
            st.txns.insert(txn.to_string(), epoch);
        }
    }

    /// True when a transactional producer initialised before the route's
    /// current epoch: its producer id and open transaction belong to the old
    /// site's coordinator and mean nothing on the new one.
    pub fn txn_is_stale(&self, txn: &str, epoch: u64) -> bool {
        self.state
            .lock()
            .map(|st| st.txns.get(txn).is_some_and(|e| *e < epoch))
            .unwrap_or(false)
    }

    /// Takes the members a route left behind on `site` (to remove them there
    /// before committing offsets for their groups).
    pub fn take_left_behind(&self, route: usize, site: usize) -> Vec<(String, String)> {
        self.state
            .lock()
            .map(|mut st| st.left_behind.remove(&(route, site)).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Puts members back on the left-behind list (their removal failed).
    pub fn leave_behind(&self, route: usize, site: usize, group: &str, members: Vec<String>) {
        if let Ok(mut st) = self.state.lock() {
            let list = st.left_behind.entry((route, site)).or_default();
            for m in members {
                if list.len() < MAX_MEMBERS {
                    list.push((group.to_string(), m));
                }
            }
        }
    }

    /// Whether fetches of `key` for the route's partitions are held.
    pub fn fetch_held(&self, route: usize, key: &ClientKey) -> bool {
        if !self.holding.load(Ordering::Acquire) {
            return false;
        }
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        st.held.retain(|_, h| h.until > now);
        let held = st.held.contains_key(&(key.clone(), route));
        let any = !st.held.is_empty();
        drop(st);
        if !any {
            self.holding.store(false, Ordering::Release);
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str) -> ClientKey {
        (c.to_string(), IpAddr::from([127, 0, 0, 1]))
    }

    #[test]
    fn old_members_are_stale_and_fetches_held_until_they_rejoin() {
        let f = Fence::default();
        f.joined(0, 0, 0, "g", "m1", key("a"));
        f.joined(0, 0, 0, "g", "m2", key("a"));
        f.joined(1, 0, 0, "h", "m3", key("b"));
        assert!(!f.is_stale(0, "g", "m1"));
        assert!(!f.fetch_held(0, &key("a")));

        f.switched(0, 1, Duration::from_secs(60));
        assert!(f.is_stale(1, "g", "m1"));
        assert!(!f.is_stale(0, "h", "m3"), "other routes are not fenced");
        assert!(f.fetch_held(0, &key("a")));
        assert!(!f.fetch_held(1, &key("b")));
        assert!(
            !f.fetch_held(0, &key("c")),
            "clients without members are not held"
        );

        f.joined(0, 1, 1, "g", "n1", key("a"));
        assert!(f.fetch_held(0, &key("a")), "one of two members rejoined");
        f.joined(0, 1, 1, "g", "n2", key("a"));
        assert_eq!(f.take_left_behind(0, 0).len(), 2);
        assert!(f.take_left_behind(0, 0).is_empty());
        assert!(!f.fetch_held(0, &key("a")));
        assert!(!f.is_stale(1, "g", "n1"));
    }

    #[test]
    fn holds_expire() {
        let f = Fence::default();
        f.joined(0, 0, 0, "g", "m1", key("a"));
        f.switched(0, 1, Duration::ZERO);
        assert!(!f.fetch_held(0, &key("a")));
    }
}
