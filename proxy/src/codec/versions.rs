//! The APIs and versions Switchyard serves, and ApiVersions, answered by
//! Switchyard itself.
//!
//! What a client may use is the intersection of three things: what Switchyard
//! knows how to route and rewrite (the table below), what the `kafka-protocol`
//! crate can decode, and what the upstream cluster supports. An API missing
//! from any of them is not advertised, so clients never send it. The table is
//! an allow-list on purpose: an API we have not reviewed could carry broker
//! addresses or cluster-local ids that would leak past the virtual cluster.

use bytes::Bytes;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

use crate::codec;

/// The version range of each API key an upstream cluster supports (from its
/// ApiVersions answer).
pub type ApiRanges = std::collections::HashMap<i16, (i16, i16)>;

/// How a request is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Answered by Switchyard without asking upstream.
    Local,
    /// Routed upstream; the upstream must support the version too.
    Upstream,
}

/// `(api, min, max, served)`: versions Switchyard routes and rewrites.
///
/// Caps and why:
/// * Produce ≤ 12: v13 addresses topics by id; not yet mapped.
/// * Metadata ≤ 12, Fetch ≤ 17: everything up to these is rewritten
///   (topic ids, KIP-951 leader hints).
/// * DeleteTopics ≤ 5: v6 deletes by topic id.
/// * AddPartitionsToTxn ≤ 3: v4+ is the broker-to-broker batched form.
pub const TABLE: &[(ApiKey, i16, i16, Served)] = &[
    (ApiKey::Produce, 3, 12, Served::Upstream),
    (ApiKey::Fetch, 4, 17, Served::Upstream),
    (ApiKey::ListOffsets, 1, 10, Served::Upstream),
    (ApiKey::Metadata, 0, 12, Served::Upstream),
    (ApiKey::OffsetCommit, 2, 9, Served::Upstream),
    (ApiKey::OffsetFetch, 1, 9, Served::Upstream),
    (ApiKey::FindCoordinator, 0, 6, Served::Upstream),
    (ApiKey::JoinGroup, 0, 9, Served::Upstream),
    (ApiKey::Heartbeat, 0, 4, Served::Upstream),
    (ApiKey::LeaveGroup, 0, 5, Served::Upstream),
    (ApiKey::SyncGroup, 0, 5, Served::Upstream),
    (ApiKey::DescribeGroups, 0, 6, Served::Upstream),
    (ApiKey::ListGroups, 0, 5, Served::Upstream),
    (ApiKey::ApiVersions, 0, 4, Served::Local),
    (ApiKey::CreateTopics, 2, 7, Served::Upstream),
    (ApiKey::DeleteTopics, 1, 5, Served::Upstream),
    (ApiKey::DeleteRecords, 0, 2, Served::Upstream),
    (ApiKey::InitProducerId, 0, 5, Served::Upstream),
    (ApiKey::AddPartitionsToTxn, 0, 3, Served::Upstream),
    (ApiKey::AddOffsetsToTxn, 0, 4, Served::Upstream),
    (ApiKey::EndTxn, 0, 5, Served::Upstream),
    (ApiKey::TxnOffsetCommit, 0, 5, Served::Upstream),
    (ApiKey::DescribeConfigs, 0, 4, Served::Upstream),
    (ApiKey::AlterConfigs, 0, 2, Served::Upstream),
    (ApiKey::IncrementalAlterConfigs, 0, 1, Served::Upstream),
    (ApiKey::CreatePartitions, 0, 3, Served::Upstream),
    (ApiKey::DeleteGroups, 0, 2, Served::Upstream),
    (ApiKey::OffsetDelete, 0, 0, Served::Upstream),
    (ApiKey::DescribeCluster, 0, 1, Served::Local),
    // Transactions as operators see them (`api::partitions`,
    // `api::transactions`).
    (ApiKey::DescribeProducers, 0, 0, Served::Upstream),
    (ApiKey::DescribeTransactions, 0, 0, Served::Upstream),
    (ApiKey::ListTransactions, 0, 2, Served::Upstream),
    // KIP-848 consumer groups (`api::consumer_groups`).
    (ApiKey::ConsumerGroupHeartbeat, 0, 1, Served::Upstream),
    (ApiKey::ConsumerGroupDescribe, 0, 1, Served::Upstream),
    // Authentication is Switchyard's own (`api::sasl`). The handshake's v0
    // is advertised because librdkafka before 2.x requires it to be before
    // it uses v1, but is refused (its raw tokens without Kafka framing are
    // not served).
    (ApiKey::SaslHandshake, 0, 1, Served::Local),
    (ApiKey::SaslAuthenticate, 0, 2, Served::Local),
];

