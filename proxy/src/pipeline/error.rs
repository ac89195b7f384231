//! The data path's error: why a request could not be answered normally.
//! `unavailable::settle` is the one place that maps it to a metric kind and
//! to what the client gets (a retriable answer, or a closed connection).

use crate::upstream::UpstreamError;

/// A request's failure, from its route phase or while its answer was
/// awaited.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An upstream broker could not be reached, froze, or dropped the
    /// connection: answered for with the request's retriable error.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A request (or an upstream answer) that does not decode or encode at
    /// the version in use, or an API advertised without a handler: nothing
    /// safe to answer, the connection closes.
    #[error("{0:#}")]
    Protocol(anyhow::Error),
    /// Denied by the authorization rules with no answer to say so in
    /// (acks=0 Produce): the connection closes, as a Kafka broker's does.
    #[error("{0}")]
    Denied(String),
}

/// What handlers and stages return.
pub type Result<T> = std::result::Result<T, Error>;

impl From<anyhow::Error> for Error {
    /// An upstream failure carried through `anyhow` stays one.
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<UpstreamError>() {
            Ok(u) => Error::Upstream(u),
            Err(e) => Error::Protocol(e),
        }
    }
}

impl Error {
    /// A request Switchyard cannot make sense of.
    pub fn protocol(msg: impl std::fmt::Display) -> Self {
        Error::Protocol(anyhow::anyhow!("{msg}"))
    }

    /// The `switchyard_errors_total` kind it counts under.
    pub fn kind(&self) -> &'static str {
        use crate::metrics::kind;
        match self {
            Error::Upstream(UpstreamError::Timeout(_)) => kind::UPSTREAM_TIMEOUT,
            Error::Upstream(_) => kind::UPSTREAM,
            Error::Protocol(_) => kind::MALFORMED_REQUEST,
            Error::Denied(_) => kind::AUTHORIZATION_FAILED,
        }
    }

    /// The upstream failure, if that is what it is.
    pub fn upstream(&self) -> Option<&UpstreamError> {
        match self {
            Error::Upstream(u) => Some(u),
            Error::Protocol(_) | Error::Denied(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::kind;

    #[test]
    fn each_failure_has_one_kind_and_upstream_errors_survive_anyhow() {
        let timeout = Error::from(anyhow::Error::new(UpstreamError::Timeout("b:1".into())));
        assert_eq!(timeout.kind(), kind::UPSTREAM_TIMEOUT);
        assert!(timeout.upstream().is_some());
        let closed = Error::from(UpstreamError::Closed("b:1".into()));
        assert_eq!(closed.kind(), kind::UPSTREAM);
        let bad = Error::from(anyhow::anyhow!("truncated body"));
        assert_eq!(bad.kind(), kind::MALFORMED_REQUEST);
        assert!(bad.upstream().is_none());
    }
}
