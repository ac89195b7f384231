//! The admin HTTP listener: health, readiness, metrics, status, failover,
//! plugins and reloads.
//!
//! Loopback by default (`admin.bind`): it changes routing and loads code.
//! Elsewhere it needs HTTPS and a token or a client certificate
//! ([`auth`], applied to every route).

pub mod auth;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::shared::Proxy;

pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/routes/{route}/failover", post(failover))
        .route("/api/v1/routes/{route}/failback", post(failback))
        .route("/api/v1/plugins", get(plugins_list))
        .route("/api/v1/reload", post(reload))
        .route(
            "/api/v1/plugins/{name}",
            axum::routing::put(plugin_put).delete(plugin_delete),
        )
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::plugin::registry::MAX_PLUGIN_BYTES,
        ))
        .layer(axum::middleware::from_fn_with_state(
            auth::AdminAuth::new(&proxy.cfg.config.admin, proxy.plane.metrics.clone()),
            auth::authorize,
        ))
        .with_state(proxy.clone());
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    let listener = auth::AdminListener::new(listener, proxy.admin_tls.clone());
    if let Err(e) = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<auth::AdminPeer>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    {
        tracing::error!(error = %e, "admin listener failed");
    }
}

/// Liveness: the process is up and serving HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: the site serving unrouted traffic answered its last metadata
/// refresh (after a failover of the default site's route: its standby).
async fn readyz(State(p): State<Arc<Proxy>>) -> Response {
    let site = p
        .plane
        .sites
        .get(p.plane.router.home_site())
        .unwrap_or(&p.plane.site);
    if site.is_reachable() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: site `{}` unreachable\n", site.name),
        )
            .into_response()
    }
}

/// `POST /api/v1/routes/{route}/failover[?force=true]`: switch the route to
/// its standby. Planned (primary healthy): waits for the tee to catch up and
/// refuses (409) if it cannot; `force=true` switches without waiting.
async fn failover(
    State(p): State<Arc<Proxy>>,
    Path(route): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let r = p.plane.failover.fail_over(&route, forced(&uri)).await;
    switch_answer(&p, &route, r)
}

/// `POST /api/v1/routes/{route}/failback[?force=true]`: switch back to the
/// primary once it is healthy, after the standby's writes were copied back.
async fn failback(
    State(p): State<Arc<Proxy>>,
    Path(route): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    let r = p.plane.failover.fail_back(&route, forced(&uri)).await;
    switch_answer(&p, &route, r)
}

async fn plugins_list(State(p): State<Arc<Proxy>>) -> Response {
    match &p.plane.plugins {
        Some(r) => (StatusCode::OK, Json(r.status())).into_response(),
        None => no_plugin_host(),
    }
}

fn no_plugin_host() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"error": "the WASM plugin host did not start (see the log)"})),
    )
        .into_response()
}

