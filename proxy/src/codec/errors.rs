//! The Kafka error codes Switchyard reads in answers or answers with itself,
//! all in one place and all from the protocol crate's definitions: a code's
//! meaning (and whether clients retry it) is Kafka's, never ours to restate.
//! Named constants rather than `ResponseError` values because answers carry
//! plain `i16`s and `match` needs constants.

use kafka_protocol::error::ResponseError as E;

pub const NONE: i16 = 0;
pub const CORRUPT_MESSAGE: i16 = E::CorruptMessage.code();
pub const OFFSET_OUT_OF_RANGE: i16 = E::OffsetOutOfRange.code();
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = E::UnknownTopicOrPartition.code();
pub const LEADER_NOT_AVAILABLE: i16 = E::LeaderNotAvailable.code();
pub const NOT_LEADER_OR_FOLLOWER: i16 = E::NotLeaderOrFollower.code();
pub const REQUEST_TIMED_OUT: i16 = E::RequestTimedOut.code();
pub const MESSAGE_TOO_LARGE: i16 = E::MessageTooLarge.code();
pub const NETWORK_EXCEPTION: i16 = E::NetworkException.code();
pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = E::CoordinatorLoadInProgress.code();
pub const COORDINATOR_NOT_AVAILABLE: i16 = E::CoordinatorNotAvailable.code();
pub const NOT_COORDINATOR: i16 = E::NotCoordinator.code();
pub const RECORD_LIST_TOO_LARGE: i16 = E::RecordListTooLarge.code();
pub const NOT_ENOUGH_REPLICAS: i16 = E::NotEnoughReplicas.code();
pub const NOT_ENOUGH_REPLICAS_AFTER_APPEND: i16 = E::NotEnoughReplicasAfterAppend.code();
pub const UNKNOWN_MEMBER_ID: i16 = E::UnknownMemberId.code();
pub const TOPIC_AUTHORIZATION_FAILED: i16 = E::TopicAuthorizationFailed.code();
pub const CLUSTER_AUTHORIZATION_FAILED: i16 = E::ClusterAuthorizationFailed.code();
pub const INVALID_TIMESTAMP: i16 = E::InvalidTimestamp.code();
pub const UNSUPPORTED_VERSION: i16 = E::UnsupportedVersion.code();
pub const NOT_CONTROLLER: i16 = E::NotController.code();
pub const INVALID_REQUEST: i16 = E::InvalidRequest.code();
pub const POLICY_VIOLATION: i16 = E::PolicyViolation.code();
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = E::OutOfOrderSequenceNumber.code();
pub const DUPLICATE_SEQUENCE_NUMBER: i16 = E::DuplicateSequenceNumber.code();
pub const INVALID_PRODUCER_EPOCH: i16 = E::InvalidProducerEpoch.code();
pub const OPERATION_NOT_ATTEMPTED: i16 = E::OperationNotAttempted.code();
pub const KAFKA_STORAGE_ERROR: i16 = E::KafkaStorageError.code();
pub const UNKNOWN_PRODUCER_ID: i16 = E::UnknownProducerId.code();
pub const INVALID_RECORD: i16 = E::InvalidRecord.code();
pub const FENCED_LEADER_EPOCH: i16 = E::FencedLeaderEpoch.code();
pub const UNKNOWN_LEADER_EPOCH: i16 = E::UnknownLeaderEpoch.code();
pub const UNKNOWN_TOPIC_ID: i16 = E::UnknownTopicId.code();
pub const UNSUPPORTED_ENDPOINT_TYPE: i16 = E::UnsupportedEndpointType.code();
pub const CONCURRENT_TRANSACTIONS: i16 = E::ConcurrentTransactions.code();
pub const GROUP_AUTHORIZATION_FAILED: i16 = E::GroupAuthorizationFailed.code();
pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = E::TransactionalIdAuthorizationFailed.code();

