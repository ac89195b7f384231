//! Switchyard: a Kafka-protocol proxy that presents one stable virtual cluster
//! in front of one or more Kafka clusters ("sites").
//!
//! Follow a request: [`listener`](server) accepts → [`session`] reads a frame
//! ([`codec`]) → [`api`] routes it per partition or coordinator using the
//! [`upstream`] cluster view, rewriting identities into the virtual cluster
//! ([`identity`]) → the upstream answers → [`api`] merges and rewrites →
//! [`session`] writes responses back in request order.

pub mod admin;
pub mod api;
pub mod codec;
pub mod config;
pub mod identity;
pub mod metrics;
pub mod offsets;
pub mod route;
pub mod server;
pub mod session;
pub mod tee;
pub mod upstream;
