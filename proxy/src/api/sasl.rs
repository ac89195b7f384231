//! SaslHandshake and SaslAuthenticate, answered by Switchyard, and the gate
//! in front of every other request of a connection on a listener with
//! `sasl`: before authentication only ApiVersions and the SASL APIs pass
//! (anything else closes the connection, as Kafka brokers do); after it,
//! every request until the session ends (KIP-368: `session_lifetime_ms`,
//! the client re-authenticates before then; a request after it closes the
//! connection). A failed authentication is answered SASL_AUTHENTICATION_FAILED
//! and its connection closed at its next request; no upstream connection is
//! opened for a client that has not authenticated. The mechanisms
//! themselves are `crate::sasl`'s.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::codec::{self, RequestFrame};
use crate::config::SaslMechanism;
use crate::metrics::Metrics;
use crate::sasl::{Auth, Conversation, ServerSasl, Step};

const UNSUPPORTED_SASL_MECHANISM: i16 =
    kafka_protocol::error::ResponseError::UnsupportedSaslMechanism.code();
const ILLEGAL_SASL_STATE: i16 = kafka_protocol::error::ResponseError::IllegalSaslState.code();
const SASL_AUTHENTICATION_FAILED: i16 =
    kafka_protocol::error::ResponseError::SaslAuthenticationFailed.code();

/// What the gate makes of a request.
pub enum Gate {
    /// Route it as usual.
    Pass,
    /// Answer it with this frame (the SASL APIs).
    Answer(Bytes),
    /// Close the connection; why, for the log.
    Close(&'static str),
}

/// A connection's SASL: the listener's, and where this connection stands.
pub struct Sasl {
    pub server: Arc<ServerSasl>,
    pub auth: Auth,
    listener: String,
}

impl Sasl {
    /// The authenticated principal's name, once there is one.
    pub fn principal(&self) -> Option<Arc<str>> {
        match &self.auth {
            Auth::Done { principal, .. } => Some(principal.clone()),
            _ => None,
        }
    }

    pub fn new(server: Arc<ServerSasl>, listener: &str) -> Self {
        Sasl {
            server,
            auth: Auth::Start,
            listener: listener.to_string(),
        }
    }

    /// Lets `req` through, answers it, or closes the connection.
    pub async fn gate(
        &mut self,
        req: &RequestFrame,
        metrics: &Metrics,
    ) -> crate::pipeline::Result<Gate> {
        match req.api_key {
            ApiKey::ApiVersions => Ok(match self.auth {
                Auth::Failed => Gate::Close("a request after a failed SASL authentication"),
                _ => Gate::Pass,
            }),
            ApiKey::SaslHandshake => self.handshake(req),
            ApiKey::SaslAuthenticate => self.authenticate(req, metrics).await,
            _ => Ok(match &self.auth {
                Auth::Done { until, .. } if until.is_none_or(|t| Instant::now() < t) => Gate::Pass,
                Auth::Done { .. } => {
                    Gate::Close("SASL session expired (no re-authentication in time)")
                }
                Auth::Failed => Gate::Close("a request after a failed SASL authentication"),
                _ => Gate::Close("a request before SASL authentication"),
            }),
        }
    }

    fn handshake(&mut self, req: &RequestFrame) -> crate::pipeline::Result<Gate> {
        let body: SaslHandshakeRequest = req.decode()?;
        let mut resp = SaslHandshakeResponse::default();
        resp.mechanisms = self
            .server
            .mechanisms()
            .into_iter()
            .map(StrBytes::from_static_str)
            .collect();
        let asked = body.mechanism.to_string();
        // v0: the tokens would follow raw, outside Kafka's framing.
        let conversation = (req.api_version >= 1)
            .then(|| self.server.start(&asked))
            .flatten();
        let state = std::mem::replace(&mut self.auth, Auth::Failed);
        self.auth = match (state, conversation) {
            (Auth::Start, Some(c)) => Auth::Talking(c),
            // A re-authentication (KIP-368): the same mechanism only.
            (
                Auth::Done {
                    principal,
                    mechanism,
                    until,
                    again: None,
                },
                Some(c),
            ) if c.mechanism() == mechanism => Auth::Done {
                principal,
                mechanism,
                until,
                again: Some(c),
            },
            (state, None) => {
                resp.error_code = UNSUPPORTED_SASL_MECHANISM;
                state
            }
            _ => {
                resp.error_code = ILLEGAL_SASL_STATE;
                Auth::Failed
            }
        };
        answer(req, &resp)
    }

