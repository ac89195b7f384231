//! Prometheus metrics: one registry per proxy, every metric name in one place.

use std::sync::OnceLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

const MAX_API_KEY: usize = 100;
const MAX_API_VERSION: usize = 20;

pub struct Metrics {
    registry: Registry,
    pub client_connections: IntGauge,
    pub client_connections_total: IntCounter,
    pub requests_total: IntCounterVec,
    pub client_bytes_received: IntCounter,
    pub client_bytes_sent: IntCounter,
    /// Memory client frames hold of `limits.max_request_bytes_in_flight`
    /// (set when metrics are read).
    pub request_memory_bytes: IntGauge,
    pub request_memory_waits: IntCounter,
    pub upstream_request_duration: HistogramVec,
    pub upstream_connections: IntGaugeVec,
    pub errors_total: IntCounterVec,
    pub tee: TeeMetrics,
    pub failover: FailoverMetrics,
    pub plugins: PluginMetrics,
    pub upstream: UpstreamMetrics,
    pub security: SecurityMetrics,
    request_counters: Vec<Vec<OnceLock<IntCounter>>>,
}

/// Client authentication.
pub struct SecurityMetrics {
    /// SASL authentications (and re-authentications) by `listener`,
    /// `mechanism` and `result` (`ok`, `failed`).
    pub authentications: IntCounterVec,
    /// Authorization decisions (`authorization` rules) by `resource`,
    /// `operation` and `result` (`allow`, `deny`).
    pub authorizations: IntCounterVec,
}

impl SecurityMetrics {
    fn register(registry: &Registry) -> Self {
        let m = SecurityMetrics {
            authentications: IntCounterVec::new(
                Opts::new(
                    "switchyard_sasl_authentications_total",
                    "SASL authentications of clients (re-authentications included), by listener, mechanism and result",
                ),
                &["listener", "mechanism", "result"],
            )
            .expect("static metric definition"),
            authorizations: IntCounterVec::new(
                Opts::new(
                    "switchyard_authorization_decisions_total",
                    "Authorization decisions on client requests (the authorization rules), by resource type, operation and result",
                ),
                &["resource", "operation", "result"],
            )
            .expect("static metric definition"),
        };
        for c in [m.authentications.clone(), m.authorizations.clone()] {
            registry
                .register(Box::new(c))
                .expect("static metric definition");
        }
        m
    }
}

/// How upstream brokers fail and what Switchyard did about it.
pub struct UpstreamMetrics {
    /// `site`, `broker`, `reason` (`connect`, `timeout`, `closed`).
    pub broker_failures: IntCounterVec,
    /// 1 while a broker is considered down (`site`, `broker`).
    pub broker_down: IntGaugeVec,
    /// `site`, `cause` (`periodic`, `stale_answer`, `broker_down`,
    /// `unknown_broker`, `routing_miss`, `coordinator`, `unreachable`).
    pub metadata_refreshes: IntCounterVec,
    /// Requests (or parts of them) answered with a retriable error on an
    /// unreachable broker's behalf: `api`, `error` (Kafka error name).
    pub retriable_answers: IntCounterVec,
    /// Client connections Switchyard closed, by `reason`.
    pub client_closed: IntCounterVec,
    /// Switchyard's own SASL authentications to site brokers: `site`,
    /// `mechanism`, `result` (`ok`, `failed`).
    pub sasl_authentications: IntCounterVec,
}

