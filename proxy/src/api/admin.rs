//! Cluster administration: topic and config management.
//!
//! These go to the upstream controller (or any broker, which forwards to the
//! controller in KRaft clusters) unchanged. CreateTopics v7+ returns topic ids,
//! which become virtual ids like everywhere else.
//!
//! Broker config resources (`DescribeConfigs` with resource type BROKER) name
//! an upstream broker id; they are passed through as the upstream sees them.

use kafka_protocol::messages::{ApiKey, CreateTopicsResponse};

use super::{forward, forward_rewriting, Ctx, Outcome};
use crate::codec::RequestFrame;

pub async fn create_topics(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let site = ctx.site();
    let broker = site.any_broker().await?;
    let identity = ctx.proxy.identity.clone();
    let frame = req.frame.clone();
    forward_rewriting(
        ctx,
        broker,
        &req,
        frame,
        move |r: &mut CreateTopicsResponse| {
            site.mark_stale();
            let mut changed = false;
            for t in &mut r.topics {
                if !t.topic_id.is_nil() {
                    t.topic_id = identity.topic_id(t.name.0.as_str());
                    changed = true;
                }
            }
            changed
        },
    )
    .await
}

pub async fn to_controller(ctx: &mut Ctx<'_>, req: RequestFrame) -> anyhow::Result<Outcome> {
    let site = ctx.site();
    let broker = site.any_broker().await?;
    let outcome = forward(ctx, broker, &req).await?;
    // Topic deletions and new partitions change the layout: once the answer
    // is in, the next routing miss must refresh.
    let changes_layout = matches!(req.api_key, ApiKey::DeleteTopics | ApiKey::CreatePartitions);
    Ok(match outcome {
        Outcome::Later(f) if changes_layout => Outcome::Later(Box::pin(async move {
            let reply = f.await;
            site.mark_stale();
            reply
        })),
        other => other,
    })
}