/// `PUT /api/v1/plugins/{name}`: the body is the component (`.wasm`); the
/// plugin's config string goes in the `x-switchyard-plugin-config` header;
/// query `policy=fail-open|fail-closed`, `timeout_ms`, `memory_mb`. The new
/// version serves the next batch; a plugin that does not load leaves the
/// previous version serving and answers 400 with the reason.
async fn plugin_put(
    State(p): State<Arc<Proxy>>,
    Path(name): Path<String>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    use crate::plugin::{FailurePolicy, Limits};
    let Some(reg) = &p.plane.plugins else {
        return no_plugin_host();
    };
    let bad = |msg: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"plugin": name, "error": msg})),
        )
            .into_response()
    };
    if !crate::plugin::registry::valid_name(&name) {
        return bad("plugin names are 1-64 of a-z A-Z 0-9 - _ .".into());
    }
    let config = match headers.get("x-switchyard-plugin-config") {
        None => String::new(),
        Some(v) => match v.to_str() {
            Ok(s) => s.to_string(),
            Err(_) => return bad("x-switchyard-plugin-config is not visible ASCII".into()),
        },
    };
    let mut policy = FailurePolicy::FailOpen;
    let mut limits = Limits::default();
    for kv in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
    {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match (k, v) {
            ("policy", "fail-open") => policy = FailurePolicy::FailOpen,
            ("policy", "fail-closed") => policy = FailurePolicy::FailClosed,
            ("timeout_ms", v) => match v.parse::<u64>() {
                Ok(ms) if (1..=10_000).contains(&ms) => {
                    limits.call_timeout = std::time::Duration::from_millis(ms)
                }
                _ => return bad(format!("timeout_ms `{v}`: give 1..=10000")),
            },
            ("memory_mb", v) => match v.parse::<usize>() {
                Ok(mb) if (1..=crate::plugin::MAX_MEMORY_BYTES >> 20).contains(&mb) => {
                    limits.memory_bytes = mb << 20
                }
                _ => {
                    return bad(format!(
                        "memory_mb `{v}`: give 1..={}",
                        crate::plugin::MAX_MEMORY_BYTES >> 20
                    ))
                }
            },
            ("crash_cap", v) => match v.parse::<u32>() {
                Ok(n) if n >= 1 => limits.crash_cap = n,
                _ => return bad(format!("crash_cap `{v}`: give 1 or more")),
            },
            _ => {
                return bad(format!(
                    "unknown query parameter `{kv}` (policy, timeout_ms, memory_mb, crash_cap)"
                ))
            }
        }
    }
    match reg.put(&name, body.to_vec(), config, policy, limits).await {
        Ok(l) => (
            StatusCode::OK,
            Json(serde_json::json!({
                "plugin": name,
                "load": l.version,
                "policy": l.policy.name(),
                "info": {"name": l.info.name, "version": l.info.version, "capabilities": l.info.capabilities},
            })),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(plugin = %name, error = %e, "plugin upload refused");
            bad(e.to_string())
        }
    }
}

async fn plugin_delete(State(p): State<Arc<Proxy>>, Path(name): Path<String>) -> Response {
    let Some(reg) = &p.plane.plugins else {
        return no_plugin_host();
    };
    match reg.remove(&name).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"plugin": name, "error": "no plugin with that name"})),
        )
            .into_response(),
        Err(users) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({
                "plugin": name,
                "error": format!("in use by {}; take it out of the config and reload first", users.join(", ")),
            })),
        )
            .into_response(),
    }
}

/// `POST /api/v1/reload`: re-reads the config file and applies what can
/// change at run time (plugins and the routes' plugin chains); anything
/// else that changed is reported as needing a restart and not applied.
async fn reload(State(p): State<Arc<Proxy>>) -> Response {
    match crate::shared::reload(&p).await {
        Ok(r) => (StatusCode::OK, Json(r)).into_response(),
        Err(r) => (StatusCode::BAD_REQUEST, Json(r)).into_response(),
    }
}

fn forced(uri: &axum::http::Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "force" | "force=true" | "force=1"))
    })
}

fn switch_answer(
    p: &Proxy,
    route: &str,
    r: Result<crate::failover::Transition, crate::failover::SwitchError>,
) -> Response {
    use crate::failover::SwitchError;
    match r {
        Ok(t) => {
            let st = p
                .plane
                .failover
                .status()
                .into_iter()
                .find(|s| s.route == route);
            let body = serde_json::json!({
                "route": route,
                "state": st.as_ref().map(|s| s.state),
                "active": st.as_ref().map(|s| s.active.clone()),
                "epoch": st.as_ref().map(|s| s.epoch),
                "took_ms": t.took_ms,
                "transition": t,
            });
            (StatusCode::OK, Json(body)).into_response()
        }
        Err(e) => {
            let code = match e {
                SwitchError::UnknownRoute => StatusCode::NOT_FOUND,
                SwitchError::NotFailoverRoute => StatusCode::BAD_REQUEST,
                SwitchError::Conflict(_) => StatusCode::CONFLICT,
            };
            (
                code,
                Json(serde_json::json!({"route": route, "error": e.to_string()})),
            )
                .into_response()
        }
    }
}

