//! Host-owned conflict state: the version of every key a conflict plugin
//! accepted, per (site written to, physical topic, key).
//!
//! Plugins are pure deciders: they see the stored version and the incoming
//! one and answer accept / reject / merge; the host keeps the versions. So a
//! trap, a reload or a new plugin version loses nothing, and every instance
//! of a plugin sees the same state.
//!
//! Durability: the versions of a site live in a compacted single-partition
//! topic on that site's cluster, [`STATE_TOPIC`], read back completely the
//! first time a site's state is needed after a start. A resolution's new
//! versions are written there *before* the records it let through are
//! written (the data path awaits [`Conflicts::save`]), so a restart never
//! forgets a version whose record may be on the site. The other order of
//! failure — version saved, record not written because Switchyard died in
//! between — is harmless: the record is written again (produce retry, tee
//! resume) and meets its own version, which conflict plugins accept (an
//! identical version is not older).
//!
//! Order: resolving a record reads the stored version and stores the new
//! one, and what a merging plugin writes is the merged state, so two writers
//! into the same (site, topic) — two tee links feeding one aggregate — must
//! resolve and write one after the other: if one resolved first but wrote
//! second, the site's last record per key would be the older merge.
//! [`Conflicts::writer`] hands out that turn.
//!
//! Bounded: at most `max_keys` versions per site in memory (the topic keeps
//! all); past that, a tenth of them is forgotten (logged): a forgotten key's
//! next record is treated as a first write.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::Version;
use crate::codec::batch::{self, BatchParams, WireRecord};
use crate::upstream::client::SiteClient;
use crate::upstream::Site;

pub const STATE_TOPIC: &str = "__switchyard_plugin_state";
/// Header carrying a record's vector clock: `site=counter,...` by site name.
pub const VCLOCK_HEADER: &str = "switchyard-vclock";
/// Largest plugin state kept with one version.
pub const MAX_STATE_BYTES: usize = 64 << 10;
const FORMAT: u8 = 1;

type Key = (String, Bytes);

/// One site's versions, by physical topic, then key: the lookup per
/// record borrows the topic name instead of building a key.
#[derive(Default)]
struct SiteVersions {
    restored: bool,
    by_topic: HashMap<String, HashMap<Bytes, Version>>,
    keys: usize,
}

impl SiteVersions {
    fn insert(&mut self, topic: &str, key: Bytes, v: Version) {
        let versions = match self.by_topic.get_mut(topic) {
            Some(m) => m,
            None => self.by_topic.entry(topic.to_string()).or_default(),
        };
        if versions.insert(key, v).is_none() {
            self.keys += 1;
        }
    }

    /// Forgets about a tenth of the keys (over the limit).
    fn shed(&mut self) -> usize {
        let mut forget = self.keys / 10 + 1;
        let target = forget;
        for versions in self.by_topic.values_mut() {
            if forget == 0 {
                break;
            }
            let victims: Vec<Bytes> = versions.keys().take(forget).cloned().collect();
            for k in &victims {
                versions.remove(k);
            }
            forget -= victims.len();
        }
        self.by_topic.retain(|_, m| !m.is_empty());
        let shed = target - forget;
        self.keys -= shed;
        shed
    }
}

pub struct Conflicts {
    sites: Vec<Arc<Site>>,
    site_names: Vec<String>,
    max_keys: usize,
    state: Mutex<HashMap<u16, SiteVersions>>,
    /// One restore or save per site at a time.
    io: Vec<tokio::sync::Mutex<()>>,
    /// One resolve-then-write per (site, topic) at a time; see the module doc.
    writers: Mutex<HashMap<(u16, String), Turn>>,
}

type Turn = Arc<tokio::sync::Mutex<()>>;

/// Past this many (site, topic) turns, idle ones are dropped when another is made.
const MAX_IDLE_WRITERS: usize = 1024;

impl Conflicts {
    pub fn new(sites: Vec<Arc<Site>>, max_keys: usize) -> Arc<Self> {
        Arc::new(Conflicts {
            site_names: sites.iter().map(|s| s.name.clone()).collect(),
            io: sites.iter().map(|_| tokio::sync::Mutex::new(())).collect(),
            sites,
            max_keys: max_keys.max(1),
            state: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
        })
    }

    /// Waits for the turn to resolve and write records into `topic` on
    /// `site`; the turn lasts as long as the guard. For writers that resolve
    /// off the client's path (the tee): a client's produce is ordered by the
    /// broker, not by Switchyard.
    pub async fn writer(&self, site: u16, topic: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let turn = {
            let mut w = match self.writers.lock() {
                Ok(w) => w,
                Err(poisoned) => poisoned.into_inner(),
            };
            if let Some(t) = w.get(&(site, topic.to_string())) {
                t.clone()
            } else {
                if w.len() >= MAX_IDLE_WRITERS {
                    w.retain(|_, t| Arc::strong_count(t) > 1);
                }
                let t = Arc::new(tokio::sync::Mutex::new(()));
                w.insert((site, topic.to_string()), t.clone());
                t
            }
        };
        turn.lock_owned().await
    }

