//! Answers on behalf of an upstream broker that cannot be reached, froze, or
//! dropped the connection: the one place that maps "the broker failed" to
//! what goes on the wire.
//!
//! A client that loses its connection reconnects, re-bootstraps and loses
//! every request in flight on it; a client that gets a retriable error
//! refreshes its metadata and retries just that request. So a broker's fault
//! is answered, never turned into a closed client connection: every slot of
//! the request (partition, group, topic, resource) gets the error the
//! client already handles for "ask again, maybe elsewhere":
//!
//! | requests | error |
//! |---|---|
//! | Produce, Fetch, ListOffsets, DeleteRecords, DescribeProducers (by partition leader) | NOT_LEADER_OR_FOLLOWER |
//! | group and transaction APIs, KIP-848's included (by coordinator) | NOT_COORDINATOR |
//! | FindCoordinator, ListGroups, ListTransactions | COORDINATOR_NOT_AVAILABLE |
//! | CreateTopics, DeleteTopics, CreatePartitions (by controller) | NOT_CONTROLLER |
//! | DescribeConfigs, AlterConfigs, IncrementalAlterConfigs | REQUEST_TIMED_OUT |
//! | Metadata (after a retry on another broker) | LEADER_NOT_AVAILABLE per topic asked |

use bytes::Bytes;
use kafka_protocol::messages::*;

use crate::codec::errors::{
    COORDINATOR_NOT_AVAILABLE, LEADER_NOT_AVAILABLE, NOT_CONTROLLER, NOT_COORDINATOR,
    NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT,
};
use crate::codec::RequestFrame;
use crate::identity::Identity;
use crate::metrics::Metrics;

/// How a request that failed ends. Every failure of the data path, in the
/// route phase or while its answer was awaited, is settled here: counted
/// under its metric kind, then answered for (an upstream's fault, see the
/// table above) or, for anything else, the connection closes (a request
/// Switchyard cannot make sense of leaves nothing safe to answer).
pub struct Settled {
    /// The `switchyard_errors_total` kind it was counted under.
    pub kind: &'static str,
    /// The answer to write; `None`: close the client connection.
    pub answer: Option<Bytes>,
}

/// Settles `error`, the failure of `req` (`None`: a request that keeps no
/// copy, Produce, which answers its own partitions' failures).
pub fn settle(
    error: &super::Error,
    req: Option<&RequestFrame>,
    identity: &Identity,
    metrics: &Metrics,
) -> Settled {
    let kind = error.kind();
    metrics.error(kind);
    let answer = error
        .upstream()
        .and(req)
        .and_then(|r| answer(r, identity, metrics));
    if answer.is_none() {
        metrics.client_closed(kind);
    }
    Settled { kind, answer }
}

/// The answer to `req` when its upstream failed, or `None` for an API that
/// has none (never reached with an upstream error; the session then closes).
pub fn answer(req: &RequestFrame, identity: &Identity, metrics: &Metrics) -> Option<Bytes> {
    let (code, frame) = build(req, identity).ok()??;
    count(metrics, req.api_key, code);
    Some(frame)
}

/// Counts an answer given on a broker's behalf.
pub fn count(metrics: &Metrics, api: ApiKey, code: i16) {
    metrics
        .upstream
        .retriable_answers
        .with_label_values(&[
            crate::codec::api_name(api),
            crate::codec::errors::name(code),
        ])
        .inc();
}

/// The retriable code each API's clients read as "the broker failed, ask
/// again" (the table above); `None`: an API without one.
fn code_for(api: ApiKey) -> Option<i16> {
    Some(match api {
        ApiKey::Produce
        | ApiKey::Fetch
        | ApiKey::ListOffsets
        | ApiKey::DeleteRecords
        | ApiKey::DescribeProducers => NOT_LEADER_OR_FOLLOWER,
        ApiKey::Metadata => LEADER_NOT_AVAILABLE,
        ApiKey::FindCoordinator | ApiKey::ListGroups | ApiKey::ListTransactions => {
            COORDINATOR_NOT_AVAILABLE
        }
        ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::OffsetDelete
        | ApiKey::InitProducerId
        | ApiKey::AddOffsetsToTxn
        | ApiKey::EndTxn
        | ApiKey::OffsetCommit
        | ApiKey::TxnOffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::DescribeGroups
        | ApiKey::DeleteGroups
        | ApiKey::AddPartitionsToTxn
        | ApiKey::ConsumerGroupHeartbeat
        | ApiKey::ConsumerGroupDescribe
        | ApiKey::DescribeTransactions => NOT_COORDINATOR,
        ApiKey::CreateTopics | ApiKey::DeleteTopics | ApiKey::CreatePartitions => NOT_CONTROLLER,
        ApiKey::DescribeConfigs | ApiKey::AlterConfigs | ApiKey::IncrementalAlterConfigs => {
            REQUEST_TIMED_OUT
        }
        _ => return None,
    })
}

