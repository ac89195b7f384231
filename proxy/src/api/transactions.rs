//! What operators ask about transactions (`kafka-transactions`,
//! `Admin.listTransactions` / `describeTransactions`): ListTransactions
//! (key 66) from every transaction coordinator of every site, and
//! DescribeTransactions (key 65) from each transactional id's coordinator,
//! its topics under the client's names. Producer ids are the coordinators'
//! own: transactional producers are not remapped (`upstream::producer_ids`).

use std::collections::BTreeMap;

use kafka_protocol::messages::{
    describe_transactions_response, DescribeTransactionsRequest, DescribeTransactionsResponse,
    ListTransactionsRequest, ListTransactionsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{scatter, Ctx, Outcome};
use crate::codec::errors;
use crate::codec::RequestFrame;
use crate::route::Who;
use crate::upstream::Target;

/// Key type of a transactional id in FindCoordinator.
const TRANSACTION: i8 = 1;

/// ListTransactions: every coordinator's, together. A coordinator that
/// cannot be asked makes the answer COORDINATOR_NOT_AVAILABLE (retriable),
/// never a list with its transactions missing.
pub async fn list(ctx: &mut Ctx<'_>, req: RequestFrame) -> crate::pipeline::Result<Outcome> {
    let body: ListTransactionsRequest = req.decode()?;
    let parts = super::groups::every_coordinator(ctx, &body).await?;
    scatter(
        ctx,
        &req,
        parts,
        |_| {
            let mut r = ListTransactionsResponse::default();
            r.error_code = errors::COORDINATOR_NOT_AVAILABLE;
            Some(r)
        },
        |resps: Vec<(usize, ListTransactionsResponse)>| {
            let mut out = ListTransactionsResponse::default();
            for (_, r) in resps {
                out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                if out.error_code == errors::NONE {
                    out.error_code = r.error_code;
                }
                for f in r.unknown_state_filters {
                    if !out.unknown_state_filters.contains(&f) {
                        out.unknown_state_filters.push(f);
                    }
                }
                out.transaction_states.extend(r.transaction_states);
            }
            Ok(out)
        },
    )
    .await
}

/// DescribeTransactions: each transactional id to its coordinator (on the
/// site the routes' `groups` give it); the topics of each transaction under
/// the client's names.
pub async fn describe(ctx: &mut Ctx<'_>, req: RequestFrame) -> crate::pipeline::Result<Outcome> {
    let body: DescribeTransactionsRequest = req.decode()?;
    let who = ctx.who(&req);
    let (listener, client_id) = (who.listener.to_string(), who.client_id.to_string());
    let who = Who {
        listener: &listener,
        client_id: &client_id,
    };
    let mut parts: BTreeMap<Target, DescribeTransactionsRequest> = BTreeMap::new();
    for id in &body.transactional_ids {
        let target = super::groups::coordinator(ctx, who, TRANSACTION, id.0.as_str()).await?;
        parts
            .entry(target)
            .or_insert_with(|| {
                let mut s = body.clone();
                s.transactional_ids.clear();
                s
            })
            .transactional_ids
            .push(id.clone());
    }
    let router = ctx.plane.router.clone();
    scatter(
        ctx,
        &req,
        parts,
        |sub: DescribeTransactionsRequest| {
            let mut r = DescribeTransactionsResponse::default();
            for id in sub.transactional_ids {
                let mut s = describe_transactions_response::TransactionState::default();
                s.transactional_id = id;
                s.error_code = errors::COORDINATOR_NOT_AVAILABLE;
                r.transaction_states.push(s);
            }
            Some(r)
        },
        move |resps: Vec<(usize, DescribeTransactionsResponse)>| {
            let who = Who {
                listener: &listener,
                client_id: &client_id,
            };
            let mut out = DescribeTransactionsResponse::default();
            for (site, mut r) in resps {
                for t in r
                    .transaction_states
                    .iter_mut()
                    .flat_map(|s| s.topics.iter_mut())
                {
                    let name = router.client_name(who, site, t.topic.0.as_str());
                    if name != t.topic.0.as_str() {
                        t.topic = TopicName(StrBytes::from_string(name));
                    }
                }
                out.throttle_time_ms = out.throttle_time_ms.max(r.throttle_time_ms);
                out.transaction_states.extend(r.transaction_states);
            }
            Ok(out)
        },
    )
    .await
}
