//! Sending a request upstream and passing or merging the answer: what the
//! handlers of the APIs routed by coordinator, cluster or config resource
//! use (the partitioned APIs go through `run::dispatch`).

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::{Ctx, Outcome, Reply};
use crate::codec::{self, RequestFrame};
use crate::upstream::Target;

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
///
/// A broker that cannot be reached or does not answer in time costs the
/// client only that broker's part: `failed` answers its sub-request with
/// the retriable error the API's clients expect (e.g. COORDINATOR_NOT_AVAILABLE
/// per group), and the rest is merged as usual. When every part fails, or
/// `failed` has no answer for a part (`None`), the request fails (answered
/// in `pipeline::unavailable`).
pub async fn scatter<Req, Resp, M, F>(
    ctx: &mut Ctx<'_>,
    req: &RequestFrame,
    parts: BTreeMap<Target, Req>,
    failed: F,
    merge: M,
) -> crate::pipeline::Result<Outcome>
where
    Req: Encodable + Send + 'static,
    Resp: Decodable + Encodable + Send + 'static,
    M: FnOnce(Vec<(usize, Resp)>) -> anyhow::Result<Resp> + Send + 'static,
    F: Fn(Req) -> Option<Resp> + Send + 'static,
{
    let (api, version, corr) = (req.api_key, req.api_version, req.correlation_id);
    let mut pending = Vec::with_capacity(parts.len());
    let mut answered = Vec::new();
    let mut first_error = None;
    for (target, sub) in parts {
        let frame =
            codec::encode_request(req.api_key, req.api_version, req.client_id.clone(), &sub)?;
        match ctx.pools.call(target, req.api_key, frame).await {
            Ok(p) => pending.push((target.0, p, sub)),
            Err(e) => {
                tracing::debug!(api = codec::api_name(api), site = target.0, broker = target.1, error = %e,
                    "a broker's part of the request failed");
                match failed(sub) {
                    Some(r) => answered.push((target.0, r)),
                    None => return Err(e.into()),
                }
                first_error.get_or_insert(e);
            }
        }
    }
    if pending.is_empty() {
        if let Some(e) = first_error {
            return Err(e.into());
        }
    }
    let deadline = tokio::time::Instant::now() + ctx.plane.request_timeout();
    Ok(Outcome::Later(Box::pin(async move {
        let mut resps = answered;
        let mut last_error = None;
        let mut good = 0;
        for (site, p, sub) in pending {
            match p.wait_until(deadline).await {
                Ok(frame) => {
                    good += 1;
                    resps.push((
                        site,
                        codec::decode_response_body::<Resp>(api, version, &frame)?,
                    ));
                }
                Err(e) => {
                    tracing::debug!(api = codec::api_name(api), site, error = %e,
                        "a broker's part of the request failed");
                    match failed(sub) {
                        Some(r) => resps.push((site, r)),
                        None => return Err(e.into()),
                    }
                    last_error = Some(e);
                }
            }
        }
        // No broker answered: the request's own retriable answer says so.
        if good == 0 {
            if let Some(e) = last_error {
                return Err(e.into());
            }
        }
        let merged = merge(resps)?;
        Ok(Reply::Frame(codec::encode_response(
            api, version, corr, &merged,
        )?))
    })))
}