    /// The incoming version of a record written by `origin`.
    pub fn incoming(&self, r: &WireRecord, origin: u16) -> Version {
        Version {
            timestamp_ms: r.timestamp,
            site: origin,
            vclock: r
                .headers
                .iter()
                .find(|(k, _)| k.as_ref() == VCLOCK_HEADER.as_bytes())
                .and_then(|(_, v)| v.as_deref())
                .map(|v| parse_vclock(v, &self.site_names))
                .unwrap_or_default(),
            state: Vec::new(),
        }
    }

    /// Reads the site's saved versions, once per process.
    pub async fn ensure_restored(&self, site: u16) -> Result<(), String> {
        if self.is_restored(site) {
            return Ok(());
        }
        let Some(io) = self.io.get(usize::from(site)) else {
            return Err(format!("no site {site}"));
        };
        let _one = io.lock().await;
        if self.is_restored(site) {
            return Ok(());
        }
        let Some(s) = self.sites.get(usize::from(site)) else {
            return Err(format!("no site {site}"));
        };
        let started = Instant::now();
        let mut c = SiteClient::new(s.clone());
        let read = tokio::time::timeout(Duration::from_secs(30), read_all(&mut c)).await;
        let versions = match read {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(format!("reading {STATE_TOPIC} on {}: {e}", s.name)),
            Err(_) => return Err(format!("reading {STATE_TOPIC} on {} timed out", s.name)),
        };
        tracing::info!(site = %s.name, keys = versions.len(), ms = started.elapsed().as_millis() as u64,
            "conflict state restored");
        if let Ok(mut st) = self.state.lock() {
            let sv = st.entry(site).or_default();
            // Versions resolved meanwhile (none: callers wait for this) win.
            for ((topic, key), v) in versions {
                if sv
                    .by_topic
                    .get(&topic)
                    .is_none_or(|m| !m.contains_key(&key))
                {
                    sv.insert(&topic, key, v);
                }
            }
            sv.restored = true;
        }
        Ok(())
    }

    fn is_restored(&self, site: u16) -> bool {
        self.state
            .lock()
            .map(|s| s.get(&site).is_some_and(|v| v.restored))
            .unwrap_or(false)
    }

    pub fn get(&self, site: u16, topic: &str, key: &Bytes) -> Option<Version> {
        let st = self.state.lock().ok()?;
        st.get(&site)?.by_topic.get(topic)?.get(key).cloned()
    }

    /// Stores new versions in memory (call [`Conflicts::save`] before the
    /// records they belong to are written).
    pub fn put(&self, site: u16, topic: &str, entries: &[(Bytes, Version)]) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        let sv = st.entry(site).or_default();
        for (k, v) in entries {
            sv.insert(topic, k.clone(), v.clone());
        }
        if sv.keys > self.max_keys {
            let forgotten = sv.shed();
            tracing::warn!(site, forgotten, max_keys = self.max_keys,
                "conflict state over its key limit; some keys forgotten (their next record counts as a first write)");
        }
    }

    /// Writes versions to the site's state topic; returns once the site
    /// acknowledged them.
    pub async fn save(
        &self,
        site: u16,
        topic: &str,
        entries: &[(Bytes, Version)],
    ) -> Result<(), String> {
        if entries.is_empty() {
            return Ok(());
        }
        let Some(s) = self.sites.get(usize::from(site)) else {
            return Err(format!("no site {site}"));
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let records: Vec<WireRecord> = entries
            .iter()
            .map(|(k, v)| WireRecord {
                offset: 0,
                timestamp: now,
                key: Some(encode_key(topic, k)),
                value: Some(encode_version(v)),
                headers: Vec::new(),
            })
            .collect();
        let b = batch::encode(&records, &BatchParams::PLAIN).map_err(|e| e.to_string())?;
        let mut c = SiteClient::new(s.clone());
        let _one = match self.io.get(usize::from(site)) {
            Some(m) => Some(m.lock().await),
            None => None,
        };
        c.ensure_compacted(STATE_TOPIC).await?;
        let w = tokio::time::timeout(
            Duration::from_secs(10),
            c.produce(STATE_TOPIC, vec![(0, b)]),
        )
        .await
        .map_err(|_| format!("writing {STATE_TOPIC} on {} timed out", s.name))?;
        match w.first() {
            Some(w) if w.error == 0 => Ok(()),
            Some(w) => Err(format!(
                "writing {STATE_TOPIC} on {}: error {}",
                s.name, w.error
            )),
            None => Err(format!("writing {STATE_TOPIC} on {}: no answer", s.name)),
        }
    }
}

