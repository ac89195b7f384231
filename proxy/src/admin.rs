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
    routes: Vec<RouteStatus>,
    tee: Vec<crate::tee::TeeStatus>,
    connections: Connections,
}

#[derive(Serialize)]
struct RouteStatus {
    name: String,
    topics: String,
    site: String,
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
    let id = &p.identity;
    let mut sites = Vec::new();
    for (i, site) in p.sites.iter().enumerate() {
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
            .router
            .routes()
            .iter()
            .map(|r| RouteStatus {
                name: r.name.clone(),
                topics: r.topics.to_string(),
                site: p.router.site_name(r.site).to_string(),
                naming: r.naming.template().to_string(),
            })
            .collect(),
        tee: p.tee.status(),
        connections: Connections {
            active: p.metrics.client_connections.get(),
            total: p.connections_total(),
        },
    })
}
