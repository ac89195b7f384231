//! Answers Switchyard builds for a whole request without an upstream's:
//! every slot of it (partition, topic, group, coordinator key, resource)
//! carries one error code, in the shape each API's clients read. A failed
//! upstream (`unavailable`, retriable codes) and a denied request
//! (`authorize`, the authorization codes) both answer through here.

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};

use crate::codec::{self, RequestFrame};
use crate::identity::Identity;

fn encode<R: Encodable>(
    req: &RequestFrame,
    code: i16,
    resp: &R,
) -> anyhow::Result<Option<(i16, Bytes)>> {
    let frame = codec::encode_response(req.api_key, req.api_version, req.correlation_id, resp)?;
    Ok(Some((code, frame)))
}

/// `req` answered without an upstream: every slot of it (partition, topic,
/// group, coordinator key, resource) carries `code`, and `message` where
/// the answer has room for one. `None` for a request without an answer
/// (acks=0 Produce) or an API not listed here.
pub fn every_slot(
    req: &RequestFrame,
    identity: &Identity,
    code: i16,
    message: Option<&'static str>,
) -> anyhow::Result<Option<(i16, Bytes)>> {
    macro_rules! top_level {
        ($resp:ty, $code:expr) => {{
            let mut resp = <$resp>::default();
            resp.error_code = $code;
            encode(req, $code, &resp)
        }};
    }
    match req.api_key {
        ApiKey::Produce => {
            let body: ProduceRequest = req.decode()?;
            // acks=0 has no answer: one here would be read as the answer
            // to the client's next request.
            if body.acks == 0 {
                return Ok(None);
            }
            encode(req, code, &produce(&body, code))
        }
        ApiKey::Fetch => {
            let body: FetchRequest = req.decode()?;
            let mut resp = FetchResponse::default();
            for t in &body.topics {
                let mut rt = fetch_response::FetchableTopicResponse::default();
                rt.topic = t.topic.clone();
                rt.topic_id = t.topic_id;
                for p in &t.partitions {
                    let mut rp = fetch_response::PartitionData::default();
                    rp.partition_index = p.partition;
                    rp.error_code = code;
                    rp.high_watermark = -1;
                    rp.last_stable_offset = -1;
                    rp.log_start_offset = -1;
                    rp.records = Some(Bytes::new());
                    rt.partitions.push(rp);
                }
                resp.responses.push(rt);
            }
            encode(req, code, &resp)
        }
        ApiKey::ListOffsets => {
            let body: ListOffsetsRequest = req.decode()?;
            let mut resp = ListOffsetsResponse::default();
            for t in &body.topics {
                let mut rt = list_offsets_response::ListOffsetsTopicResponse::default();
                rt.name = t.name.clone();
                for p in &t.partitions {
                    let mut rp = list_offsets_response::ListOffsetsPartitionResponse::default();
                    rp.partition_index = p.partition_index;
                    rp.error_code = code;
                    rp.offset = -1;
                    rp.timestamp = -1;
                    rt.partitions.push(rp);
                }
                resp.topics.push(rt);
            }
            encode(req, code, &resp)
        }
        ApiKey::DeleteRecords => {
            let body: DeleteRecordsRequest = req.decode()?;
            let mut resp = DeleteRecordsResponse::default();
            for t in &body.topics {
                let mut rt = delete_records_response::DeleteRecordsTopicResult::default();
                rt.name = t.name.clone();
                for p in &t.partitions {
                    let mut rp = delete_records_response::DeleteRecordsPartitionResult::default();
                    rp.partition_index = p.partition_index;
                    rp.error_code = code;
                    rp.low_watermark = -1;
                    rt.partitions.push(rp);
                }
                resp.topics.push(rt);
            }
            encode(req, code, &resp)
        }
        ApiKey::Metadata => {
            let body: MetadataRequest = req.decode()?;
            let mut resp = MetadataResponse::default();
            for t in body.topics.iter().flatten() {
                let mut rt = metadata_response::MetadataResponseTopic::default();
                rt.name = t.name.clone();
                rt.topic_id = t.topic_id;
                rt.error_code = code;
                resp.topics.push(rt);
            }
            super::identity::metadata_answer(identity, &mut resp);
            encode(req, code, &resp)
        }
        ApiKey::FindCoordinator => {
            let body: FindCoordinatorRequest = req.decode()?;
            let mut resp = FindCoordinatorResponse::default();
            if req.api_version < 4 {
                resp.error_code = code;
                resp.node_id = BrokerId(-1);
                resp.port = -1;
            }
            for key in &body.coordinator_keys {
                let mut c = find_coordinator_response::Coordinator::default();
                c.key = key.clone();
                c.node_id = BrokerId(-1);
                c.port = -1;
                c.error_code = code;
                resp.coordinators.push(c);
            }
            encode(req, code, &resp)
        }
        // One error code for the whole request.
        ApiKey::JoinGroup => top_level!(JoinGroupResponse, code),
        ApiKey::SyncGroup => top_level!(SyncGroupResponse, code),
        ApiKey::Heartbeat => top_level!(HeartbeatResponse, code),
        ApiKey::LeaveGroup => top_level!(LeaveGroupResponse, code),
        ApiKey::OffsetDelete => top_level!(OffsetDeleteResponse, code),
        ApiKey::InitProducerId => top_level!(InitProducerIdResponse, code),
        ApiKey::AddOffsetsToTxn => top_level!(AddOffsetsToTxnResponse, code),
        ApiKey::EndTxn => top_level!(EndTxnResponse, code),
        ApiKey::ConsumerGroupHeartbeat => {
            let mut resp = ConsumerGroupHeartbeatResponse::default();
            resp.error_code = code;
            resp.member_epoch = -1;
            encode(req, code, &resp)
        }
        ApiKey::ConsumerGroupDescribe => {
            let body: ConsumerGroupDescribeRequest = req.decode()?;
            let mut resp = ConsumerGroupDescribeResponse::default();
            for g in &body.group_ids {
                let mut rg = consumer_group_describe_response::DescribedGroup::default();
                rg.group_id = g.clone();
                rg.error_code = code;
                rg.authorized_operations = i32::MIN;
                resp.groups.push(rg);
            }
            encode(req, code, &resp)
        }
        ApiKey::ListGroups => top_level!(ListGroupsResponse, code),
        ApiKey::ListTransactions => top_level!(ListTransactionsResponse, code),
        ApiKey::DescribeTransactions => {
            let body: DescribeTransactionsRequest = req.decode()?;
            let mut resp = DescribeTransactionsResponse::default();
            for id in &body.transactional_ids {
                let mut s = describe_transactions_response::TransactionState::default();
                s.transactional_id = id.clone();
                s.error_code = code;
                resp.transaction_states.push(s);
            }
            encode(req, code, &resp)
        }
        ApiKey::DescribeProducers => {
            let body: DescribeProducersRequest = req.decode()?;
            let mut resp = DescribeProducersResponse::default();
            for t in &body.topics {
                let mut rt = describe_producers_response::TopicResponse::default();
                rt.name = t.name.clone();
                for &p in &t.partition_indexes {
                    let mut rp = describe_producers_response::PartitionResponse::default();
                    rp.partition_index = p;
                    rp.error_code = code;
                    rt.partitions.push(rp);
                }
                resp.topics.push(rt);
            }
            encode(req, code, &resp)
        }
        ApiKey::OffsetCommit => {
            let body: OffsetCommitRequest = req.decode()?;
            let mut resp = OffsetCommitResponse::default();
            for t in &body.topics {
                let mut rt = offset_commit_response::OffsetCommitResponseTopic::default();
                rt.name = t.name.clone();
                rt.topic_id = t.topic_id;
                for p in &t.partitions {
                    let mut rp = offset_commit_response::OffsetCommitResponsePartition::default();
                    rp.partition_index = p.partition_index;
                    rp.error_code = code;
                    rt.partitions.push(rp);
                }
                resp.topics.push(rt);
            }
            encode(req, code, &resp)
        }
        ApiKey::TxnOffsetCommit => {
            let body: TxnOffsetCommitRequest = req.decode()?;
            let mut resp = TxnOffsetCommitResponse::default();
            for t in &body.topics {
                let mut rt = txn_offset_commit_response::TxnOffsetCommitResponseTopic::default();
                rt.name = t.name.clone();
                for p in &t.partitions {
                    let mut rp =
                        txn_offset_commit_response::TxnOffsetCommitResponsePartition::default();
                    rp.partition_index = p.partition_index;
                    rp.error_code = code;
                    rt.partitions.push(rp);
                }
                resp.topics.push(rt);
            }
            encode(req, code, &resp)
        }
        ApiKey::OffsetFetch => {
            let body: OffsetFetchRequest = req.decode()?;
            let mut resp = OffsetFetchResponse::default();
            if (2..8).contains(&req.api_version) {
                resp.error_code = code;
            }
            // Before v2 there is no top-level error: an answer without the
            // partitions asked for would read as "nothing committed" (and
            // reset the consumer); each partition carries the error.
            for t in body.topics.iter().flatten() {
                let mut rt = offset_fetch_response::OffsetFetchResponseTopic::default();
                rt.name = t.name.clone();
                for &p in &t.partition_indexes {
                    let mut rp = offset_fetch_response::OffsetFetchResponsePartition::default();
                    rp.partition_index = p;
                    rp.committed_offset = -1;
                    rp.committed_leader_epoch = -1;
                    rp.error_code = code;
                    rt.partitions.push(rp);
                }
                resp.topics.push(rt);
            }
            for g in &body.groups {
                let mut rg = offset_fetch_response::OffsetFetchResponseGroup::default();
                rg.group_id = g.group_id.clone();
                rg.error_code = code;
                resp.groups.push(rg);
            }
            encode(req, code, &resp)
        }
        ApiKey::DescribeGroups => {
            let body: DescribeGroupsRequest = req.decode()?;
            let mut resp = DescribeGroupsResponse::default();
            for g in &body.groups {
                let mut rg = describe_groups_response::DescribedGroup::default();
                rg.group_id = g.clone();
                rg.error_code = code;
                resp.groups.push(rg);
            }
            encode(req, code, &resp)
        }
        ApiKey::DeleteGroups => {
            let body: DeleteGroupsRequest = req.decode()?;
            let mut resp = DeleteGroupsResponse::default();
            for g in &body.groups_names {
                let mut rg = delete_groups_response::DeletableGroupResult::default();
                rg.group_id = g.clone();
                rg.error_code = code;
                resp.results.push(rg);
            }
            encode(req, code, &resp)
        }
        ApiKey::AddPartitionsToTxn => {
            let body: AddPartitionsToTxnRequest = req.decode()?;
            let mut resp = AddPartitionsToTxnResponse::default();
            let topics = |ts: &[add_partitions_to_txn_request::AddPartitionsToTxnTopic]| {
                ts.iter()
                    .map(|t| {
                        let mut rt =
                            add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default();
                        rt.name = t.name.clone();
                        rt.results_by_partition = t
                            .partitions
                            .iter()
                            .map(|&p| {
                                let mut rp = add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default();
                                rp.partition_index = p;
                                rp.partition_error_code = code;
                                rp
                            })
                            .collect();
                        rt
                    })
                    .collect::<Vec<_>>()
            };
            if req.api_version <= 3 {
                resp.results_by_topic_v3_and_below = topics(&body.v3_and_below_topics);
            } else {
                resp.error_code = code;
                for t in &body.transactions {
                    let mut rt =
                        add_partitions_to_txn_response::AddPartitionsToTxnResult::default();
                    rt.transactional_id = t.transactional_id.clone();
                    rt.topic_results = topics(&t.topics);
                    resp.results_by_transaction.push(rt);
                }
            }
            encode(req, code, &resp)
        }
        ApiKey::CreateTopics => {
            let body: CreateTopicsRequest = req.decode()?;
            let mut resp = CreateTopicsResponse::default();
            for t in &body.topics {
                let mut rt = create_topics_response::CreatableTopicResult::default();
                rt.name = t.name.clone();
                rt.error_code = code;
                rt.num_partitions = -1;
                rt.replication_factor = -1;
                resp.topics.push(rt);
            }
            encode(req, code, &resp)
        }
        ApiKey::DeleteTopics => {
            let body: DeleteTopicsRequest = req.decode()?;
            let mut resp = DeleteTopicsResponse::default();
            let named = body
                .topic_names
                .iter()
                .map(|n| (Some(n.clone()), uuid::Uuid::nil()));
            let by_state = body.topics.iter().map(|t| (t.name.clone(), t.topic_id));
            for (name, id) in named.chain(by_state) {
                let mut rt = delete_topics_response::DeletableTopicResult::default();
                rt.name = name;
                rt.topic_id = id;
                rt.error_code = code;
                resp.responses.push(rt);
            }
            encode(req, code, &resp)
        }
        ApiKey::CreatePartitions => {
            let body: CreatePartitionsRequest = req.decode()?;
            let mut resp = CreatePartitionsResponse::default();
            for t in &body.topics {
                let mut rt = create_partitions_response::CreatePartitionsTopicResult::default();
                rt.name = t.name.clone();
                rt.error_code = code;
                resp.results.push(rt);
            }
            encode(req, code, &resp)
        }
        ApiKey::DescribeConfigs => {
            let body: DescribeConfigsRequest = req.decode()?;
            let mut resp = DescribeConfigsResponse::default();
            for r in &body.resources {
                let mut rr = describe_configs_response::DescribeConfigsResult::default();
                rr.resource_type = r.resource_type;
                rr.resource_name = r.resource_name.clone();
                rr.error_code = code;
                rr.error_message = message.map(StrBytes::from_static_str);
                resp.results.push(rr);
            }
            encode(req, code, &resp)
        }
        ApiKey::AlterConfigs => {
            let body: AlterConfigsRequest = req.decode()?;
            let mut resp = AlterConfigsResponse::default();
            for r in &body.resources {
                let mut rr = alter_configs_response::AlterConfigsResourceResponse::default();
                rr.resource_type = r.resource_type;
                rr.resource_name = r.resource_name.clone();
                rr.error_code = code;
                rr.error_message = message.map(StrBytes::from_static_str);
                resp.responses.push(rr);
            }
            encode(req, code, &resp)
        }
        ApiKey::IncrementalAlterConfigs => {
            let body: IncrementalAlterConfigsRequest = req.decode()?;
            let mut resp = IncrementalAlterConfigsResponse::default();
            for r in &body.resources {
                let mut rr =
                    incremental_alter_configs_response::AlterConfigsResourceResponse::default();
                rr.resource_type = r.resource_type;
                rr.resource_name = r.resource_name.clone();
                rr.error_code = code;
                rr.error_message = message.map(StrBytes::from_static_str);
                resp.responses.push(rr);
            }
            encode(req, code, &resp)
        }
        _ => Ok(None),
    }
}

/// Every partition of a Produce request answered `code` (names and ids as
/// the client sent them).
pub fn produce(body: &ProduceRequest, code: i16) -> ProduceResponse {
    let mut resp = ProduceResponse::default();
    for t in &body.topic_data {
        let mut rt = produce_response::TopicProduceResponse::default();
        rt.name = t.name.clone();
        rt.topic_id = t.topic_id;
        for p in &t.partition_data {
            let mut rp = produce_response::PartitionProduceResponse::default();
            rp.index = p.index;
            rp.error_code = code;
            rp.base_offset = -1;
            rp.log_append_time_ms = -1;
            rp.log_start_offset = -1;
            rt.partition_responses.push(rp);
        }
        resp.responses.push(rt);
    }
    resp
}
