//! Site health: is a site able to take traffic right now?
//!
//! **Active checks.** Every `failover.health.interval_ms` each site gets a
//! fresh TCP connection, an ApiVersions and a Metadata round trip, all within
//! `timeout_ms`. A fresh connection (not the control connection) is what
//! notices a network partition: an established connection into a blackhole
//! only fails when a request times out, a new one fails to connect.
//!
//! **Passive signals.** Live traffic sees failures first (a client's upstream
//! connection refused or dropped). Those do not mark a site down by
//! themselves (one broken broker connection is not a dead site) but trigger
//! an immediate active check, and while a site is failing its checks repeat
//! quickly instead of once per interval, so a killed broker is detected in
//! well under a second and a partition in about `unhealthy_after x timeout_ms`.
//!
//! **Thresholds.** `unhealthy_after` consecutive failed checks mark a site
//! down, `healthy_after` consecutive good ones mark it up again; a single
//! lost probe never triggers a failover.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, MetadataRequest};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::codec;
use crate::config::HealthConfig;
use crate::metrics::Metrics;
use crate::upstream::{Site, UpstreamConn};

/// Spacing of the repeated checks while a site is failing them.
const RECHECK: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Serialize)]
pub struct HealthStatus {
    pub site: String,
    pub healthy: bool,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    pub last_error: Option<String>,
    pub last_check_unix_ms: Option<u64>,
    pub last_latency_ms: Option<f64>,
    /// Errors seen on live traffic (each one triggered a check).
    pub passive_signals: u64,
}

/// Health of one site: its checker task, passive signal intake, and the
/// current verdict (a watch, so the failover supervisor reacts at once).
pub struct SiteHealth {
    pub site: Arc<Site>,
    status: Mutex<HealthStatus>,
    healthy: watch::Sender<bool>,
    kick: Notify,
    passive: AtomicU64,
}

