//! Per-API handling: where each request goes and what is rewritten on the way.
//!
//! One module per family of APIs, and all rewriting for an API lives in its
//! module, so "what happens to a Fetch" has exactly one answer. A handler runs
//! in two phases, which is what keeps pipelining correct:
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
//! error (`unavailable`) and keeps the client's connection. Requests split
//! over several brokers answer a failed part's partitions themselves, so the
//! parts that worked still count.

pub mod admin;
pub mod cluster;
pub mod fence;
pub mod fetch;
pub mod groups;
pub mod metadata;
pub mod names;
pub mod partitions;
pub mod plugins;
pub mod produce;
pub mod split;
pub mod unavailable;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::codec::{self, errors, RequestFrame};
use crate::identity::Identity;
use crate::route::Who;
use crate::shared::{Listener, Proxy};
use crate::upstream::{PendingResponse, Pools, Site, Target};

/// A response for the client.
pub enum Reply {
    /// A complete response (header + body, no length prefix) built by us.
    Frame(Bytes),
    /// An upstream response forwarded as is; only the correlation id (its
    /// first four bytes) is replaced by the client's.
    Upstream { correlation_id: i32, frame: Bytes },
}

pub type Respond = Pin<Box<dyn Future<Output = anyhow::Result<Reply>> + Send>>;

/// Result of the route phase.
pub enum Outcome {
    /// The request has no response (acks=0 Produce).
    NoResponse,
    Ready(Reply),
    Later(Respond),
}

/// What a handler may use while routing.
pub struct Ctx<'a> {
    pub proxy: &'a Arc<Proxy>,
    pub pools: &'a mut Pools,
    pub listener: &'a Listener,
    /// The client's address (with its client id, how failover fencing
    /// recognises a consumer's fetch connections).
    pub peer: std::net::SocketAddr,
}

impl Ctx<'_> {
    /// A site by index (indexes come from the router, so they are valid).
    pub fn site(&self, i: usize) -> Arc<Site> {
        self.proxy.sites.get(i).unwrap_or(&self.proxy.site).clone()
    }

    /// The virtual cluster this client connected to.
    pub fn identity(&self) -> Arc<Identity> {
        self.listener.identity.clone()
    }

    /// The fencing key of the client that sent `req`.
    pub fn client_key(&self, req: &RequestFrame) -> crate::failover::fence::ClientKey {
        (
            req.client_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            self.peer.ip(),
        )
    }

    /// Who sent `req`, for routing.
    pub fn who<'r>(&'r self, req: &'r RequestFrame) -> Who<'r> {
        Who {
            listener: &self.listener.name,
            client_id: req.client_id.as_ref().map(|c| c.as_str()).unwrap_or(""),
        }
    }
}

/// Routes one request. The version was checked against the advertised table.
pub async fn route(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    match req.api_key {
        ApiKey::ApiVersions => {
            let table = ctx.proxy.version_table().await;
            let frame = codec::versions::respond(&table, req.api_version, req.correlation_id)?;
            Ok(Outcome::Ready(Reply::Frame(frame)))
        }
        ApiKey::Metadata => metadata::route(ctx, req).await,
        ApiKey::DescribeCluster => cluster::describe(ctx, &req),
        ApiKey::Produce => produce::route(ctx, req).await,
        ApiKey::Fetch => fetch::route(ctx, req).await,
        ApiKey::ListOffsets => partitions::list_offsets(ctx, req).await,
        ApiKey::DeleteRecords => partitions::delete_records(ctx, req).await,
        ApiKey::FindCoordinator => groups::find_coordinator(ctx, req).await,
        ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::OffsetDelete
        | ApiKey::OffsetCommit
        | ApiKey::TxnOffsetCommit => groups::by_group(ctx, req).await,
        ApiKey::OffsetFetch => groups::offset_fetch(ctx, req).await,
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
        other => anyhow::bail!("{other:?} is advertised but has no handler"),
    }
}

/// Sends the client's request to `broker` unchanged and passes the response
/// back unchanged (the zero-copy path).
pub async fn forward(
    ctx: &mut Ctx<'_>,
    broker: Target,
    req: &RequestFrame,
) -> anyhow::Result<Outcome> {
    forward_frame(ctx, broker, req, req.frame.clone()).await
}

/// Sends `frame` (the client's request, possibly rewritten) to `broker` and
/// passes the response back unchanged.
pub async fn forward_frame(
    ctx: &mut Ctx<'_>,
    broker: Target,
    req: &RequestFrame,
    frame: Bytes,
) -> anyhow::Result<Outcome> {
    let pending = ctx.pools.call(broker, req.api_key, frame).await?;
    let timeout = ctx.proxy.request_timeout();
    let corr = req.correlation_id;
    Ok(Outcome::Later(Box::pin(async move {
        let frame = pending.wait(timeout).await?;
        Ok(Reply::Upstream {
            correlation_id: corr,
            frame,
        })
    })))
}

/// Sends `req` to `broker` and lets `rewrite` edit the decoded response. When
/// `rewrite` returns false the upstream bytes are forwarded untouched.
pub async fn forward_rewriting<Resp, F>(
    ctx: &mut Ctx<'_>,
    broker: Target,
    req: &RequestFrame,
    frame: Bytes,
    rewrite: F,
) -> anyhow::Result<Outcome>
where
    Resp: Decodable + Encodable + Send + 'static,
    F: FnOnce(&mut Resp) -> bool + Send + 'static,
{
    let pending = ctx.pools.call(broker, req.api_key, frame).await?;
    let timeout = ctx.proxy.request_timeout();
    let (api, version, corr) = (req.api_key, req.api_version, req.correlation_id);
    Ok(Outcome::Later(Box::pin(async move {
        let frame = pending.wait(timeout).await?;
        rewrite_or_pass(api, version, corr, frame, rewrite)
    })))
}

