//! DescribeCluster (key 60), answered locally from the virtual cluster.

use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};
use kafka_protocol::protocol::StrBytes;

use super::{Ctx, Outcome, Reply};
// UNSUPPORTED_ENDPOINT_TYPE: Switchyard has brokers, no controllers.
use crate::codec::errors::UNSUPPORTED_ENDPOINT_TYPE;
use crate::codec::{self, RequestFrame};

pub fn describe(ctx: &mut Ctx<'_>, req: &RequestFrame) -> crate::pipeline::Result<Outcome> {
    let body: DescribeClusterRequest = req.decode()?;
    let id = ctx.identity();
    let mut resp = DescribeClusterResponse::default();
    resp.endpoint_type = body.endpoint_type;
    if req.api_version >= 1 && body.endpoint_type != 1 {
        resp.error_code = UNSUPPORTED_ENDPOINT_TYPE;
        resp.error_message = Some(StrBytes::from_static_str(
            "Switchyard exposes broker endpoints only",
        ));
    } else {
        resp.cluster_id = StrBytes::from_string(id.cluster_id.clone());
        resp.controller_id = BrokerId(id.controller_id());
        // -2147483648: authorized operations not computed (as Kafka reports
        // when the client did not ask for them).
        resp.cluster_authorized_operations = i32::MIN;
        resp.brokers = id
            .nodes
            .iter()
            .map(|n| {
                let mut b = DescribeClusterBroker::default();
                b.broker_id = BrokerId(n.node_id);
                b.host = StrBytes::from_string(n.host.clone());
                b.port = n.port;
                b.rack = id.rack.clone().map(StrBytes::from_string);
                b
            })
            .collect();
    }
    let frame = codec::encode_response(req.api_key, req.api_version, req.correlation_id, &resp)?;
    Ok(Outcome::Ready(Reply::Frame(frame)))
}