    async fn authenticate(
        &mut self,
        req: &RequestFrame,
        metrics: &Metrics,
    ) -> crate::pipeline::Result<Gate> {
        let body: SaslAuthenticateRequest = req.decode()?;
        let state = std::mem::replace(&mut self.auth, Auth::Failed);
        let (conversation, current) = match state {
            Auth::Talking(c) => (c, None),
            Auth::Done {
                principal,
                mechanism,
                until,
                again: Some(c),
            } => (c, Some((principal, mechanism, until))),
            _ => {
                let mut resp = SaslAuthenticateResponse::default();
                resp.error_code = ILLEGAL_SASL_STATE;
                resp.error_message = Some(StrBytes::from_static_str(
                    "SaslAuthenticate without a SaslHandshake",
                ));
                return answer(req, &resp);
            }
        };
        let mechanism = conversation.mechanism();
        let (conversation, step) = step(conversation, body.auth_bytes).await;
        let step = match (step, conversation) {
            (Step::Continue(reply), Some(c)) => {
                let mut resp = SaslAuthenticateResponse::default();
                resp.auth_bytes = Bytes::from(reply);
                self.auth = match current {
                    None => Auth::Talking(c),
                    Some((principal, mechanism, until)) => Auth::Done {
                        principal,
                        mechanism,
                        until,
                        again: Some(c),
                    },
                };
                return answer(req, &resp);
            }
            (Step::Continue(_), None) => {
                Step::Failed("Authentication failed: internal error".into())
            }
            (step, _) => step,
        };
        let count = |result: &str| {
            metrics
                .security
                .authentications
                .with_label_values(&[self.listener.as_str(), mechanism.name(), result])
                .inc();
        };
        let mut resp = SaslAuthenticateResponse::default();
        let message = match step {
            Step::Done { principal, .. }
                if current
                    .as_ref()
                    .is_some_and(|(p, _, _)| p.as_ref() != principal) =>
            {
                "Cannot change principals during re-authentication".to_string()
            }
            Step::Done {
                principal,
                reply,
                lifetime: credential,
            } => {
                count("ok");
                // The listener's limit, or the credential's own end if sooner.
                let lifetime = match (self.server.session_lifetime(), credential) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                resp.auth_bytes = Bytes::from(reply);
                resp.session_lifetime_ms =
                    lifetime.map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64);
                tracing::debug!(listener = %self.listener, principal = %principal, mechanism = mechanism.name(),
                    reauthentication = current.is_some(), "client authenticated");
                self.auth = Auth::Done {
                    principal: Arc::from(principal.as_str()),
                    mechanism,
                    until: lifetime.map(|d| Instant::now() + d),
                    again: None,
                };
                return answer(req, &resp);
            }
            Step::Failed(message) => message,
            Step::Continue(_) => "Authentication failed: internal error".to_string(),
        };
        count("failed");
        metrics.error(crate::metrics::kind::SASL_FAILED);
        tracing::info!(listener = %self.listener, mechanism = mechanism.name(), reason = %message,
            "client SASL authentication failed");
        resp.error_code = SASL_AUTHENTICATION_FAILED;
        resp.error_message = Some(StrBytes::from_string(message));
        answer(req, &resp)
    }
}

/// One step of a conversation, and the conversation if it goes on. PLAIN's
/// password check (PBKDF2, one step) runs on the blocking pool, SCRAM's
/// HMACs inline.
async fn step(mut c: Conversation, token: Bytes) -> (Option<Conversation>, Step) {
    if c.mechanism() != SaslMechanism::Plain {
        let s = c.step(&token);
        return (Some(c), s);
    }
    let s = tokio::task::spawn_blocking(move || c.step(&token))
        .await
        .unwrap_or_else(|e| Step::Failed(format!("Authentication failed: internal error ({e})")));
    (None, s)
}

/// SaslHandshake and SaslAuthenticate on a listener without `sasl`.
pub fn not_enabled(req: &RequestFrame) -> crate::pipeline::Result<Gate> {
    match req.api_key {
        ApiKey::SaslHandshake => {
            let mut resp = SaslHandshakeResponse::default();
            resp.error_code = UNSUPPORTED_SASL_MECHANISM;
            answer(req, &resp)
        }
        _ => {
            let mut resp = SaslAuthenticateResponse::default();
            resp.error_code = ILLEGAL_SASL_STATE;
            resp.error_message = Some(StrBytes::from_static_str(
                "SASL is not enabled on this listener",
            ));
            answer(req, &resp)
        }
    }
}

fn answer<T: kafka_protocol::protocol::Encodable>(
    req: &RequestFrame,
    resp: &T,
) -> crate::pipeline::Result<Gate> {
    Ok(Gate::Answer(codec::encode_response(
        req.api_key,
        req.api_version,
        req.correlation_id,
        resp,
    )?))
}
