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
//! runs with [`offsets`]; [`admin`] serves health, metrics and status.

pub mod admin;
pub mod api;
pub mod codec;
pub mod config;
pub mod failover;
pub mod identity;
pub mod metrics;
pub mod offsets;
pub mod plugin;
pub mod route;
pub mod server;
pub mod session;
pub mod tee;
pub mod upstream;
