//! Per-API handling: where each request goes and what is rewritten on the way.
//!
//! One module per family of APIs. The partitioned APIs (`produce`, `fetch`,
//! `partitions`) list their pipeline stages in order and say how answers
//! merge; the stages themselves live in `crate::pipeline`, one concern per
//! file, so "what happens to a Fetch" is one list. A handler runs in two
//! phases, which is what keeps pipelining correct:
//!
//! 1. **Route** (runs in request order on the session's reader): decide the
//!    upstream broker(s), rewrite the request and queue it on the upstream
//!    connection(s). Because queuing happens here, requests reach each broker in
//!    the order the client sent them (idempotent producers depend on that).
//! 2. **Respond** (a future the session's writer polls together with the
//!    connection's other pending answers, and writes in request order): wait
//!    for the upstream response(s), merge and rewrite them for the client.
//!
//! Upstream failures (refused, reset, timed out) surface as `UpstreamError`s
//! from either phase; the session answers them with the request's retriable
//! error (`pipeline::unavailable`) and keeps the client's connection. Requests split
//! over several brokers answer a failed part's partitions themselves, so the
//! parts that worked still count.

pub mod admin;
pub mod cluster;
pub mod consumer_groups;
pub mod fetch;
pub mod groups;
pub mod metadata;
pub mod partitions;
pub mod produce;
pub mod sasl;
pub mod transactions;

use kafka_protocol::messages::ApiKey;

use crate::codec::{self, RequestFrame};
use crate::pipeline::authorize;
pub use crate::pipeline::send::{
    forward, forward_frame, forward_rewriting, rewrite_or_pass, scatter,
};
pub use crate::pipeline::{Ctx, Outcome, Reply};

/// Routes one request. The version was checked against the advertised
/// table, the client authenticated. The authorize stage comes first: what
/// the principal may not do never reaches a handler, and a request denied
/// in part has its answer amended.
pub async fn route(ctx: &mut Ctx<'_>, req: RequestFrame) -> crate::pipeline::Result<Outcome> {
    match authorize::gate(
        &ctx.plane.authz,
        ctx.pools.principal(),
        &ctx.listener.identity,
        req,
    )? {
        authorize::Gate::Pass(req) => by_api(ctx, req).await,
        authorize::Gate::Trim(req, amend) => amend.outcome(by_api(ctx, req).await?),
        authorize::Gate::Answer(frame) => Ok(Outcome::Ready(Reply::Frame(frame))),
    }
}

/// The handler of each API.
async fn by_api(ctx: &mut Ctx<'_>, req: RequestFrame) -> crate::pipeline::Result<Outcome> {
    match req.api_key {
        ApiKey::ApiVersions => {
            let table = ctx.plane.version_table().await;
            let frame = codec::versions::respond(&table, req.api_version, req.correlation_id)?;
            Ok(Outcome::Ready(Reply::Frame(frame)))
        }
        ApiKey::Metadata => metadata::route(ctx, req).await,
        ApiKey::DescribeCluster => cluster::describe(ctx, &req),
        ApiKey::Produce => produce::route(ctx, req).await,
        ApiKey::Fetch => fetch::route(ctx, req).await,
        ApiKey::ListOffsets => partitions::list_offsets(ctx, req).await,
        ApiKey::DeleteRecords => partitions::delete_records(ctx, req).await,
        ApiKey::DescribeProducers => partitions::describe_producers(ctx, req).await,
        ApiKey::ListTransactions => transactions::list(ctx, req).await,
        ApiKey::DescribeTransactions => transactions::describe(ctx, req).await,
        ApiKey::FindCoordinator => groups::find_coordinator(ctx, req).await,
        ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::OffsetDelete
        | ApiKey::OffsetCommit
        | ApiKey::TxnOffsetCommit => groups::by_group(ctx, req).await,
        ApiKey::OffsetFetch => groups::offset_fetch(ctx, req).await,
        ApiKey::ConsumerGroupHeartbeat => consumer_groups::heartbeat(ctx, req).await,
        ApiKey::ConsumerGroupDescribe => consumer_groups::describe(ctx, req).await,
        ApiKey::DescribeGroups | ApiKey::DeleteGroups => groups::by_groups(ctx, req).await,
        ApiKey::ListGroups => groups::list_groups(ctx, req).await,
        ApiKey::InitProducerId
        | ApiKey::AddPartitionsToTxn
        | ApiKey::AddOffsetsToTxn
        | ApiKey::EndTxn => groups::by_transaction(ctx, req).await,
        ApiKey::CreateTopics => admin::create_topics(ctx, req).await,
        ApiKey::DeleteTopics => admin::delete_topics(ctx, req).await,
        ApiKey::CreatePartitions => admin::create_partitions(ctx, req).await,
        ApiKey::DescribeConfigs => admin::describe_configs(ctx, req).await,
        ApiKey::AlterConfigs => admin::alter_configs(ctx, req).await,
        ApiKey::IncrementalAlterConfigs => admin::incremental_alter_configs(ctx, req).await,
        other => Err(crate::pipeline::Error::protocol(format!(
            "{other:?} is advertised but has no handler"
        ))),
    }
}

/// The client id a request came with ("" without one), owned: a handler
/// that hands the request to the pipeline still routes by it.
pub fn client_id(req: &RequestFrame) -> String {
    req.client_id
        .as_ref()
        .map(|c| c.to_string())
        .unwrap_or_default()
}
