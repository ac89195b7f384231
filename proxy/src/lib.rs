//! Switchyard: a Kafka-protocol proxy that presents one stable virtual cluster
//! in front of one or more Kafka clusters ("sites").
//!
//! Follow a request: [`listener`](server) accepts → [`session`] reads a frame
//! ([`codec`]) → [`api`] asks [`route`] which site holds each topic and under
//! which physical name, then routes it per (site, partition leader) or
//! coordinator using the [`upstream`] cluster views, rewriting identities into
//! the virtual cluster ([`identity`]) → the upstreams answer → [`api`] merges,
//! renames back and rewrites → [`session`] writes responses back in request
//! order.
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
//! server                          listeners, shutdown: composes the rest
//! session, admin                  client connections; the admin HTTP API
//! api                             request handlers
//! shared                          state every connection reads (Proxy), config loading, reload
//! failover                        route switching, fencing, offset hand-over
//! tee                             copies between sites
//! offsets, plugin                 offset translation; the WASM plugin host
//! upstream, route                 sites (connections, views, own client); routes
//! codec, metrics, config, identity  protocol, record batches, API versions; plain config data
//! ```

pub mod admin;
pub mod api;
pub mod codec;
pub mod config;
pub mod failover;
pub mod identity;
pub mod metrics;
pub mod offsets;
pub mod pipeline;
pub mod plugin;
pub mod route;
pub mod server;
pub mod session;
pub mod shared;
pub mod tee;
pub mod upstream;
