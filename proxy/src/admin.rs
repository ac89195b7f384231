//! The admin HTTP listener: health, readiness, metrics and status.
//!
//! Loopback by default (`admin.bind`): later issues add endpoints that change
//! routing, which must not be reachable by every client of the Kafka port.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::Proxy;

pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .with_state(proxy);
    let shutdown = async move {
        let _ = stop.changed().await;
    };
    if let Err(e) = axum::serve(listener, app)
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

/// Readiness: the active site answered its last metadata refresh.
async fn readyz(State(p): State<Arc<Proxy>>) -> Response {
    if p.site.is_reachable() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: site `{}` unreachable\n", p.site.name),
        )
            .into_response()
    }
}

async fn metrics(State(p): State<Arc<Proxy>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        p.metrics.render(),
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
    connections: Connections,
}

#[derive(Serialize)]
struct ListenerStatus {
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
    let id = &p.identity;
    let view = p.site.view();
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
    let mut sites = Vec::new();
    for (i, s) in p.cfg.config.sites.iter().enumerate() {
        let active = i == p.cfg.active_site;
        sites.push(SiteStatus {
            name: s.name.clone(),
            active,
            bootstrap: s.bootstrap.clone(),
            reachable: active && p.site.is_reachable(),
            brokers: if active {
                std::mem::take(&mut brokers)
            } else {
                Vec::new()
            },
            topics: if active { view.topics.len() } else { 0 },
            upstream_connections: if active { p.site.conn_gauge.get() } else { 0 },
        });
    }
    Json(Status {
        version: env!("CARGO_PKG_VERSION"),
        cluster_id: id.cluster_id.clone(),
        uptime_seconds: p.started.elapsed().as_secs(),
        bootstrap: format!("{}:{}", id.advertised_host, id.bootstrap_bind.port()),
        listeners: id
            .nodes
            .iter()
            .map(|n| ListenerStatus {
                node_id: n.node_id,
                bind: n.bind.to_string(),
                advertised: format!("{}:{}", n.host, n.port),
            })
            .collect(),
        sites,
        connections: Connections {
            active: p.metrics.client_connections.get(),
            total: p.connections_total(),
        },
    })
}