async fn metrics(State(p): State<Arc<Proxy>>) -> Response {
    let m = &p.plane.metrics;
    m.request_memory_bytes
        .set(i64::try_from(p.frame_budget.in_use()).unwrap_or(i64::MAX));
    m.request_memory_waits.inc_by(
        p.frame_budget
            .waits()
            .saturating_sub(m.request_memory_waits.get()),
    );
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        p.plane.metrics.render(),
    )
        .into_response()
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    cluster_id: String,
    uptime_seconds: u64,
    bootstrap: String,
    listeners: Vec<ListenerStatus>,
    sites: Vec<SiteStatus>,
    routes: Vec<RouteStatus>,
    tee: Vec<crate::tee::TeeStatus>,
    failover: Vec<crate::failover::RouteFailoverStatus>,
    health: Vec<crate::failover::health::HealthStatus>,
    connections: Connections,
}

#[derive(Serialize)]
struct RouteStatus {
    name: String,
    topics: String,
    site: String,
    /// The site serving the route now (its standby while failed over).
    serving: String,
    naming: String,
}

#[derive(Serialize)]
struct ListenerStatus {
    listener: String,
    node_id: i32,
    bind: String,
    advertised: String,
}

#[derive(Serialize)]
struct SiteStatus {
    name: String,
    active: bool,
    bootstrap: Vec<String>,
    reachable: bool,
    brokers: Vec<BrokerStatus>,
    topics: usize,
    upstream_connections: i64,
}

#[derive(Serialize)]
struct BrokerStatus {
    node_id: i32,
    host: String,
    port: i32,
}

#[derive(Serialize)]
struct Connections {
    active: i64,
    total: u64,
}

async fn status(State(p): State<Arc<Proxy>>) -> Json<Status> {
    let id = &p.plane.identity;
    let mut sites = Vec::new();
    for (i, site) in p.plane.sites.iter().enumerate() {
        let view = site.view();
        let mut brokers: Vec<BrokerStatus> = view
            .brokers
            .values()
            .map(|b| BrokerStatus {
                node_id: b.node_id,
                host: b.host.clone(),
                port: b.port,
            })
            .collect();
        brokers.sort_by_key(|b| b.node_id);
        sites.push(SiteStatus {
            name: site.name.clone(),
            active: i == p.cfg.active_site,
            bootstrap: site.bootstrap.clone(),
            reachable: site.is_reachable(),
            brokers,
            topics: view.topics.len(),
            upstream_connections: site.conn_gauge.get(),
        });
    }
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        cluster_id: id.cluster_id.clone(),
        uptime_seconds: p.started.elapsed().as_secs(),
        bootstrap: format!("{}:{}", id.advertised_host, id.bootstrap_bind.port()),
        listeners: p
            .listeners
            .iter()
            .flat_map(|l| {
                l.identity.nodes.iter().map(move |n| ListenerStatus {
                    listener: l.name.clone(),
                    node_id: n.node_id,
                    bind: n.bind.to_string(),
                    advertised: format!("{}:{}", n.host, n.port),
                })
            })
            .collect(),
        sites,
        routes: p
            .plane
            .router
            .routes()
            .iter()
            .enumerate()
            .map(|(i, r)| RouteStatus {
                name: r.name.clone(),
                topics: r.topics.to_string(),
                site: p.plane.router.site_name(r.site).to_string(),
                serving: p
                    .plane
                    .router
                    .serving(i)
                    .map(|(s, _, _)| p.plane.router.site_name(s).to_string())
                    .unwrap_or_default(),
                naming: r.naming.template().to_string(),
            })
            .collect(),
        tee: p.plane.tee.status(),
        failover: p.plane.failover.status(),
        health: if p.plane.failover.enabled() {
            p.plane.failover.health.status()
        } else {
            Vec::new()
        },
        connections: Connections {
            active: p.plane.metrics.client_connections.get(),
            total: p.connections_total(),
        },
    })
}
