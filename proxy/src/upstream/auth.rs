//! SASL toward a site's broker (`sites[].sasl`): run on every new
//! connection, after TLS and before it carries anything else, within the
//! connect timeout. SaslHandshake v1 names the mechanism, then
//! SaslAuthenticate v2 carries the mechanism's messages
//! (`sasl::client`) until it is done. A broker that limits the session
//! (KIP-368 `connections.max.reauth.ms`) says how long it lasts; the
//! connection is then retired before that (`UpstreamConn`), never used
//! past it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::UpstreamError;
use crate::codec::{self, errors, read_frame};
use crate::sasl::client::{ClientSasl, Next};

const HANDSHAKE_VERSION: i16 = 1;
/// v1 carries the session lifetime; v2 is its flexible form.
const AUTHENTICATE_VERSION: i16 = 2;

/// Authenticates on `stream` to the broker at `addr`; the session's
/// lifetime if the broker limits it.
pub async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    addr: &str,
    sasl: &Arc<ClientSasl>,
    max_frame_bytes: u32,
) -> Result<Option<Duration>, UpstreamError> {
    let fail = |reason: String| UpstreamError::Auth {
        addr: addr.to_string(),
        reason: format!(
            "SASL {} as `{}`: {reason}",
            sasl.mechanism(),
            sasl.username()
        ),
    };
    // Reading a secret file or running a token command: off the workers.
    let s = sasl.clone();
    let (mut exchange, mut msg) = tokio::task::spawn_blocking(move || s.start())
        .await
        .map_err(|e| fail(e.to_string()))?
        .map_err(&fail)?;

    let mut hs = SaslHandshakeRequest::default();
    hs.mechanism = StrBytes::from_static_str(sasl.mechanism());
    let r: SaslHandshakeResponse = round_trip(
        stream,
        ApiKey::SaslHandshake,
        HANDSHAKE_VERSION,
        &hs,
        max_frame_bytes,
    )
    .await
    .map_err(&fail)?;
    if r.error_code != errors::NONE {
        let offered: Vec<&str> = r.mechanisms.iter().map(|m| m.as_str()).collect();
        return Err(fail(format!(
            "the broker does not enable it ({}; it offers {})",
            errors::name(r.error_code),
            if offered.is_empty() {
                "none".to_string()
            } else {
                offered.join(", ")
            }
        )));
    }
    loop {
        let mut a = SaslAuthenticateRequest::default();
        a.auth_bytes = Bytes::from(std::mem::take(&mut msg));
        let r: SaslAuthenticateResponse = round_trip(
            stream,
            ApiKey::SaslAuthenticate,
            AUTHENTICATE_VERSION,
            &a,
            max_frame_bytes,
        )
        .await
        .map_err(&fail)?;
        if r.error_code != errors::NONE {
            return Err(fail(format!(
                "{}{}",
                errors::name(r.error_code),
                r.error_message
                    .as_ref()
                    .map(|m| format!(": {}", m.as_str()))
                    .unwrap_or_default()
            )));
        }
        let lifetime = (r.session_lifetime_ms > 0)
            .then(|| Duration::from_millis(r.session_lifetime_ms as u64));
        let server = r.auth_bytes;
        // SCRAM's proof is PBKDF2 over the server's iteration count.
        let (ex, next) = tokio::task::spawn_blocking(move || {
            let next = exchange.next(&server);
            (exchange, next)
        })
        .await
        .map_err(|e| fail(e.to_string()))?;
        exchange = ex;
        match next.map_err(&fail)? {
            Next::Send(m) => msg = m,
            Next::Done => return Ok(lifetime),
        }
    }
}

/// One request and its answer on a connection nothing else uses yet.
async fn round_trip<S, Req, Resp>(
    stream: &mut S,
    api: ApiKey,
    version: i16,
    req: &Req,
    max_frame_bytes: u32,
) -> Result<Resp, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
    Req: kafka_protocol::protocol::Encodable,
    Resp: kafka_protocol::protocol::Decodable,
{
    let frame = codec::encode_request(
        api,
        version,
        Some(StrBytes::from_static_str("switchyard")),
        req,
    )
    .map_err(|e| e.to_string())?;
    let len = u32::try_from(frame.len()).map_err(|_| "request too large".to_string())?;
    let io = |e: std::io::Error| format!("{}: {e}", codec::api_name(api));
    stream.write_all(&len.to_be_bytes()).await.map_err(io)?;
    stream.write_all(&frame).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let answer = read_frame(stream, max_frame_bytes)
        .await
        .map_err(|e| match e {
            codec::FrameError::Closed => format!(
                "the broker closed the connection during {} (is its listener SASL?)",
                codec::api_name(api)
            ),
            e => format!("{}: {e}", codec::api_name(api)),
        })?;
    codec::decode_response_body(api, version, &answer)
        .map_err(|e| format!("bad {} answer: {e}", codec::api_name(api)))
}