impl UpstreamMetrics {
    fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
        };
        let m = UpstreamMetrics {
            broker_failures: counter(
                "switchyard_upstream_broker_failures_total",
                "Failed connects, request timeouts and dropped connections per upstream broker",
                &["site", "broker", "reason"],
            ),
            broker_down: IntGaugeVec::new(
                Opts::new(
                    "switchyard_upstream_broker_down",
                    "1 while an upstream broker is considered down (requests for it are answered with retriable errors)",
                ),
                &["site", "broker"],
            )
            .expect("static metric definition"),
            metadata_refreshes: counter(
                "switchyard_metadata_refreshes_total",
                "Metadata refreshes of an upstream site, by what caused them",
                &["site", "cause"],
            ),
            retriable_answers: counter(
                "switchyard_retriable_answers_total",
                "Requests or partitions answered with a retriable error on an unreachable broker's behalf",
                &["api", "error"],
            ),
            client_closed: counter(
                "switchyard_client_connections_closed_total",
                "Client connections closed by Switchyard, by reason (never for a broker's fault)",
                &["reason"],
            ),
            sasl_authentications: counter(
                "switchyard_upstream_sasl_authentications_total",
                "Switchyard's SASL authentications to site brokers (every new connection), by result",
                &["site", "mechanism", "result"],
            ),
        };
        // Present at 0 from the start: "no client connection closed for an
        // upstream's fault" must be a sample an alert or test can read, not
        // a missing series.
        for reason in ["upstream", "upstream_timeout"] {
            m.client_closed.with_label_values(&[reason]);
        }
        for c in [
            Box::new(m.broker_failures.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.broker_down.clone()),
            Box::new(m.metadata_refreshes.clone()),
            Box::new(m.retriable_answers.clone()),
            Box::new(m.client_closed.clone()),
            Box::new(m.sasl_authentications.clone()),
        ] {
            registry.register(c).expect("static metric definition");
        }
        m
    }
}

/// Tee metrics, labelled `route`, `target` (site) and `topic` (source topic).
pub struct TeeMetrics {
    pub lag_records: IntGaugeVec,
    pub lag_seconds: prometheus::GaugeVec,
    pub records: IntCounterVec,
    pub bytes: IntCounterVec,
    pub retries: IntCounterVec,
    /// Also labelled `reason` (a Kafka error name, `network`, ...).
    pub errors: IntCounterVec,
    pub skipped: IntCounterVec,
    pub last_success: prometheus::GaugeVec,
}

impl TeeMetrics {
    fn register(registry: &Registry) -> Self {
        const L: &[&str] = &["route", "target", "topic"];
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), L).expect("static metric definition")
        };
        let fgauge = |name: &str, help: &str| {
            prometheus::GaugeVec::new(Opts::new(name, help), L).expect("static metric definition")
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
        };
        let t = TeeMetrics {
            lag_records: gauge(
                "switchyard_tee_lag_records",
                "Records on the source not yet on the target",
            ),
            lag_seconds: fgauge(
                "switchyard_tee_lag_seconds",
                "Seconds since the tee was last fully caught up (0 when caught up)",
            ),
            records: counter(
                "switchyard_tee_records_total",
                "Records written to the target",
                L,
            ),
            bytes: counter(
                "switchyard_tee_bytes_total",
                "Record batch bytes written to the target",
                L,
            ),
            retries: counter(
                "switchyard_tee_retries_total",
                "Writes to the target retried",
                L,
            ),
            errors: counter(
                "switchyard_tee_errors_total",
                "Failed writes to the target, by reason",
                &["route", "target", "topic", "reason"],
            ),
            skipped: counter(
                "switchyard_tee_records_skipped_total",
                "Records the target rejected permanently and the tee skipped",
                L,
            ),
            last_success: fgauge(
                "switchyard_tee_last_success_timestamp_seconds",
                "Unix time of the last successful write to the target",
            ),
        };
        for c in [
            Box::new(t.lag_records.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(t.lag_seconds.clone()),
            Box::new(t.records.clone()),
            Box::new(t.bytes.clone()),
            Box::new(t.retries.clone()),
            Box::new(t.errors.clone()),
            Box::new(t.skipped.clone()),
            Box::new(t.last_success.clone()),
        ] {
            registry.register(c).expect("static metric definition");
        }
        t
    }
}

