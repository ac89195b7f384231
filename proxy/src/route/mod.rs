//! Which site (cluster) serves a request: routes select topics by exact
//! name, prefix or regex. Routes must be disjoint, and `topic_match` can prove
//! whether two of them overlap (with an example topic), so an operator gets a
//! precise config error instead of traffic silently going to the first match.
//!
//! Multi-site routing itself (routes in the config, per-route sites, renaming
//! and tee) builds on this; see the routing issue.

pub mod topic_match;

pub use topic_match::{MatchError, TopicMatch};
