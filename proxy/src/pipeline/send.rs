//! Sending a request upstream and passing or merging the answer: what the
//! handlers of the APIs routed by coordinator, cluster or config resource
//! use (the partitioned APIs go through `run::dispatch`).

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::{Ctx, Outcome, Reply};
use crate::codec::{self, RequestFrame};
use crate::upstream::{PendingResponse, Target};

/// Sends the client's request to `broker` unchanged and passes the response
/// back unchanged (the zero-copy path).
pub async fn forward(
    ctx: &mut Ctx<'_>,
    broker: Target,
    req: &RequestFrame,
) -> crate::pipeline::Result<Outcome> {
    forward_frame(ctx, broker, req, req.frame.clone()).await
}

/// Sends `frame` (the client's request, possibly rewritten) to `broker` and
/// passes the response back unchanged.
pub async fn forward_frame(
    ctx: &mut Ctx<'_>,
    broker: Target,
    req: &RequestFrame,
    frame: Bytes,
) -> crate::pipeline::Result<Outcome> {
    let pending = ctx.pools.call(broker, req.api_key, frame).await?;
    let timeout = ctx.plane.request_timeout();
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
) -> crate::pipeline::Result<Outcome>
where
    Resp: Decodable + Encodable + Send + 'static,
    F: FnOnce(&mut Resp) -> bool + Send + 'static,
{
    let pending = ctx.pools.call(broker, req.api_key, frame).await?;
    let timeout = ctx.plane.request_timeout();
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
) -> crate::pipeline::Result<Reply>
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
) -> crate::pipeline::Result<Outcome>
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
    let deadline = tokio::time::Instant::now() + ctx.plane.request_timeout();
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