/// Site health and failover metrics.
pub struct FailoverMetrics {
    /// `site`, `result` (ok | failed).
    pub health_checks: IntCounterVec,
    /// `site`: 1 healthy, 0 not.
    pub site_healthy: IntGaugeVec,
    /// `route`, `from`, `to`, `reason` (automatic | manual).
    pub transitions: IntCounterVec,
    /// `route`: 0 primary, 1 standby, 2 failing over, 3 failing back.
    pub state: IntGaugeVec,
    /// `route`, `method` (runs | checkpoint | timestamp | none).
    pub translations: IntCounterVec,
    /// `route`, `method`: records a translated offset may deliver again
    /// (upper bound of duplicates from translation).
    pub redelivered: IntCounterVec,
    /// `route`, `result` (ok | failed | skipped).
    pub shadow_commits: IntCounterVec,
    /// `route`, `what` (heartbeat | sync_group | offset_commit | fetch | leave_group).
    pub fenced: IntCounterVec,
    /// `route`: records acked on the old site and not copied when the last
    /// unplanned failover happened (async tee loss).
    pub uncopied: IntGaugeVec,
}

impl FailoverMetrics {
    fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition")
        };
        let m = FailoverMetrics {
            health_checks: counter(
                "switchyard_health_checks_total",
                "Active site health checks by result",
                &["site", "result"],
            ),
            site_healthy: gauge(
                "switchyard_site_healthy",
                "1 when the site passes its health checks",
                &["site"],
            ),
            transitions: counter(
                "switchyard_failover_transitions_total",
                "Failover state changes of a route",
                &["route", "from", "to", "reason"],
            ),
            state: gauge(
                "switchyard_failover_state",
                "Route side: 0 primary, 1 standby, 2 failing over, 3 failing back",
                &["route"],
            ),
            translations: counter(
                "switchyard_offset_translations_total",
                "Consumer offsets translated to the other site, by method",
                &["route", "method"],
            ),
            redelivered: counter(
                "switchyard_offset_translation_redelivered_total",
                "Upper bound of records delivered again because of offset translation",
                &["route", "method"],
            ),
            shadow_commits: counter(
                "switchyard_shadow_commits_total",
                "Translated group offsets committed on the other site",
                &["route", "result"],
            ),
            fenced: counter(
                "switchyard_failover_fenced_total",
                "Requests of consumers from before a switch refused or held",
                &["route", "what"],
            ),
            uncopied: gauge(
                "switchyard_failover_uncopied_records",
                "Records not yet copied to the standby at the last unplanned failover",
                &["route"],
            ),
        };
        for c in [
            Box::new(m.health_checks.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.site_healthy.clone()),
            Box::new(m.transitions.clone()),
            Box::new(m.state.clone()),
            Box::new(m.translations.clone()),
            Box::new(m.redelivered.clone()),
            Box::new(m.shadow_commits.clone()),
            Box::new(m.fenced.clone()),
            Box::new(m.uncopied.clone()),
        ] {
            registry.register(c).expect("static metric definition");
        }
        m
    }
}

/// WASM plugin metrics, labelled `plugin` (the registry name) and `version`
/// (the version the plugin reports at init).
pub struct PluginMetrics {
    /// Also `stage` (produce | tee | fetch | resolve).
    pub calls: IntCounterVec,
    pub records_in: IntCounterVec,
    pub records_out: IntCounterVec,
    pub records_dropped: IntCounterVec,
    /// Also `kind` (trap | failed | bad_answer | unavailable).
    pub errors: IntCounterVec,
    pub traps: IntCounterVec,
    /// Seconds per call (batch mode: one call per topic-partition batch).
    pub duration: HistogramVec,
    /// Also `resolution` (accept | reject | merge).
    pub conflicts: IntCounterVec,
    /// 1 for the version serving under a name, 0 for replaced ones.
    pub loaded: IntGaugeVec,
}