/// Decodes an upstream response and lets `rewrite` edit it: re-encoded for the
/// client when `rewrite` changed something, else the upstream bytes as they are.
pub fn rewrite_or_pass<Resp, F>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    frame: Bytes,
    rewrite: F,
) -> anyhow::Result<Reply>
where
    Resp: Decodable + Encodable,
    F: FnOnce(&mut Resp) -> bool,
{
    let mut resp: Resp = codec::decode_response_body(api, version, &frame)?;
    if rewrite(&mut resp) {
        Ok(Reply::Frame(codec::encode_response(
            api,
            version,
            correlation_id,
            &resp,
        )?))
    } else {
        Ok(Reply::Upstream {
            correlation_id,
            frame,
        })
    }
}

/// Fans a request out to several brokers (one sub-request each, possibly on
/// several sites) and merges the decoded responses, each with the site it
/// came from, with `merge` into one response for the client.
pub async fn scatter<Req, Resp, M>(
    ctx: &mut Ctx<'_>,
    req: &RequestFrame,
    parts: BTreeMap<Target, Req>,
    merge: M,
) -> anyhow::Result<Outcome>
where
    Req: Encodable,
    Resp: Decodable + Encodable + Send + 'static,
    M: FnOnce(Vec<(usize, Resp)>) -> anyhow::Result<Resp> + Send + 'static,
{
    let mut pending: Vec<(usize, PendingResponse)> = Vec::with_capacity(parts.len());
    for (target, sub) in parts {
        let frame =
            codec::encode_request(req.api_key, req.api_version, req.client_id.clone(), &sub)?;
        pending.push((target.0, ctx.pools.call(target, req.api_key, frame).await?));
    }
    let deadline = tokio::time::Instant::now() + ctx.proxy.request_timeout();
    let (api, version, corr) = (req.api_key, req.api_version, req.correlation_id);
    Ok(Outcome::Later(Box::pin(async move {
        let mut resps = Vec::with_capacity(pending.len());
        for (site, p) in pending {
            let frame = p.wait_until(deadline).await?;
            resps.push((
                site,
                codec::decode_response_body::<Resp>(api, version, &frame)?,
            ));
        }
        let merged = merge(resps)?;
        Ok(Reply::Frame(codec::encode_response(
            api, version, corr, &merged,
        )?))
    })))
}

/// `scatter` for requests addressed by partition: a broker that cannot be
/// reached or fails before answering does not fail the request; its
/// partitions come to `merge` as `failed` (NOT_LEADER_OR_FOLLOWER, so their
/// clients refresh metadata and retry them) beside the other brokers' answers.
/// With `plugins`, `merge` runs plugin chains and runs on their blocking
/// pool (`Registry::offload`), off the async workers.
pub async fn scatter_partitioned<Req, Resp, M>(
    ctx: &mut Ctx<'_>,
    req: &RequestFrame,
    parts: BTreeMap<Target, Req>,
    timeout: std::time::Duration,
    plugins: Option<Arc<crate::plugin::registry::Registry>>,
    merge: M,
) -> anyhow::Result<Outcome>
where
    Req: Encodable + split::Partitioned,
    Resp: Decodable + Encodable + Send + 'static,
    M: FnOnce(Vec<(usize, Resp)>, Vec<split::Unroutable>) -> anyhow::Result<Resp> + Send + 'static,
{
    let (api, version, corr) = (req.api_key, req.api_version, req.correlation_id);
    let deadline = tokio::time::Instant::now() + timeout;
    let metrics = ctx.proxy.metrics.clone();
    let mut failed: Vec<split::Unroutable> = Vec::new();
    let fail = move |failed: &mut Vec<split::Unroutable>,
                     site: usize,
                     slots: split::Slots,
                     e: &crate::upstream::UpstreamError| {
        tracing::debug!(api = codec::api_name(api), error = %e, partitions = slots.len(),
            "partitions of a failed broker answered NOT_LEADER_OR_FOLLOWER");
        unavailable::count(&metrics, api, errors::NOT_LEADER_OR_FOLLOWER);
        failed.extend(
            slots
                .into_iter()
                .map(|(t, p)| (site, t, p, errors::NOT_LEADER_OR_FOLLOWER)),
        );
    };
    let mut pending = Vec::with_capacity(parts.len());
    for (target, sub) in parts {
        let frame = codec::encode_request(api, version, req.client_id.clone(), &sub)?;
        let slots = split::partitions_of(&sub);
        match ctx.pools.call(target, api, frame).await {
            Ok(p) => pending.push((target.0, p, slots)),
            Err(e) => fail(&mut failed, target.0, slots, &e),
        }
    }
    Ok(Outcome::Later(Box::pin(async move {
        let mut resps = Vec::with_capacity(pending.len());
        for (site, p, slots) in pending {
            match p.wait_until(deadline).await {
                Ok(frame) => resps.push((
                    site,
                    codec::decode_response_body::<Resp>(api, version, &frame)?,
                )),
                Err(e) => fail(&mut failed, site, slots, &e),
            }
        }
        let merged = match plugins {
            Some(reg) => reg
                .offload(move || merge(resps, failed))
                .await
                .map_err(anyhow::Error::msg)??,
            None => merge(resps, failed)?,
        };
        Ok(Reply::Frame(codec::encode_response(
            api, version, corr, &merged,
        )?))
    })))
}