fn build(req: &RequestFrame, identity: &Identity) -> anyhow::Result<Option<(i16, Bytes)>> {
    let Some(code) = code_for(req.api_key) else {
        return Ok(None);
    };
    let message = (code == REQUEST_TIMED_OUT)
        .then_some("the upstream broker did not answer through Switchyard; retry");
    super::answers::every_slot(req, identity, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;
    use crate::metrics::kind;
    use crate::upstream::UpstreamError;
    use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

    fn frame<R: Encodable>(api: ApiKey, version: i16, body: &R) -> RequestFrame {
        let f = codec::encode_request(api, version, Some(StrBytes::from_static_str("t")), body)
            .expect("encode");
        RequestFrame::parse(f).expect("parse")
    }

    fn answered<R: Decodable>(req: &RequestFrame) -> R {
        let id = Identity::new(
            "c",
            "127.0.0.1:9092".parse().expect("addr"),
            "localhost",
            3,
            None,
        );
        let (_, f) = build(req, &id).expect("build").expect("an answer");
        // The frame starts with the correlation id, as an upstream's would.
        codec::decode_response_body(req.api_key, req.api_version, &f).expect("decode")
    }

    fn topic(n: &str) -> TopicName {
        TopicName(StrBytes::from_string(n.to_string()))
    }

    #[test]
    fn failures_are_settled_in_one_place() {
        let id = Identity::new(
            "c",
            "127.0.0.1:9092".parse().expect("addr"),
            "localhost",
            3,
            None,
        );
        let metrics = Metrics::new();
        let mut body = MetadataRequest::default();
        let mut t = metadata_request::MetadataRequestTopic::default();
        t.name = Some(topic("a"));
        body.topics = Some(vec![t]);
        let req = frame(ApiKey::Metadata, 12, &body);

        // A broker that froze: counted as such, answered for.
        let timed_out = anyhow::Error::new(UpstreamError::Timeout("b:9092".into()));
        let s = settle(&timed_out.into(), Some(&req), &id, &metrics);
        assert_eq!(s.kind, kind::UPSTREAM_TIMEOUT);
        let f = s.answer.expect("answered for the broker");
        let r: MetadataResponse =
            codec::decode_response_body(req.api_key, req.api_version, &f).expect("decode");
        assert_eq!(r.topics[0].error_code, LEADER_NOT_AVAILABLE);

        // Produce keeps no copy: nothing to answer with, the connection closes.
        let refused = anyhow::Error::new(UpstreamError::Closed("b:9092".into()));
        let s = settle(&refused.into(), None, &id, &metrics);
        assert_eq!((s.kind, s.answer.is_none()), (kind::UPSTREAM, true));

        // Not an upstream's fault (a request we could not decode): close.
        let bad = anyhow::anyhow!("malformed");
        let s = settle(&bad.into(), Some(&req), &id, &metrics);
        assert_eq!(
            (s.kind, s.answer.is_none()),
            (kind::MALFORMED_REQUEST, true)
        );
    }

    #[test]
    fn every_partition_of_a_produce_gets_not_leader() {
        let mut body = ProduceRequest::default();
        body.acks = -1;
        for name in ["a", "b"] {
            let mut t = produce_request::TopicProduceData::default();
            t.name = topic(name);
            for i in 0..3 {
                let mut p = produce_request::PartitionProduceData::default();
                p.index = i;
                t.partition_data.push(p);
            }
            body.topic_data.push(t);
        }
        for v in [3, 9, 11] {
            let r: ProduceResponse = answered(&frame(ApiKey::Produce, v, &body));
            let got: Vec<(String, i32, i16)> = r
                .responses
                .iter()
                .flat_map(|t| {
                    t.partition_responses
                        .iter()
                        .map(move |p| (t.name.0.to_string(), p.index, p.error_code))
                })
                .collect();
            assert_eq!(got.len(), 6, "v{v}: {got:?}");
            assert!(
                got.iter().all(|g| g.2 == NOT_LEADER_OR_FOLLOWER),
                "v{v}: {got:?}"
            );
        }
    }

    #[test]
    fn acks_zero_produce_gets_no_answer() {
        let mut body = ProduceRequest::default();
        body.acks = 0;
        let id = Identity::new(
            "c",
            "127.0.0.1:9092".parse().expect("addr"),
            "localhost",
            3,
            None,
        );
        let built = build(&frame(ApiKey::Produce, 9, &body), &id).expect("build");
        assert!(built.is_none());
    }

    #[test]
    fn offset_fetch_answers_each_partition_in_old_versions_and_each_group_in_new() {
        let mut old = OffsetFetchRequest::default();
        old.group_id = GroupId(StrBytes::from_static_str("g"));
        let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
        t.name = topic("a");
        t.partition_indexes = vec![0, 1];
        old.topics = Some(vec![t]);
        for v in [1, 5, 7] {
            let r: OffsetFetchResponse = answered(&frame(ApiKey::OffsetFetch, v, &old));
            let parts: Vec<i16> = r
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
                .collect();
            assert_eq!(parts, vec![NOT_COORDINATOR; 2], "v{v}");
        }
        let mut new = OffsetFetchRequest::default();
        let mut g = offset_fetch_request::OffsetFetchRequestGroup::default();
        g.group_id = GroupId(StrBytes::from_static_str("g"));
        new.groups.push(g);
        let r: OffsetFetchResponse = answered(&frame(ApiKey::OffsetFetch, 8, &new));
        assert_eq!(r.groups.len(), 1);
        assert_eq!(r.groups[0].error_code, NOT_COORDINATOR);
    }

    #[test]
    fn coordinator_apis_get_not_coordinator() {
        let r: JoinGroupResponse =
            answered(&frame(ApiKey::JoinGroup, 5, &JoinGroupRequest::default()));
        assert_eq!(r.error_code, NOT_COORDINATOR);
        let r: HeartbeatResponse =
            answered(&frame(ApiKey::Heartbeat, 4, &HeartbeatRequest::default()));
        assert_eq!(r.error_code, NOT_COORDINATOR);
        let mut fc = FindCoordinatorRequest::default();
        fc.coordinator_keys = vec![StrBytes::from_static_str("g")];
        let r: FindCoordinatorResponse = answered(&frame(ApiKey::FindCoordinator, 4, &fc));
        assert_eq!(r.coordinators.len(), 1);
        assert_eq!(r.coordinators[0].error_code, COORDINATOR_NOT_AVAILABLE);
        let r: FindCoordinatorResponse = answered(&frame(
            ApiKey::FindCoordinator,
            1,
            &FindCoordinatorRequest::default(),
        ));
        assert_eq!(r.error_code, COORDINATOR_NOT_AVAILABLE);
    }

    #[test]
    fn fetch_partitions_get_not_leader_and_no_records() {
        let mut body = FetchRequest::default();
        let mut t = fetch_request::FetchTopic::default();
        t.topic = topic("a");
        let mut p = fetch_request::FetchPartition::default();
        p.partition = 2;
        t.partitions.push(p);
        body.topics.push(t);
        let r: FetchResponse = answered(&frame(ApiKey::Fetch, 11, &body));
        let p = &r.responses[0].partitions[0];
        assert_eq!(
            (p.partition_index, p.error_code),
            (2, NOT_LEADER_OR_FOLLOWER)
        );
    }

    /// Every API with an answer, at every version the crate speaks: the
    /// answer encodes (a field set outside its versions would fail here, and
    /// the client would lose its connection instead).
    #[test]
    fn every_answer_encodes_at_every_version() {
        macro_rules! check {
            ($($api:ident => $req:ty),* $(,)?) => {$(
                let range = <$req as kafka_protocol::protocol::Message>::VERSIONS;
                for v in range.min..=range.max {
                    let req = frame(ApiKey::$api, v, &<$req>::default());
                    let id = Identity::new("c", "127.0.0.1:9092".parse().expect("addr"), "localhost", 3, None);
                    let built = build(&req, &id);
                    assert!(matches!(built, Ok(Some(_))), "{:?} v{v}: {:?}", ApiKey::$api, built.err());
                }
            )*};
        }
        let mut produce = ProduceRequest::default();
        produce.acks = -1;
        let range = <ProduceRequest as kafka_protocol::protocol::Message>::VERSIONS;
        for v in range.min..=range.max {
            let id = Identity::new(
                "c",
                "127.0.0.1:9092".parse().expect("addr"),
                "localhost",
                3,
                None,
            );
            let built = build(&frame(ApiKey::Produce, v, &produce), &id);
            assert!(
                matches!(built, Ok(Some(_))),
                "Produce v{v}: {:?}",
                built.err()
            );
        }
        check!(
            Fetch => FetchRequest,
            ListOffsets => ListOffsetsRequest,
            DeleteRecords => DeleteRecordsRequest,
            Metadata => MetadataRequest,
            FindCoordinator => FindCoordinatorRequest,
            JoinGroup => JoinGroupRequest,
            SyncGroup => SyncGroupRequest,
            Heartbeat => HeartbeatRequest,
            LeaveGroup => LeaveGroupRequest,
            OffsetDelete => OffsetDeleteRequest,
            InitProducerId => InitProducerIdRequest,
            AddOffsetsToTxn => AddOffsetsToTxnRequest,
            EndTxn => EndTxnRequest,
            ListGroups => ListGroupsRequest,
            OffsetCommit => OffsetCommitRequest,
            TxnOffsetCommit => TxnOffsetCommitRequest,
            OffsetFetch => OffsetFetchRequest,
            DescribeGroups => DescribeGroupsRequest,
            DeleteGroups => DeleteGroupsRequest,
            ConsumerGroupHeartbeat => ConsumerGroupHeartbeatRequest,
            ConsumerGroupDescribe => ConsumerGroupDescribeRequest,
            DescribeProducers => DescribeProducersRequest,
            ListTransactions => ListTransactionsRequest,
            DescribeTransactions => DescribeTransactionsRequest,
            AddPartitionsToTxn => AddPartitionsToTxnRequest,
            CreateTopics => CreateTopicsRequest,
            DeleteTopics => DeleteTopicsRequest,
            CreatePartitions => CreatePartitionsRequest,
            DescribeConfigs => DescribeConfigsRequest,
            AlterConfigs => AlterConfigsRequest,
            IncrementalAlterConfigs => IncrementalAlterConfigsRequest,
        );
    }
}