impl PluginMetrics {
    fn register(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
        };
        const PV: &[&str] = &["plugin", "version"];
        let m = PluginMetrics {
            calls: counter(
                "switchyard_plugin_calls_total",
                "Plugin calls (one per topic-partition batch)",
                &["plugin", "version", "stage"],
            ),
            records_in: counter(
                "switchyard_plugin_records_in_total",
                "Records passed to a plugin",
                PV,
            ),
            records_out: counter(
                "switchyard_plugin_records_out_total",
                "Records a plugin let through (kept, renamed, routed or changed)",
                PV,
            ),
            records_dropped: counter(
                "switchyard_plugin_records_dropped_total",
                "Records a plugin dropped (or a conflict rule rejected)",
                PV,
            ),
            errors: counter(
                "switchyard_plugin_errors_total",
                "Plugin calls that failed, by kind; the plugin's failure policy applied",
                &["plugin", "version", "kind"],
            ),
            traps: counter(
                "switchyard_plugin_traps_total",
                "Plugin instances that trapped (panic, deadline, memory) and were replaced",
                PV,
            ),
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "switchyard_plugin_call_duration_seconds",
                    "Time per plugin call, including copying the batch in and out",
                )
                .buckets(vec![
                    1e-6, 5e-6, 2e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2,
                ]),
                PV,
            )
            .expect("static metric definition"),
            conflicts: counter(
                "switchyard_plugin_conflicts_total",
                "Conflict resolutions by outcome",
                &["plugin", "version", "resolution"],
            ),
            loaded: IntGaugeVec::new(
                Opts::new(
                    "switchyard_plugin_loaded",
                    "1 while this version serves under the plugin's name",
                ),
                PV,
            )
            .expect("static metric definition"),
        };
        for c in [
            Box::new(m.calls.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.records_in.clone()),
            Box::new(m.records_out.clone()),
            Box::new(m.records_dropped.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.traps.clone()),
            Box::new(m.duration.clone()),
            Box::new(m.conflicts.clone()),
            Box::new(m.loaded.clone()),
        ] {
            registry.register(c).expect("static metric definition");
        }
        m
    }
}