/// A code's name as Kafka spells it, for metric labels and logs.
pub fn name(code: i16) -> &'static str {
    match code {
        NONE => "NONE",
        CORRUPT_MESSAGE => "CORRUPT_MESSAGE",
        OFFSET_OUT_OF_RANGE => "OFFSET_OUT_OF_RANGE",
        UNKNOWN_TOPIC_OR_PARTITION => "UNKNOWN_TOPIC_OR_PARTITION",
        LEADER_NOT_AVAILABLE => "LEADER_NOT_AVAILABLE",
        NOT_LEADER_OR_FOLLOWER => "NOT_LEADER_OR_FOLLOWER",
        REQUEST_TIMED_OUT => "REQUEST_TIMED_OUT",
        MESSAGE_TOO_LARGE => "MESSAGE_TOO_LARGE",
        NETWORK_EXCEPTION => "NETWORK_EXCEPTION",
        COORDINATOR_LOAD_IN_PROGRESS => "COORDINATOR_LOAD_IN_PROGRESS",
        COORDINATOR_NOT_AVAILABLE => "COORDINATOR_NOT_AVAILABLE",
        NOT_COORDINATOR => "NOT_COORDINATOR",
        RECORD_LIST_TOO_LARGE => "RECORD_LIST_TOO_LARGE",
        NOT_ENOUGH_REPLICAS => "NOT_ENOUGH_REPLICAS",
        NOT_ENOUGH_REPLICAS_AFTER_APPEND => "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        UNKNOWN_MEMBER_ID => "UNKNOWN_MEMBER_ID",
        TOPIC_AUTHORIZATION_FAILED => "TOPIC_AUTHORIZATION_FAILED",
        CLUSTER_AUTHORIZATION_FAILED => "CLUSTER_AUTHORIZATION_FAILED",
        INVALID_TIMESTAMP => "INVALID_TIMESTAMP",
        UNSUPPORTED_VERSION => "UNSUPPORTED_VERSION",
        NOT_CONTROLLER => "NOT_CONTROLLER",
        INVALID_REQUEST => "INVALID_REQUEST",
        POLICY_VIOLATION => "POLICY_VIOLATION",
        OUT_OF_ORDER_SEQUENCE_NUMBER => "OUT_OF_ORDER_SEQUENCE_NUMBER",
        DUPLICATE_SEQUENCE_NUMBER => "DUPLICATE_SEQUENCE_NUMBER",
        INVALID_PRODUCER_EPOCH => "INVALID_PRODUCER_EPOCH",
        OPERATION_NOT_ATTEMPTED => "OPERATION_NOT_ATTEMPTED",
        KAFKA_STORAGE_ERROR => "KAFKA_STORAGE_ERROR",
        UNKNOWN_PRODUCER_ID => "UNKNOWN_PRODUCER_ID",
        INVALID_RECORD => "INVALID_RECORD",
        UNKNOWN_TOPIC_ID => "UNKNOWN_TOPIC_ID",
        UNSUPPORTED_ENDPOINT_TYPE => "UNSUPPORTED_ENDPOINT_TYPE",
        GROUP_AUTHORIZATION_FAILED => "GROUP_AUTHORIZATION_FAILED",
        CONCURRENT_TRANSACTIONS => "CONCURRENT_TRANSACTIONS",
        TRANSACTIONAL_ID_AUTHORIZATION_FAILED => "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_kafkas() {
        // Spot checks against the protocol guide's table, so a crate change
        // that renumbered them would not go unnoticed.
        assert_eq!(
            [
                NOT_LEADER_OR_FOLLOWER,
                NOT_COORDINATOR,
                NOT_CONTROLLER,
                UNKNOWN_TOPIC_ID
            ],
            [6, 16, 41, 100]
        );
        assert!(E::NotLeaderOrFollower.is_retriable() && E::CoordinatorNotAvailable.is_retriable());
        assert_eq!(name(NOT_CONTROLLER), "NOT_CONTROLLER");
    }
}