/// `east=3,west=1` → counters indexed by site id; unknown names and
/// malformed entries are ignored (a clock is advice from the client).
pub fn parse_vclock(v: &[u8], sites: &[String]) -> Vec<u64> {
    let mut out = vec![0u64; sites.len()];
    let Ok(s) = std::str::from_utf8(v) else {
        return Vec::new();
    };
    for part in s.split(',') {
        let Some((name, n)) = part.trim().split_once('=') else {
            continue;
        };
        if let (Some(i), Ok(n)) = (
            sites.iter().position(|s| s == name.trim()),
            n.trim().parse::<u64>(),
        ) {
            out[i] = n;
        }
    }
    out
}

fn encode_key(topic: &str, key: &Bytes) -> Bytes {
    let mut b = BytesMut::with_capacity(2 + topic.len() + key.len());
    b.put_u16(topic.len() as u16);
    b.put_slice(topic.as_bytes());
    b.put_slice(key);
    b.freeze()
}

fn decode_key(mut b: Bytes) -> Option<Key> {
    if b.len() < 2 {
        return None;
    }
    let n = usize::from(b.get_u16());
    if b.len() < n {
        return None;
    }
    let topic = String::from_utf8(b.split_to(n).to_vec()).ok()?;
    Some((topic, b))
}

fn encode_version(v: &Version) -> Bytes {
    let state = &v.state[..v.state.len().min(MAX_STATE_BYTES)];
    let mut b = BytesMut::with_capacity(1 + 8 + 2 + 4 + v.vclock.len() * 8 + 4 + state.len());
    b.put_u8(FORMAT);
    b.put_i64(v.timestamp_ms);
    b.put_u16(v.site);
    b.put_u32(v.vclock.len() as u32);
    for c in &v.vclock {
        b.put_u64(*c);
    }
    b.put_u32(state.len() as u32);
    b.put_slice(state);
    b.freeze()
}

fn decode_version(mut b: Bytes) -> Option<Version> {
    if b.remaining() < 1 + 8 + 2 + 4 || b.get_u8() != FORMAT {
        return None;
    }
    let timestamp_ms = b.get_i64();
    let site = b.get_u16();
    let n = b.get_u32() as usize;
    if b.remaining() < n.checked_mul(8)? + 4 {
        return None;
    }
    let vclock = (0..n).map(|_| b.get_u64()).collect();
    let len = b.get_u32() as usize;
    if b.remaining() != len {
        return None;
    }
    Some(Version {
        timestamp_ms,
        site,
        vclock,
        state: b.to_vec(),
    })
}

/// Every saved version (the last per key wins, as compaction will keep).
async fn read_all(c: &mut SiteClient) -> Result<HashMap<Key, Version>, String> {
    let mut out = HashMap::new();
    c.read_state_topic(STATE_TOPIC, |r| {
        let Some(k) = r.key.clone().and_then(decode_key) else {
            return;
        };
        match r.value.clone().and_then(decode_version) {
            Some(v) => {
                out.insert(k, v);
            }
            None => {
                out.remove(&k);
            }
        }
    })
    .await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_keys_round_trip() {
        let v = Version {
            timestamp_ms: -5,
            site: 3,
            vclock: vec![1, 0, u64::MAX],
            state: b"pn".to_vec(),
        };
        assert_eq!(decode_version(encode_version(&v)), Some(v));
        let k = encode_key("orders", &Bytes::from_static(b"\0k"));
        assert_eq!(
            decode_key(k),
            Some(("orders".to_string(), Bytes::from_static(b"\0k")))
        );
        assert_eq!(decode_version(Bytes::from_static(b"\x02junk")), None);
        assert_eq!(decode_version(Bytes::from_static(b"\x01\0\0")), None);
        assert_eq!(decode_key(Bytes::from_static(b"\0\x09ab")), None);
    }

    #[test]
    fn vclock_header_by_site_name() {
        let sites = vec!["east".to_string(), "west".to_string()];
        assert_eq!(parse_vclock(b"west=4, east=2", &sites), vec![2, 4]);
        assert_eq!(parse_vclock(b"mars=9,east=x,west=1", &sites), vec![0, 1]);
        assert_eq!(parse_vclock(b"\xff", &sites), Vec::<u64>::new());
    }

    #[tokio::test]
    async fn one_writer_per_site_and_topic_at_a_time() {
        let c = Conflicts::new(Vec::new(), 10);
        let east_into_agg = c.writer(2, "counters").await;
        // Another topic or site has its own turn.
        drop(c.writer(2, "other").await);
        drop(c.writer(1, "counters").await);
        let west = {
            let c = c.clone();
            tokio::spawn(async move {
                let _turn = c.writer(2, "counters").await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!west.is_finished(), "a second writer waits for the turn");
        drop(east_into_agg);
        tokio::time::timeout(Duration::from_secs(10), west)
            .await
            .expect("the turn passes on")
            .expect("task");
    }
}