impl SiteHealth {
    fn new(site: Arc<Site>) -> Self {
        SiteHealth {
            status: Mutex::new(HealthStatus {
                site: site.name.clone(),
                // Innocent until proven otherwise: a failover needs
                // `unhealthy_after` failed checks, also right after start.
                healthy: true,
                consecutive_failures: 0,
                consecutive_successes: 0,
                last_error: None,
                last_check_unix_ms: None,
                last_latency_ms: None,
                passive_signals: 0,
            }),
            healthy: watch::Sender::new(true),
            site,
            kick: Notify::new(),
            passive: AtomicU64::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        *self.healthy.borrow()
    }

    pub fn watch(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    pub fn status(&self) -> Option<HealthStatus> {
        let mut s = self.status.lock().ok()?.clone();
        s.passive_signals = self.passive.load(Ordering::Relaxed);
        Some(s)
    }

    /// A failure seen on live traffic: check now.
    pub fn passive_failure(&self) {
        self.passive.fetch_add(1, Ordering::Relaxed);
        self.kick.notify_one();
    }

    /// Runs one check now and returns the verdict afterwards (used before a
    /// manual switch, so it acts on fresh information).
    pub async fn check_now(&self, cfg: &HealthConfig, metrics: &Metrics) -> bool {
        let r = probe(&self.site, Duration::from_millis(cfg.timeout_ms)).await;
        self.record(r, cfg, metrics);
        self.is_healthy()
    }

    fn record(&self, r: Result<Duration, String>, cfg: &HealthConfig, metrics: &Metrics) {
        let Ok(mut st) = self.status.lock() else {
            return;
        };
        st.last_check_unix_ms = Some(now_ms());
        let was = st.healthy;
        match r {
            Ok(latency) => {
                metrics.health_check(&self.site.name, true);
                st.consecutive_failures = 0;
                st.consecutive_successes = st.consecutive_successes.saturating_add(1);
                st.last_latency_ms = Some(latency.as_secs_f64() * 1000.0);
                if !st.healthy && st.consecutive_successes >= cfg.healthy_after {
                    st.healthy = true;
                }
            }
            Err(e) => {
                metrics.health_check(&self.site.name, false);
                st.consecutive_successes = 0;
                st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                if st.healthy && st.consecutive_failures >= cfg.unhealthy_after {
                    st.healthy = false;
                }
                if st.consecutive_failures == 1 || st.healthy != was {
                    tracing::warn!(site = %self.site.name, failures = st.consecutive_failures,
                        error = %e, "site health check failed");
                }
                st.last_error = Some(e);
            }
        }
        if st.healthy != was {
            if st.healthy {
                tracing::info!(site = %self.site.name, "site healthy again");
            } else {
                tracing::error!(site = %self.site.name, failures = st.consecutive_failures,
                    last_error = st.last_error.as_deref().unwrap_or(""), "site unhealthy");
            }
            metrics.site_healthy(&self.site.name, st.healthy);
            let healthy = st.healthy;
            drop(st);
            self.healthy.send_replace(healthy);
        }
    }
}

/// Health of every site.
pub struct Health {
    sites: Vec<Arc<SiteHealth>>,
    cfg: HealthConfig,
}

impl Health {
    pub fn new(sites: &[Arc<Site>], cfg: HealthConfig, metrics: &Metrics) -> Arc<Self> {
        for s in sites {
            metrics.site_healthy(&s.name, true);
        }
        Arc::new(Health {
            sites: sites
                .iter()
                .map(|s| {
                    let h = Arc::new(SiteHealth::new(s.clone()));
                    let hook = Arc::downgrade(&h);
                    s.on_failure(Box::new(move || {
                        if let Some(h) = hook.upgrade() {
                            h.passive_failure();
                        }
                    }));
                    h
                })
                .collect(),
            cfg,
        })
    }

    pub fn site(&self, i: usize) -> Option<&Arc<SiteHealth>> {
        self.sites.get(i)
    }

    pub fn config(&self) -> &HealthConfig {
        &self.cfg
    }

    pub fn status(&self) -> Vec<HealthStatus> {
        self.sites.iter().filter_map(|s| s.status()).collect()
    }

    /// Starts one checker per site.
    pub fn start(self: &Arc<Self>, metrics: Arc<Metrics>, stop: watch::Receiver<bool>) {
        for s in &self.sites {
            tokio::spawn(check_loop(
                s.clone(),
                self.cfg.clone(),
                metrics.clone(),
                stop.clone(),
            ));
        }
    }
}

async fn check_loop(
    h: Arc<SiteHealth>,
    cfg: HealthConfig,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let interval = Duration::from_millis(cfg.interval_ms);
    let timeout = Duration::from_millis(cfg.timeout_ms);
    loop {
        let started = Instant::now();
        let r = probe(&h.site, timeout).await;
        let failed = r.is_err();
        h.record(r, &cfg, &metrics);
        // Failing (or recovering): look again soon, so thresholds are
        // reached in a fraction of the interval.
        let settling = h
            .status
            .lock()
            .map(|s| {
                (s.consecutive_failures > 0 && s.healthy)
                    || (!s.healthy && s.consecutive_successes > 0)
            })
            .unwrap_or(false);
        let wait = if settling || failed && !h.is_healthy() {
            RECHECK.min(interval)
        } else {
            interval
        }
        .saturating_sub(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = h.kick.notified() => {}
            _ = stop.changed() => return,
        }
    }
}

/// One active check: connect, ApiVersions, Metadata (no topics), on a fresh
/// connection to the first bootstrap address that accepts.
async fn probe(site: &Site, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let run = async {
        let mut last = String::from("no bootstrap address");
        for addr in &site.bootstrap {
            match round_trips(site, addr, timeout).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

async fn round_trips(site: &Site, addr: &str, timeout: Duration) -> Result<(), String> {
    let conn = UpstreamConn::connect(
        addr,
        timeout,
        site.settings.max_frame_bytes,
        site.conn_gauge.clone(),
        site.settings.tls.clone(),
        site.settings.sasl.clone(),
    )
    .await;
    site.note_auth(addr, site.settings.sasl.as_deref(), &conn);
    let conn = conn.map_err(|e| e.to_string())?;
    let client = Some(StrBytes::from_static_str("switchyard-health"));
    let mut av = ApiVersionsRequest::default();
    av.client_software_name = StrBytes::from_static_str("switchyard");
    av.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
    let frame = codec::encode_request(ApiKey::ApiVersions, 0, client.clone(), &av)
        .map_err(|e| e.to_string())?;
    call(&conn, frame, site, ApiKey::ApiVersions, timeout).await?;
    let mut md = MetadataRequest::default();
    md.topics = Some(Vec::new());
    let frame =
        codec::encode_request(ApiKey::Metadata, 1, client, &md).map_err(|e| e.to_string())?;
    let resp = call(&conn, frame, site, ApiKey::Metadata, timeout).await?;
    codec::decode_response_body::<kafka_protocol::messages::MetadataResponse>(
        ApiKey::Metadata,
        1,
        &resp,
    )
    .map_err(|e| format!("bad Metadata answer: {e}"))?;
    Ok(())
}

async fn call(
    conn: &UpstreamConn,
    frame: bytes::Bytes,
    site: &Site,
    api: ApiKey,
    timeout: Duration,
) -> Result<bytes::Bytes, String> {
    let pending = conn
        .send(frame, Some(site.latency(api)))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no response slot")?;
    pending.wait(timeout).await.map_err(|e| e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
