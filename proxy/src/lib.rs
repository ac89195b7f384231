//! Switchyard: a Kafka-protocol proxy that presents one stable virtual cluster
//! in front of one or more Kafka clusters ("sites").
//!
//! Follow a request: [`listener`](server) accepts and hands the connection
//! to one of the I/O threads (`server::IoThreads`) → [`session`] reads a frame
//! ([`codec`]) → [`api`] picks the handler → a partitioned API (Produce,
//! Fetch, ListOffsets, DeleteRecords) runs its [`pipeline`] stages over one
//! per-request context: names ([`route`] says which site holds each topic and
//! under which physical name), holds, producer ids, plugins, sync tee,
//! identities ([`identity`]); then it is planned per (site, partition leader)
//! with the [`upstream`] cluster views and sent → the upstreams answer →
//! per-site stages, client names, merge, client stages → [`session`] writes
//! responses back in request order. APIs routed by coordinator keep handlers
//! in [`api`] that use the same stages.
//!
//! Side paths: [`tee`] copies what routes write to their target sites by
//! following the source logs (a sync produce waits for it), recording offset
//! runs with [`offsets`]; [`failover`] switches routes between sites;
//! [`admin`] serves health, metrics and status.
//!
//! Modules form layers, and code only reaches down (checked by
//! `tests/layers.rs`), bottom to top:
//!
//! ```text
//! server                          listeners, I/O threads, shutdown: composes the rest
//! session, admin                  client connections; the admin HTTP API
//! api                             request handlers
//! pipeline                        the request pipeline: context, stages, dispatch, errors
//! shared                          state every connection reads (DataPlane, Proxy), config loading, reload
//! failover                        route switching, fencing, offset hand-over
//! tee                             copies between sites
//! offsets, plugin                 offset translation; the WASM plugin host
//! upstream, route                 sites (connections, views, own client); routes
//! codec, metrics, config, identity  protocol, record batches, API versions; plain config data
//! ```

pub mod admin;
pub mod api;
pub mod authz;
pub mod codec;
pub mod config;
pub mod failover;
pub mod identity;
pub mod metrics;
pub mod offsets;
pub mod pipeline;
pub mod plugin;
pub mod route;
pub mod sasl;
pub mod server;
pub mod session;
pub mod shared;
pub mod tee;
pub mod tls;
pub mod upstream;