/// Error kinds counted in `switchyard_errors_total{kind}` (and, for those
/// that close a client's connection, `switchyard_client_connections_closed_total{reason}`).
pub mod kind {
    pub const FRAME_TOO_LARGE: &str = "frame_too_large";
    pub const BAD_FRAME: &str = "bad_frame";
    /// A client's frame found no memory (`limits.max_request_bytes_in_flight`)
    /// within `timeouts.request_ms`.
    pub const REQUEST_MEMORY: &str = "request_memory";
    pub const UNKNOWN_API: &str = "unknown_api";
    pub const UNSUPPORTED_VERSION: &str = "unsupported_version";
    pub const MALFORMED_REQUEST: &str = "malformed_request";
    pub const IDLE_TIMEOUT: &str = "idle_timeout";
    pub const CONNECTION_LIMIT: &str = "connection_limit";
    pub const UPSTREAM: &str = "upstream";
    pub const UPSTREAM_TIMEOUT: &str = "upstream_timeout";
    pub const CLIENT_IO: &str = "client_io";
    /// A client's TLS handshake failed (plaintext to a TLS port, an
    /// untrusted, expired or missing client certificate, a timeout).
    pub const TLS_HANDSHAKE: &str = "tls_handshake";
    /// A request other than ApiVersions and the SASL ones before SASL
    /// authentication, a SASL message out of turn, or a session past its
    /// lifetime (KIP-368).
    pub const SASL_STATE: &str = "sasl_state";
    /// A client's SASL authentication failed (its next request closes it).
    pub const SASL_FAILED: &str = "sasl_authentication_failed";
    /// A request the authorization rules deny that has no answer to carry
    /// the error (acks=0 Produce): the connection closes, as Kafka's does.
    pub const AUTHORIZATION_FAILED: &str = "authorization_failed";
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let client_connections =
            IntGauge::new("switchyard_client_connections", "Open client connections")
                .expect("static metric definition");
        let client_connections_total = IntCounter::new(
            "switchyard_client_connections_total",
            "Client connections accepted since start",
        )
        .expect("static metric definition");
        let requests_total = IntCounterVec::new(
            Opts::new(
                "switchyard_requests_total",
                "Client requests by API and version",
            ),
            &["api", "version"],
        )
        .expect("static metric definition");
        let client_bytes_received = IntCounter::new(
            "switchyard_client_bytes_received_total",
            "Bytes read from clients (frames including length prefix)",
        )
        .expect("static metric definition");
        let client_bytes_sent = IntCounter::new(
            "switchyard_client_bytes_sent_total",
            "Bytes written to clients (frames including length prefix)",
        )
        .expect("static metric definition");
        let request_memory_bytes = IntGauge::new(
            "switchyard_request_memory_bytes",
            "Memory held by client request frames beyond their first 16 KiB (limits.max_request_bytes_in_flight)",
        )
        .expect("static metric definition");
        let request_memory_waits = IntCounter::new(
            "switchyard_request_memory_waits_total",
            "Times a client connection stopped reading because limits.max_request_bytes_in_flight was spent",
        )
        .expect("static metric definition");
        let upstream_request_duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_upstream_request_duration_seconds",
                "Time from writing a request to an upstream broker to reading its response",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            &["site", "api"],
        )
        .expect("static metric definition");
        let upstream_connections = IntGaugeVec::new(
            Opts::new(
                "switchyard_upstream_connections",
                "Open connections to upstream brokers",
            ),
            &["site"],
        )
        .expect("static metric definition");
        let errors_total = IntCounterVec::new(
            Opts::new("switchyard_errors_total", "Errors by kind"),
            &["kind"],
        )
        .expect("static metric definition");
        for c in [
            Box::new(client_connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(client_connections_total.clone()),
            Box::new(requests_total.clone()),
            Box::new(client_bytes_received.clone()),
            Box::new(client_bytes_sent.clone()),
            Box::new(request_memory_bytes.clone()),
            Box::new(request_memory_waits.clone()),
            Box::new(upstream_request_duration.clone()),
            Box::new(upstream_connections.clone()),
            Box::new(errors_total.clone()),
        ] {
            registry.register(c).expect("static metric definition");
        }
        let tee = TeeMetrics::register(&registry);
        let failover = FailoverMetrics::register(&registry);
        let plugins = PluginMetrics::register(&registry);
        let upstream = UpstreamMetrics::register(&registry);
        let security = SecurityMetrics::register(&registry);
        Metrics {
            upstream,
            security,
            tee,
            failover,
            plugins,
            registry,
            client_connections,
            client_connections_total,
            requests_total,
            client_bytes_received,
            client_bytes_sent,
            request_memory_bytes,
            request_memory_waits,
            upstream_request_duration,
            upstream_connections,
            errors_total,
            request_counters: (0..=MAX_API_KEY)
                .map(|_| (0..=MAX_API_VERSION).map(|_| OnceLock::new()).collect())
                .collect(),
        }
    }

    /// The per-(API, version) request counter, created on first use so that
    /// `/metrics` only lists the combinations clients actually use; cached so the
    /// hot path does not hash label strings.
    pub fn request_counter(&self, api_key: i16, version: i16) -> Option<&IntCounter> {
        let slot = self
            .request_counters
            .get(usize::try_from(api_key).ok()?)?
            .get(usize::try_from(version).ok()?)?;
        Some(slot.get_or_init(|| {
            let name = kafka_protocol::messages::ApiKey::try_from(api_key)
                .map(|k| format!("{k:?}"))
                .unwrap_or_else(|_| api_key.to_string());
            self.requests_total
                .with_label_values(&[name.as_str(), version.to_string().as_str()])
        }))
    }

    pub fn health_check(&self, site: &str, ok: bool) {
        self.failover
            .health_checks
            .with_label_values(&[site, if ok { "ok" } else { "failed" }])
            .inc();
    }

    pub fn site_healthy(&self, site: &str, healthy: bool) {
        self.failover
            .site_healthy
            .with_label_values(&[site])
            .set(i64::from(healthy));
    }

    pub fn error(&self, kind: &str) {
        self.errors_total.with_label_values(&[kind]).inc();
    }

    /// Counts a client connection Switchyard closes (`kind` as for errors).
    pub fn client_closed(&self, reason: &str) {
        self.upstream
            .client_closed
            .with_label_values(&[reason])
            .inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            return format!("# encode error: {e}\n");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