/// The versions clients may use, per API key (index = api key).
#[derive(Debug, Clone)]
pub struct VersionTable {
    ranges: Vec<Option<(i16, i16)>>,
    /// Encoded once; served to every client.
    pub advertised: Vec<ApiVersion>,
}

impl VersionTable {
    /// Intersects our table, the crate and the ranges of every upstream
    /// cluster known (none known: our table and the crate only).
    pub fn build<R: std::ops::Deref<Target = ApiRanges>>(upstreams: &[R]) -> Self {
        let mut ranges = vec![None; 128];
        let mut advertised = Vec::new();
        for &(api, min, max, served) in TABLE {
            let c = api.valid_versions();
            let (mut lo, mut hi) = (min.max(c.min), max.min(c.max));
            let mut missing = false;
            if served == Served::Upstream {
                for up in upstreams {
                    match up.get(&(api as i16)) {
                        Some(&(ulo, uhi)) => {
                            lo = lo.max(ulo);
                            hi = hi.min(uhi);
                        }
                        None => missing = true,
                    }
                }
            }
            if missing || lo > hi {
                continue;
            }
            ranges[api as usize] = Some((lo, hi));
            let mut v = ApiVersion::default();
            v.api_key = api as i16;
            // KAFKA-18659: Kafka 4 still advertises Produce v0 although it only
            // accepts v3+, because librdkafka <= 2.11 (kcat ships 2.0.2) derives
            // its compression support from the advertised minimum. Same here;
            // a real v0-2 Produce is still refused by `supports`.
            v.min_version = if api == ApiKey::Produce { 0 } else { lo };
            v.max_version = hi;
            advertised.push(v);
        }
        VersionTable { ranges, advertised }
    }

    pub fn supports(&self, api: ApiKey, version: i16) -> bool {
        matches!(self.ranges.get(api as usize), Some(Some((lo, hi))) if (*lo..=*hi).contains(&version))
    }

    pub fn range(&self, api: ApiKey) -> Option<(i16, i16)> {
        self.ranges.get(api as usize).copied().flatten()
    }
}

/// Builds the ApiVersions response for a client request of `version`.
///
/// A version newer than we know gets a v0 body with UNSUPPORTED_VERSION and
/// the full key list (KIP-511), so the client can retry with one we do know.
/// The response header is always v0, whatever the version.
pub fn respond(table: &VersionTable, version: i16, correlation_id: i32) -> anyhow::Result<Bytes> {
    let crate_max = ApiKey::ApiVersions.valid_versions().max;
    let ours = table
        .range(ApiKey::ApiVersions)
        .map(|r| r.1)
        .unwrap_or(crate_max);
    let mut resp = ApiVersionsResponse::default();
    resp.api_keys = table.advertised.clone();
    let body_version = if version > ours || version < 0 {
        resp.error_code = codec::errors::UNSUPPORTED_VERSION;
        0
    } else {
        version
    };
    codec::encode_response_with_header_version(0, body_version, correlation_id, &resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Decodable;

    #[test]
    fn intersection_with_upstream() {
        let mut up = ApiRanges::new();
        up.insert(ApiKey::Produce as i16, (0, 11));
        up.insert(ApiKey::Fetch as i16, (0, 17));
        up.insert(ApiKey::Metadata as i16, (0, 12));
        let t = VersionTable::build(&[&up]);
        assert_eq!(t.range(ApiKey::Produce), Some((3, 11)));
        assert_eq!(t.range(ApiKey::Fetch), Some((4, 17)));
        // Not offered by the upstream → not advertised.
        assert_eq!(t.range(ApiKey::JoinGroup), None);
        // Local APIs do not depend on the upstream.
        assert!(t.supports(ApiKey::ApiVersions, 3));
        assert!(t.supports(ApiKey::DescribeCluster, 0));
        assert!(!t.supports(ApiKey::Produce, 12));
    }

    #[test]
    fn unknown_api_versions_version_gets_v0_error() {
        let t = VersionTable::build::<&ApiRanges>(&[]);
        let frame = respond(&t, 99, 7).unwrap();
        let mut b = frame.slice(4..);
        assert_eq!(&frame[..4], &7i32.to_be_bytes());
        let r = ApiVersionsResponse::decode(&mut b, 0).unwrap();
        assert_eq!(r.error_code, 35);
        assert!(!r.api_keys.is_empty());
        assert!(b.is_empty(), "v0 body fully consumed");
    }

    #[test]
    fn v3_response_has_v0_header() {
        let t = VersionTable::build::<&ApiRanges>(&[]);
        let frame = respond(&t, 3, 1).unwrap();
        // Header v0: correlation id only, then the v3 body starts with error_code.
        let mut b = frame.slice(4..);
        let r = ApiVersionsResponse::decode(&mut b, 3).unwrap();
        assert_eq!(r.error_code, 0);
        assert!(b.is_empty());
    }
}
