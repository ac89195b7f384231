//! Durable failover state: which side serves a route, and its epoch.
//!
//! Kept in a compacted single-partition topic, `__switchyard_failover`, on
//! both sites of the route (whichever is reachable), keyed by route name.
//! Without it a Switchyard restarted while failed over would route to the
//! old primary again, which by then may be back with stale data: a split
//! brain in time. At start the highest epoch found on any reachable site
//! wins; running instances re-read it every few seconds, so a switch made
//! by one instance is followed by the others.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::RouteState;
use crate::codec::batch::{self, BatchParams, WireRecord};
use crate::upstream::client::SiteClient;
use crate::upstream::Site;

pub const STATE_TOPIC: &str = "__switchyard_failover";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Saved {
    pub epoch: u64,
    /// Served by the standby.
    pub standby: bool,
}

#[derive(Serialize, Deserialize)]
struct Value {
    epoch: u64,
    side: String,
    at_unix_ms: u64,
}

/// Writes the route's state to both of its sites (best effort: the site
/// that is down gets it with the next switch; `load` takes the highest).
pub async fn save(sites: &[Arc<Site>], rs: &RouteState, saved: &Saved) {
    let value = Value {
        epoch: saved.epoch,
        side: if saved.standby { "standby" } else { "primary" }.into(),
        at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    };
    let Ok(json) = serde_json::to_vec(&value) else {
        return;
    };
    for si in [rs.standby, rs.primary] {
        let Some(site) = sites.get(si) else { continue };
        let mut c = SiteClient::new(site.clone());
        let r = tokio::time::timeout(Duration::from_secs(5), write(&mut c, &rs.name, &json)).await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(route = %rs.name, site = %site.name, error = %e, "could not persist the failover state")
            }
            Err(_) => {
                tracing::warn!(route = %rs.name, site = %site.name, "persisting the failover state timed out")
            }
        }
    }
}

async fn write(c: &mut SiteClient, route: &str, json: &[u8]) -> Result<(), String> {
    c.ensure_compacted(STATE_TOPIC).await?;
    let rec = WireRecord {
        offset: 0,
        timestamp: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
        key: Some(Bytes::copy_from_slice(route.as_bytes())),
        value: Some(Bytes::copy_from_slice(json)),
        headers: Vec::new(),
    };
    let b = batch::encode(&[rec], &BatchParams::PLAIN).map_err(|e| e.to_string())?;
    let w = c.produce(STATE_TOPIC, vec![(0, b)]).await;
    match w.first() {
        Some(w) if w.error == 0 => Ok(()),
        Some(w) => Err(format!(
            "error {}{}",
            w.error,
            w.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        )),
        None => Err("no answer".into()),
    }
}

/// The route's saved state with the highest epoch on any reachable site.
pub async fn load(sites: &[Arc<Site>], rs: &RouteState, wait: Duration) -> Option<Saved> {
    let mut best: Option<Saved> = None;
    for si in [rs.primary, rs.standby] {
        let Some(site) = sites.get(si) else { continue };
        let mut c = SiteClient::new(site.clone());
        let found = tokio::time::timeout(wait, read(&mut c, &rs.name)).await;
        if let Ok(Ok(Some(s))) = found {
            if best.as_ref().is_none_or(|b| s.epoch > b.epoch) {
                best = Some(s);
            }
        }
    }
    best
}

async fn read(c: &mut SiteClient, route: &str) -> Result<Option<Saved>, String> {
    let mut out = None;
    c.read_state_topic(STATE_TOPIC, |r| {
        if r.key.as_deref() != Some(route.as_bytes()) {
            return;
        }
        if let Some(v) = r
            .value
            .as_deref()
            .and_then(|v| serde_json::from_slice::<Value>(v).ok())
        {
            out = Some(Saved {
                epoch: v.epoch,
                standby: v.side == "standby",
            });
        }
    })
    .await?;
    Ok(out)
}
