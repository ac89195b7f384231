//! Upstream clusters ("sites"): their layout, their API versions, their
//! coordinators, and the connections to their brokers.
//!
//! Each client session owns its upstream connections ([`BrokerPool`]), one per
//! upstream broker it talks to, exactly as the client would if it connected
//! directly. Sharing connections between clients would be cheaper in sockets,
//! but a broker processes one request per connection at a time, so one
//! consumer's long-poll Fetch would stall another client's Produce. The proxy's
//! own requests (metadata refresh, coordinator lookup, ApiVersions) go over a
//! separate control connection per site.

pub mod auth;
pub mod client;
pub mod conn;
pub mod producer_ids;
pub mod view;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, MetadataRequest, MetadataResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use prometheus::{Histogram, IntGauge};
use tokio::sync::Mutex as AsyncMutex;

pub use conn::{ConnHooks, ConnOptions, PendingResponse, UpstreamConn, UpstreamError};
pub use view::{BrokerAddr, ClusterView};

use crate::codec;
use crate::metrics::Metrics;

/// Supported version range per API key, as advertised by an upstream cluster.
pub use crate::codec::versions::ApiRanges;

/// Client id Switchyard uses for its own upstream requests.
const CONTROL_CLIENT_ID: &str = "switchyard";

/// Refreshes triggered by a routing miss are at most this frequent, so a client
/// hammering a missing topic cannot turn into a metadata storm upstream.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(200);

/// Refreshes for a stale view (a broker down, leaders moved) are at most
/// this frequent.
const MIN_STALE_REFRESH_GAP: Duration = Duration::from_millis(100);

pub struct SiteSettings {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_frame_bytes: u32,
    /// TLS to the site's brokers (`sites[].tls`), for every connection.
    pub tls: Option<Arc<crate::tls::ClientTls>>,
    /// SASL to the site's brokers (`sites[].sasl`), for every connection
    /// but those of clients with an identity of their own there.
    pub sasl: Option<Arc<crate::sasl::client::ClientSasl>>,
    /// Client principals (by name, `User:` taken off) with their own
    /// identity on the site (`sites[].principals`).
    pub principals: HashMap<String, Arc<crate::sasl::client::ClientSasl>>,
}

/// One upstream cluster.
pub struct Site {
    pub name: String,
    pub bootstrap: Vec<String>,
    pub settings: SiteSettings,
    view: ArcSwap<ClusterView>,
    /// Bumped with every new view, so caches derived from views (the virtual
    /// topic-id map) know when to rebuild.
    generation: std::sync::atomic::AtomicU64,
    versions: ArcSwapOption<ApiRanges>,
    control: AsyncMutex<Option<UpstreamConn>>,
    refresh_gate: AsyncMutex<Option<Instant>>,
    reachable: AtomicBool,
    refresh_queued: AtomicBool,
    /// Set when something says the view is out of date; the next refresh then
    /// runs even inside `MIN_REFRESH_GAP`.
    stale: AtomicBool,
    coordinators: Mutex<HashMap<(i8, String), i32>>,
    /// Brokers that failed lately (see `note_broker_down`); `any_down` keeps
    /// the lock off the hot path while every broker is fine.
    down: Mutex<HashMap<i32, Down>>,
    any_down: AtomicBool,
    /// Per broker: bumped to cut every connection to it (it left the cluster).
    broker_cuts: Mutex<HashMap<i32, tokio::sync::watch::Sender<u64>>>,
    /// The broker the control connection is open to, when known.
    control_broker: Mutex<Option<i32>>,
    me: Weak<Site>,
    pub conn_gauge: IntGauge,
    metrics: Arc<Metrics>,
    /// Told about failures seen on live traffic (site health's passive signal).
    failure_hook: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Produce requests sent to this site and not answered yet; a failover
    /// waits for them before it lets the other site take writes.
    writes_in_flight: std::sync::atomic::AtomicI64,
    writes_done: tokio::sync::Notify,
    /// Bumped to cut every connection to the site at once (failover fence).
    sever: tokio::sync::watch::Sender<u64>,
    /// When a failed SASL authentication was last logged.
    last_auth_warn: Mutex<Option<Instant>>,
}

/// Failed authentications to a site are logged at most this often.
const AUTH_WARN_GAP: Duration = Duration::from_secs(30);

/// A broker that failed lately.
struct Down {
    since: Instant,
    /// No new connection is tried before this.
    retry_at: Instant,
    failures: u32,
}

/// Counts one produce request in flight to a site until dropped.
pub struct WriteGuard(Arc<Site>);

impl Drop for WriteGuard {
    fn drop(&mut self) {
        if self.0.writes_in_flight.fetch_sub(1, Ordering::AcqRel) <= 1 {
            self.0.writes_done.notify_waiters();
        }
    }
}

/// Outcome of a coordinator lookup on the upstream.
#[derive(Debug, Clone)]
pub enum Coordinator {
    Broker(i32),
    /// The upstream answered with this error code (e.g. COORDINATOR_NOT_AVAILABLE).
    Error(i16, Option<String>),
}

impl Site {
    pub fn new(
        name: &str,
        bootstrap: Vec<String>,
        settings: SiteSettings,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Site {
            me: me.clone(),
            any_down: AtomicBool::new(false),
            broker_cuts: Mutex::new(HashMap::new()),
            control_broker: Mutex::new(None),
            name: name.to_string(),
            bootstrap,
            settings,
            view: ArcSwap::from_pointee(ClusterView::default()),
            generation: std::sync::atomic::AtomicU64::new(0),
            versions: ArcSwapOption::empty(),
            control: AsyncMutex::new(None),
            refresh_gate: AsyncMutex::new(None),
            reachable: AtomicBool::new(false),
            refresh_queued: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            coordinators: Mutex::new(HashMap::new()),
            down: Mutex::new(HashMap::new()),
            conn_gauge: metrics.upstream_connections.with_label_values(&[name]),
            metrics,
            failure_hook: std::sync::OnceLock::new(),
            writes_in_flight: std::sync::atomic::AtomicI64::new(0),
            writes_done: tokio::sync::Notify::new(),
            sever: tokio::sync::watch::Sender::new(0),
            last_auth_warn: Mutex::new(None),
        })
    }

    /// Installs the passive-failure hook (once, by site health).
    pub fn on_failure(&self, hook: Box<dyn Fn() + Send + Sync>) {
        let _ = self.failure_hook.set(hook);
    }

    /// A failure seen on live traffic (connect refused, connection dropped).
    pub fn note_failure(&self) {
        if let Some(h) = self.failure_hook.get() {
            h();
        }
    }

    /// Marks a produce request in flight until the guard drops.
    pub fn write_started(self: &Arc<Self>) -> WriteGuard {
        self.writes_in_flight.fetch_add(1, Ordering::AcqRel);
        WriteGuard(self.clone())
    }

    /// Waits until no produce request is in flight to this site; false on timeout.
    pub async fn writes_drained(&self, deadline: Instant) -> bool {
        loop {
            let done = self.writes_done.notified();
            if self.writes_in_flight.load(Ordering::Acquire) <= 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), done)
                .await
                .is_err()
            {
                return self.writes_in_flight.load(Ordering::Acquire) <= 0;
            }
        }
    }

    pub fn writes_in_flight(&self) -> i64 {
        self.writes_in_flight.load(Ordering::Acquire)
    }

    /// Cuts every open connection to the site (clients', the tee's, the
    /// control connection) with a reset, dropping unsent requests: after a
    /// failover nothing Switchyard sent earlier may still reach the old site
    /// when the network heals. Waiting callers get a connection error.
    pub fn sever(&self) {
        self.sever.send_modify(|g| *g += 1);
        if let Ok(mut c) = self.control.try_lock() {
            *c = None;
        }
    }

    /// For new connections: the signal that cuts them.
    pub fn sever_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sever.subscribe()
    }

    /// Opens a connection to one of this site's brokers (`broker` when its
    /// id is known), cut by `sever` and by the broker leaving the cluster;
    /// its failures and first answer update the broker's down state.
    pub async fn connect(
        &self,
        broker: Option<i32>,
        addr: &str,
    ) -> Result<UpstreamConn, UpstreamError> {
        self.connect_as(broker, addr, self.settings.sasl.clone())
            .await
    }

    /// The identity a client's traffic authenticates as on this site: the
    /// principal's own (`sites[].principals`) or Switchyard's.
    pub fn identity_for(
        &self,
        principal: Option<&str>,
    ) -> Option<Arc<crate::sasl::client::ClientSasl>> {
        principal
            .and_then(|p| self.settings.principals.get(p))
            .or(self.settings.sasl.as_ref())
            .cloned()
    }

    /// [`connect`](Self::connect) authenticating as `sasl`.
    pub async fn connect_as(
        &self,
        broker: Option<i32>,
        addr: &str,
        sasl: Option<Arc<crate::sasl::client::ClientSasl>>,
    ) -> Result<UpstreamConn, UpstreamError> {
        let hooks = broker.map(|b| {
            let (failed, answered) = (self.me.clone(), self.me.clone());
            Arc::new(ConnHooks {
                failed: Box::new(move |reason| {
                    if let Some(s) = failed.upgrade() {
                        s.note_broker_down(b, reason);
                    }
                }),
                answered: Box::new(move || {
                    if let Some(s) = answered.upgrade() {
                        s.note_broker_up(b);
                    }
                }),
            })
        });
        let broker_cut = broker.map(|b| self.broker_cut(b));
        let opened = UpstreamConn::open(
            addr,
            ConnOptions {
                connect_timeout: self.settings.connect_timeout,
                max_frame_bytes: self.settings.max_frame_bytes,
                open_gauge: self.conn_gauge.clone(),
                site_cut: Some(self.sever_signal()),
                broker_cut,
                hooks,
                tls: self.settings.tls.clone(),
                sasl: sasl.clone(),
            },
        )
        .await;
        self.note_auth(addr, sasl.as_deref(), &opened);
        if let (Err(e), Some(b)) = (&opened, broker) {
            self.note_broker_down(b, e.reason());
        }
        opened
    }

    /// Counts a SASL authentication to one of the site's brokers, and says
    /// why one failed (at most every `AUTH_WARN_GAP`: every new connection
    /// retries it).
    pub fn note_auth<T>(
        &self,
        addr: &str,
        sasl: Option<&crate::sasl::client::ClientSasl>,
        opened: &Result<T, UpstreamError>,
    ) {
        let Some(sasl) = sasl else {
            return;
        };
        let result = match opened {
            Ok(_) => "ok",
            Err(UpstreamError::Auth { .. }) => "failed",
            // Never got as far as authenticating.
            Err(_) => return,
        };
        self.metrics
            .upstream
            .sasl_authentications
            .with_label_values(&[self.name.as_str(), sasl.mechanism(), result])
            .inc();
        if let Err(e) = opened {
            let now = Instant::now();
            if let Ok(mut last) = self.last_auth_warn.lock() {
                if last.is_none_or(|t| now.duration_since(t) >= AUTH_WARN_GAP) {
                    *last = Some(now);
                    tracing::warn!(site = %self.name, addr, user = sasl.username(), error = %e,
                        "cannot authenticate to the site's broker; check sites[].sasl (or sites[].principals)");
                }
            }
        }
    }

    fn broker_cut(&self, broker: i32) -> tokio::sync::watch::Receiver<u64> {
        match self.broker_cuts.lock() {
            Ok(mut cuts) => cuts
                .entry(broker)
                .or_insert_with(|| tokio::sync::watch::Sender::new(0))
                .subscribe(),
            Err(_) => tokio::sync::watch::Sender::new(0).subscribe(),
        }
    }

    pub fn view(&self) -> Arc<ClusterView> {
        self.view.load_full()
    }

    pub fn versions(&self) -> Option<Arc<ApiRanges>> {
        self.versions.load_full()
    }

    /// Reachable: the last metadata refresh worked and the control connection
    /// has not dropped since.
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Acquire)
    }

    pub fn latency(&self, api: ApiKey) -> Histogram {
        self.metrics
            .upstream_request_duration
            .with_label_values(&[self.name.as_str(), crate::codec::api_name(api)])
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A view as if a refresh had brought it (stage and dispatch tests).
    #[cfg(test)]
    pub fn set_view(&self, v: ClusterView) {
        self.store_view(v)
    }

    fn store_view(&self, v: ClusterView) {
        let old = self.view.swap(Arc::new(v));
        self.generation.fetch_add(1, Ordering::AcqRel);
        // A broker the cluster no longer lists (KRaft leaves fenced brokers
        // out: crashed, frozen, shut down) serves nothing any more. Requests
        // still waiting on it would hold every answer queued behind them on
        // a client's connection until they time out; cut them now, so their
        // partitions are answered with a retriable error and retried on the
        // new leaders.
        if old.brokers.is_empty() {
            return;
        }
        let new = self.view.load();
        if new.brokers.is_empty() {
            return;
        }
        for b in old.brokers.keys().filter(|b| !new.brokers.contains_key(b)) {
            tracing::info!(site = %self.name, broker = b, "broker left the cluster's metadata; its connections are cut");
            if let Ok(cuts) = self.broker_cuts.lock() {
                if let Some(c) = cuts.get(b) {
                    c.send_modify(|g| *g += 1);
                }
            }
        }
        // Nothing routes to a broker the cluster does not list: its down
        // mark ends here (it is a new broker to us when it comes back).
        if self.any_down.load(Ordering::Acquire) {
            if let Ok(mut down) = self.down.lock() {
                down.retain(|b, _| {
                    let keep = new.brokers.contains_key(b);
                    if !keep {
                        self.metrics
                            .upstream
                            .broker_down
                            .with_label_values(&[self.name.as_str(), b.to_string().as_str()])
                            .set(0);
                    }
                    keep
                });
                self.any_down.store(!down.is_empty(), Ordering::Release);
            }
        }
    }

    /// Folds a Metadata response seen on a client's behalf into the view.
    pub fn absorb_metadata(&self, md: &MetadataResponse) {
        let merged = self.view.load().merged(md);
        self.store_view(merged);
    }

    /// Addresses to try for a broker id; bootstrap addresses when the id is not
    /// (yet) known.
    pub fn broker_addr(&self, broker: i32) -> Option<String> {
        self.view.load().brokers.get(&broker).map(BrokerAddr::addr)
    }

    async fn control_conn(&self) -> Result<UpstreamConn, UpstreamError> {
        let mut guard = self.control.lock().await;
        if let Some(c) = guard.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
            self.reachable.store(false, Ordering::Release);
        }
        // Known brokers first (the cluster may have moved away from the
        // bootstrap hosts), those that failed lately last, then the
        // configured bootstrap list.
        let view = self.view();
        let mut candidates: Vec<(bool, Option<i32>, String)> = view
            .brokers
            .values()
            .map(|b| (self.is_down(b.node_id), Some(b.node_id), b.addr()))
            .collect();
        candidates.sort();
        candidates.extend(self.bootstrap.iter().map(|a| (true, None, a.clone())));
        let mut last = UpstreamError::NoBroker(self.name.clone());
        for (_, broker, addr) in candidates {
            match self.connect(broker, &addr).await {
                Ok(c) => {
                    *guard = Some(c.clone());
                    if let Ok(mut cb) = self.control_broker.lock() {
                        *cb = broker;
                    }
                    return Ok(c);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sends one of the proxy's own requests over the control connection.
    async fn control_call<Req: Encodable, Resp: Decodable>(
        &self,
        api: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp, UpstreamError> {
        // A broker that dies or freezes under the control connection costs
        // one short timeout, then the request goes to another broker.
        match self.control_call_once(api, version, req).await {
            Err(e @ (UpstreamError::Timeout(_) | UpstreamError::Closed(_))) => {
                *self.control.lock().await = None;
                if !self.has_live_broker() {
                    return Err(e);
                }
                self.control_call_once(api, version, req).await
            }
            other => other,
        }
    }

    async fn control_call_once<Req: Encodable, Resp: Decodable>(
        &self,
        api: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp, UpstreamError> {
        let frame = codec::encode_request(
            api,
            version,
            Some(StrBytes::from_static_str(CONTROL_CLIENT_ID)),
            req,
        )
        .map_err(|e| protocol_err(&self.name, e))?;
        let (resp, addr) = self.control_raw(api, frame).await?;
        let conn_addr = addr.as_str();
        // ApiVersions answers in a v0 body when it does not like our version.
        let resp_version = if api == ApiKey::ApiVersions && api_versions_unsupported(&resp) {
            0
        } else {
            version
        };
        codec::decode_response_body::<Resp>(api, resp_version, &resp)
            .map_err(|e| protocol_err(conn_addr, e))
    }

    /// Sends a request frame over the control connection; the answer and
    /// the address it came from.
    async fn control_raw(
        &self,
        api: ApiKey,
        frame: Bytes,
    ) -> Result<(Bytes, String), UpstreamError> {
        let conn = self.control_conn().await?;
        let pending = conn
            .send(frame, Some(self.latency(api)))
            .await?
            .ok_or_else(|| protocol_err(conn.addr(), "no response slot"))?;
        Ok((
            pending.wait(self.control_timeout()).await?,
            conn.addr().to_string(),
        ))
    }

    /// Sends a client's request (one any broker can answer) over the control
    /// connection, trying a second broker if the first fails: the retry for
    /// a request whose broker failed after it was sent.
    pub async fn control_forward(&self, api: ApiKey, frame: Bytes) -> Result<Bytes, UpstreamError> {
        // With every broker failed lately the retry would only wait out
        // another timeout (answers behind it on the client's connection with
        // it); the client's own retry after a retriable answer comes sooner.
        if !self.has_live_broker() {
            return Err(UpstreamError::Down(format!(
                "every broker of site {} is",
                self.name
            )));
        }
        match self.control_raw(api, frame.clone()).await {
            Err(UpstreamError::Timeout(_) | UpstreamError::Closed(_)) => {
                *self.control.lock().await = None;
                Ok(self.control_raw(api, frame).await?.0)
            }
            other => Ok(other?.0),
        }
    }

    /// Bound for Switchyard's own requests (Metadata, ApiVersions,
    /// FindCoordinator, InitProducerId): any live broker answers them in
    /// milliseconds, so a stuck one is given up on long before a client's
    /// request timeout.
    pub fn control_timeout(&self) -> Duration {
        self.settings.request_timeout.min(CONTROL_TIMEOUT)
    }

    async fn fetch_versions(&self) -> Result<Arc<ApiRanges>, UpstreamError> {
        if let Some(v) = self.versions.load_full() {
            return Ok(v);
        }
        let mut req = ApiVersionsRequest::default();
        req.client_software_name = StrBytes::from_static_str("switchyard");
        req.client_software_version = StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
        let mut resp: ApiVersionsResponse = self.control_call(ApiKey::ApiVersions, 3, &req).await?;
        if resp.error_code == crate::codec::errors::UNSUPPORTED_VERSION {
            resp = self.control_call(ApiKey::ApiVersions, 0, &req).await?;
        }
        if resp.error_code != 0 {
            return Err(UpstreamError::Protocol {
                addr: self.name.clone(),
                reason: format!("ApiVersions error code {}", resp.error_code),
            });
        }
        let ranges: ApiRanges = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        let ranges = Arc::new(ranges);
        self.versions.store(Some(ranges.clone()));
        Ok(ranges)
    }

    /// A fresh idempotent producer id and epoch from this site (no
    /// transactional id).
    pub async fn init_producer_id(&self) -> Result<(i64, i16), UpstreamError> {
        let version = self.version_for(ApiKey::InitProducerId, (0, 4)).await?;
        let mut req = kafka_protocol::messages::InitProducerIdRequest::default();
        // The crate's default is an empty transactional id, not none: sent
        // as is, every allocation is the same transactional producer with a
        // bumped epoch, and each fences the one before (PRODUCER_FENCED).
        req.transactional_id = None;
        req.transaction_timeout_ms = -1;
        req.producer_id = kafka_protocol::messages::ProducerId(-1);
        req.producer_epoch = -1;
        // A Kafka broker answers COORDINATOR_LOAD_IN_PROGRESS until it holds a
        // block of producer ids from the controller (every fresh broker, and
        // after a controller change); clients retry, and so does Switchyard,
        // within one request timeout.
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        let mut backoff = INIT_PID_BACKOFF_MIN;
        loop {
            let resp: kafka_protocol::messages::InitProducerIdResponse = self
                .control_call(ApiKey::InitProducerId, version, &req)
                .await?;
            if resp.error_code == 0 {
                return Ok((resp.producer_id.0, resp.producer_epoch));
            }
            let now = tokio::time::Instant::now();
            if !is_retriable_init_pid_error(resp.error_code) || now + backoff >= deadline {
                return Err(protocol_err(
                    &self.name,
                    format!("InitProducerId error {}", resp.error_code),
                ));
            }
            tracing::debug!(site = %self.name, error_code = resp.error_code, "InitProducerId retried");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(INIT_PID_BACKOFF_MAX);
        }
    }

    /// Highest version of `api` in `ours` that the site and the crate speak.
    pub async fn version_for(&self, api: ApiKey, ours: (i16, i16)) -> Result<i16, UpstreamError> {
        let ranges = self.fetch_versions().await?;
        Self::pick_version(&ranges, api, ours)
            .ok_or_else(|| protocol_err(&self.name, format!("no usable {api:?} version")))
    }

    /// Highest version of `api` both the upstream and the crate speak.
    fn pick_version(ranges: &ApiRanges, api: ApiKey, ours: (i16, i16)) -> Option<i16> {
        let (lo, hi) = ranges.get(&(api as i16))?;
        let crate_range = api.valid_versions();
        let max = (*hi).min(ours.1).min(crate_range.max);
        let min = (*lo).max(ours.0).max(crate_range.min);
        (min <= max).then_some(max)
    }

    /// Refreshes the cluster view. Concurrent callers share one refresh: a
    /// caller that waited while another refresh completed returns at once.
    pub async fn refresh(&self) -> Result<(), UpstreamError> {
        self.refresh_for("on_demand").await
    }

    /// `refresh`, counted under `cause` when it actually asks the cluster.
    pub async fn refresh_for(&self, cause: &'static str) -> Result<(), UpstreamError> {
        let asked = Instant::now();
        let mut last = self.refresh_gate.lock().await;
        if let Some(t) = *last {
            let recent = t.elapsed() < MIN_REFRESH_GAP && self.is_reachable();
            if t >= asked || recent && !self.stale.load(Ordering::Acquire) {
                return Ok(());
            }
            // Stale: refresh, but not more often than this, however many
            // answers say so (a rate limit, holding the gate: concurrent
            // callers then share this refresh).
            if let Some(wait) = MIN_STALE_REFRESH_GAP.checked_sub(t.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        // Cleared before fetching: a mark arriving during the fetch survives.
        self.stale.store(false, Ordering::Release);
        self.metrics
            .upstream
            .metadata_refreshes
            .with_label_values(&[self.name.as_str(), cause])
            .inc();
        let result = self.refresh_now().await;
        *last = Some(Instant::now());
        match &result {
            Ok(()) => self.reachable.store(true, Ordering::Release),
            Err(e) => {
                if self.reachable.swap(false, Ordering::AcqRel) {
                    tracing::warn!(site = %self.name, error = %e, "site unreachable");
                }
                *self.control.lock().await = None;
            }
        }
        result
    }

    async fn refresh_now(&self) -> Result<(), UpstreamError> {
        let ranges = self.fetch_versions().await?;
        let version = Self::pick_version(&ranges, ApiKey::Metadata, (1, 12)).ok_or_else(|| {
            protocol_err(&self.name, "upstream supports no usable Metadata version")
        })?;
        let mut req = MetadataRequest::default();
        req.topics = None; // all topics
        req.allow_auto_topic_creation = false;
        let md: MetadataResponse = self.control_call(ApiKey::Metadata, version, &req).await?;
        tracing::debug!(site = %self.name, version, brokers = md.brokers.len(), topics = md.topics.len(),
            "metadata refreshed");
        let was_unreachable = !self.is_reachable();
        self.store_view(ClusterView::from_metadata(&md));
        if was_unreachable {
            tracing::info!(site = %self.name, brokers = md.brokers.len(), topics = md.topics.len(),
                "site reachable");
        }
        Ok(())
    }

    /// Schedules a background refresh, at most one queued at a time. Called
    /// when an upstream answer says the view is stale (the leader moved, the
    /// topic is gone); the client retries on its own, and by then the route
    /// points to the new leader.
    pub fn refresh_soon(self: &Arc<Self>, cause: &'static str) {
        if self.refresh_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let site = self.clone();
        tokio::spawn(async move {
            site.refresh_queued.store(false, Ordering::Release);
            let _ = site.refresh_for(cause).await;
        });
    }

    /// Marks the view out of date (topics created or deleted, leaders moved):
    /// the next refresh will not be skipped as too recent.
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Reacts to a partition-level error code from an upstream answer.
    pub fn note_partition_error(self: &Arc<Self>, code: i16) {
        if is_stale_metadata_error(code) {
            self.mark_stale();
            self.refresh_soon("stale_answer");
        }
    }

    /// Upstream leader of a partition, refreshing the view once on a miss.
    pub async fn leader(&self, topic: &str, partition: i32) -> Option<i32> {
        if let Some(l) = self.view.load().leader(topic, partition) {
            return Some(l);
        }
        let refreshed = self.refresh_for("routing_miss").await;
        let leader = self.view.load().leader(topic, partition);
        if leader.is_none() {
            tracing::debug!(site = %self.name, topic, partition, refreshed = refreshed.is_ok(),
                "no upstream leader known for partition");
        }
        leader
    }

    /// Some broker of the cluster, for requests any broker can answer; one
    /// that refused a connection lately only when no other is known.
    pub async fn any_broker(&self) -> Result<i32, UpstreamError> {
        if let Some(b) = self.live_broker() {
            return Ok(b);
        }
        self.refresh_for("no_live_broker").await?;
        self.live_broker()
            .ok_or_else(|| UpstreamError::NoBroker(self.name.clone()))
    }

    /// Whether some broker of the site has not failed lately (a retry
    /// after a failure can go there).
    fn has_live_broker(&self) -> bool {
        self.live_broker().is_some_and(|b| !self.is_down(b))
    }

    fn live_broker(&self) -> Option<i32> {
        let view = self.view.load();
        match view.any_broker() {
            Some(b) if !self.is_down(b) => Some(b),
            first => view
                .brokers
                .keys()
                .copied()
                .filter(|b| !self.is_down(*b))
                .min()
                .or(first),
        }
    }

    /// A connection to `broker` could not be opened, a request to it timed
    /// out, or it dropped a connection with requests waiting. Until its
    /// backoff ends no new connection to it is tried: requests for its
    /// partitions are answered with retriable errors at once, requests any
    /// broker can answer go elsewhere, coordinators it held are asked for
    /// again, and the view is refreshed (Kafka lists a dead broker, and it
    /// stays leader, until its session times out). One log line when it
    /// goes down, one when it answers again.
    pub fn note_broker_down(&self, broker: i32, reason: &'static str) {
        let b = broker.to_string();
        self.metrics
            .upstream
            .broker_failures
            .with_label_values(&[self.name.as_str(), b.as_str(), reason])
            .inc();
        let now = Instant::now();
        if let Ok(mut down) = self.down.lock() {
            let first = !down.contains_key(&broker);
            let d = down.entry(broker).or_insert(Down {
                since: now,
                retry_at: now,
                failures: 0,
            });
            // Failures while a backoff runs (requests already in flight) do
            // not lengthen it; a failed retry after it does.
            if now >= d.retry_at {
                d.failures = d.failures.saturating_add(1);
                let backoff = BROKER_BACKOFF_MIN
                    .saturating_mul(1u32 << d.failures.saturating_sub(1).min(8))
                    .min(BROKER_BACKOFF_MAX);
                d.retry_at = now + backoff;
            }
            self.any_down.store(true, Ordering::Release);
            if first {
                tracing::warn!(site = %self.name, broker, addr = self.broker_addr(broker).unwrap_or_default(),
                    reason, "upstream broker down; its requests get retriable errors until it answers again");
                self.metrics
                    .upstream
                    .broker_down
                    .with_label_values(&[self.name.as_str(), b.as_str()])
                    .set(1);
            }
        }
        if let Ok(mut map) = self.coordinators.lock() {
            map.retain(|_, c| *c != broker);
        }
        self.mark_stale();
        if let Some(me) = self.me.upgrade() {
            me.refresh_soon("broker_down");
        }
    }

    fn note_broker_up(&self, broker: i32) {
        if !self.any_down.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut down) = self.down.lock() {
            if let Some(d) = down.remove(&broker) {
                tracing::info!(site = %self.name, broker, down_ms = d.since.elapsed().as_millis() as u64,
                    "upstream broker answers again");
                self.metrics
                    .upstream
                    .broker_down
                    .with_label_values(&[self.name.as_str(), broker.to_string().as_str()])
                    .set(0);
            }
            self.any_down.store(!down.is_empty(), Ordering::Release);
        }
    }

    /// Failed lately (preferred last for requests any broker can answer).
    fn is_down(&self, broker: i32) -> bool {
        self.any_down.load(Ordering::Acquire)
            && self
                .down
                .lock()
                .ok()
                .is_some_and(|d| d.contains_key(&broker))
    }

    /// In its backoff: no connection to it is tried now.
    pub fn backing_off(&self, broker: i32) -> bool {
        self.any_down.load(Ordering::Acquire)
            && self
                .down
                .lock()
                .ok()
                .and_then(|d| d.get(&broker).map(|d| Instant::now() < d.retry_at))
                .unwrap_or(false)
    }

    /// The upstream coordinator for a group (`key_type` 0) or transactional id (1).
    pub async fn coordinator(&self, key_type: i8, key: &str) -> Result<Coordinator, UpstreamError> {
        if let Ok(map) = self.coordinators.lock() {
            if let Some(b) = map.get(&(key_type, key.to_string())) {
                if self.view.load().brokers.contains_key(b) && !self.is_down(*b) {
                    return Ok(Coordinator::Broker(*b));
                }
            }
        }
        let ranges = self.fetch_versions().await?;
        let version = Self::pick_version(&ranges, ApiKey::FindCoordinator, (0, 6))
            .ok_or_else(|| protocol_err(&self.name, "upstream has no FindCoordinator"))?;
        let mut req = FindCoordinatorRequest::default();
        req.key_type = key_type;
        if version >= 4 {
            req.coordinator_keys = vec![StrBytes::from_string(key.to_string())];
        } else {
            req.key = StrBytes::from_string(key.to_string());
        }
        let resp: FindCoordinatorResponse = self
            .control_call(ApiKey::FindCoordinator, version, &req)
            .await?;
        let (err, msg, node) = if version >= 4 {
            match resp.coordinators.first() {
                Some(c) => (c.error_code, c.error_message.clone(), c.node_id.0),
                None => (15, None, -1),
            }
        } else {
            (resp.error_code, resp.error_message.clone(), resp.node_id.0)
        };
        if err != 0 {
            return Ok(Coordinator::Error(err, msg.map(|m| m.to_string())));
        }
        if !self.view.load().brokers.contains_key(&node) {
            let _ = self.refresh_for("coordinator").await;
        }
        if let Ok(mut map) = self.coordinators.lock() {
            if map.len() > 100_000 {
                map.clear(); // bounded: a client inventing group ids cannot grow this forever
            }
            map.insert((key_type, key.to_string()), node);
        }
        Ok(Coordinator::Broker(node))
    }

    /// Forgets a cached coordinator after the upstream said NOT_COORDINATOR.
    pub fn forget_coordinator(&self, key_type: i8, key: &str) {
        if let Ok(mut map) = self.coordinators.lock() {
            map.remove(&(key_type, key.to_string()));
        }
    }

    /// Background upkeep: periodic refresh, faster retries while unreachable,
    /// and immediate detection of a dropped control connection.
    pub async fn maintain(
        self: Arc<Self>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut next = Instant::now();
        loop {
            // While a broker is down, refresh every second: the cluster moves
            // its leaders (and drops it from the metadata) within its session
            // timeout, and requests for them are answered with retriable
            // errors until Switchyard sees the move.
            let hurry = self.any_down.load(Ordering::Acquire);
            if hurry {
                next = next.min(Instant::now() + Duration::from_secs(1));
            }
            if Instant::now() >= next {
                let cause = if hurry { "broker_down" } else { "periodic" };
                let ok = self.refresh_for(cause).await.is_ok();
                next = Instant::now()
                    + if ok {
                        interval
                    } else {
                        Duration::from_secs(1).min(interval)
                    };
            }
            // Poll the control connection so a dead site is noticed within a
            // second, not at the next refresh.
            let tick = Duration::from_millis(500);
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = stop.changed() => return,
            }
            let dropped = match self.control.try_lock() {
                Ok(g) => g.as_ref().is_some_and(|c| c.is_closed()),
                Err(_) => false,
            };
            if dropped && self.reachable.swap(false, Ordering::AcqRel) {
                tracing::warn!(site = %self.name, "control connection to site dropped");
                next = Instant::now();
            }
        }
    }
}

/// Per-session connections to the brokers of one site.
pub struct BrokerPool {
    site: Arc<Site>,
    conns: HashMap<i32, UpstreamConn>,
    /// Who the session's client is on this site (`Site::identity_for`).
    identity: Option<Arc<crate::sasl::client::ClientSasl>>,
}

impl BrokerPool {
    pub fn new(site: Arc<Site>) -> Self {
        BrokerPool {
            identity: site.identity_for(None),
            site,
            conns: HashMap::new(),
        }
    }

    /// The session's client is `principal` (its name): its traffic
    /// authenticates as that principal's identity on the site from now on
    /// (connections opened as another identity are let go of).
    fn set_principal(&mut self, principal: Option<&str>) {
        let identity = self.site.identity_for(principal);
        let same = match (&identity, &self.identity) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.identity = identity;
            self.conns.clear();
        }
    }

    pub fn site(&self) -> &Arc<Site> {
        &self.site
    }

    /// The connection to an upstream broker, (re)connecting as needed; a
    /// broker in its backoff after failing is not tried (`Down`).
    pub async fn conn(&mut self, broker: i32) -> Result<UpstreamConn, UpstreamError> {
        if let Some(c) = self.conns.get(&broker) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
            // A connection that died under live traffic: health checks now.
            self.site.note_failure();
            self.conns.remove(&broker);
        }
        if self.site.backing_off(broker) {
            return Err(UpstreamError::Down(format!(
                "broker {} of site {} is",
                broker, self.site.name
            )));
        }
        let addr = match self.site.broker_addr(broker) {
            Some(a) => a,
            None => {
                let _ = self.site.refresh_for("unknown_broker").await;
                self.site
                    .broker_addr(broker)
                    .ok_or_else(|| UpstreamError::NoBroker(format!("broker {broker}")))?
            }
        };
        let c = match self
            .site
            .connect_as(Some(broker), &addr, self.identity.clone())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                self.site.note_failure();
                return Err(e);
            }
        };
        self.conns.insert(broker, c.clone());
        Ok(c)
    }

    /// Sends a request frame to a broker; `None` when no response is expected.
    pub async fn send(
        &mut self,
        broker: i32,
        api: ApiKey,
        frame: Bytes,
        expect_response: bool,
    ) -> Result<Option<PendingResponse>, UpstreamError> {
        let conn = self.conn(broker).await?;
        let latency = expect_response.then(|| self.site.latency(api));
        conn.send(frame, latency).await
    }

    /// Like `send`, for requests that always have a response.
    pub async fn call(
        &mut self,
        broker: i32,
        api: ApiKey,
        frame: Bytes,
    ) -> Result<PendingResponse, UpstreamError> {
        self.send(broker, api, frame, true)
            .await?
            .ok_or_else(|| protocol_err(&self.site.name, "no response slot"))
    }
}

/// A broker of a site: `(site index, upstream broker id)`.
pub type Target = (usize, i32);

/// One session's connections to every site, created lazily per broker.
pub struct Pools {
    pools: Vec<BrokerPool>,
    /// The session's client (its principal's name), once known.
    principal: Option<Arc<str>>,
}

impl Pools {
    pub fn new(sites: &[Arc<Site>]) -> Self {
        Pools {
            pools: sites.iter().map(|s| BrokerPool::new(s.clone())).collect(),
            principal: None,
        }
    }

    /// The session's client authenticated as `principal`: its upstream
    /// connections use the principal's own identity on each site that maps
    /// one (`sites[].principals`). Cheap when unchanged.
    /// The session's client (its principal's name), once known.
    pub fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    pub fn set_principal(&mut self, principal: Option<Arc<str>>) {
        if self.principal == principal {
            return;
        }
        for p in &mut self.pools {
            p.set_principal(principal.as_deref());
        }
        self.principal = principal;
    }

    fn pool(&mut self, site: usize) -> Result<&mut BrokerPool, UpstreamError> {
        self.pools
            .get_mut(site)
            .ok_or_else(|| UpstreamError::NoBroker(format!("site #{site}")))
    }

    /// A broker of site `site` that any request can go to, connected: the
    /// live one `Site::any_broker` picks, another if the connect fails.
    pub async fn any_live(&mut self, site: usize) -> Result<i32, UpstreamError> {
        let pool = self.pool(site)?;
        let mut last = None;
        for _ in 0..3 {
            let broker = pool.site.any_broker().await?;
            // A failed connect marks the broker down: the next pick skips it.
            match pool.conn(broker).await {
                Ok(_) => return Ok(broker),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| UpstreamError::NoBroker(pool.site.name.clone())))
    }

    pub async fn send(
        &mut self,
        (site, broker): Target,
        api: ApiKey,
        frame: Bytes,
        expect_response: bool,
    ) -> Result<Option<PendingResponse>, UpstreamError> {
        self.pool(site)?
            .send(broker, api, frame, expect_response)
            .await
    }

    pub async fn call(
        &mut self,
        (site, broker): Target,
        api: ApiKey,
        frame: Bytes,
    ) -> Result<PendingResponse, UpstreamError> {
        self.pool(site)?.call(broker, api, frame).await
    }
}

fn protocol_err(addr: &str, e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Protocol {
        addr: addr.to_string(),
        reason: e.to_string(),
    }
}

/// Backoff before a failed broker is tried again: doubles per failed retry
/// from the minimum to the maximum (an answer ends it). Kafka's clients use
/// 50 ms to 1 s (`reconnect.backoff.ms`, `reconnect.backoff.max.ms`); a
/// longer one would keep answering for a broker that is back already.
const BROKER_BACKOFF_MIN: Duration = Duration::from_millis(100);
const BROKER_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// See `Site::control_timeout`.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

const INIT_PID_BACKOFF_MIN: Duration = Duration::from_millis(20);
const INIT_PID_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// InitProducerId errors a client retries: REQUEST_TIMED_OUT,
/// COORDINATOR_LOAD_IN_PROGRESS, COORDINATOR_NOT_AVAILABLE, NOT_COORDINATOR,
/// CONCURRENT_TRANSACTIONS.
fn is_retriable_init_pid_error(code: i16) -> bool {
    matches!(code, 7 | 14 | 15 | 16 | 51)
}

/// Partition errors that mean Switchyard's view of the cluster is out of date:
/// UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER,
/// FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH, UNKNOWN_TOPIC_ID.
pub fn is_stale_metadata_error(code: i16) -> bool {
    matches!(code, 3 | 5 | 6 | 74 | 75 | 100)
}

/// True when an ApiVersions response frame (correlation id first) carries
/// UNSUPPORTED_VERSION, in which case its body is v0 whatever we asked (KIP-511).
pub fn api_versions_unsupported(frame: &[u8]) -> bool {
    frame.len() >= 6 && i16::from_be_bytes([frame[4], frame[5]]) == 35
}
