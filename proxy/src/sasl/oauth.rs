//! OAUTHBEARER on a listener (RFC 7628, KIP-255): the client sends a JWT,
//! Switchyard checks it against a local JWKS file (the identity provider's
//! public keys): signature, issuer, audience, expiry. The principal is a
//! claim of the token (`sub` by default), and the session ends when the
//! token does (KIP-368), or sooner by `session_lifetime_ms`.
//!
//! The JWT work (parsing, key selection, signature, claims) is the
//! `jsonwebtoken` crate's; here only which keys, which claims, and the
//! SASL framing around the token.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::OauthBearerConfig;

/// Algorithms accepted: asymmetric only (a JWKS of public keys; a shared
/// HMAC secret has no place in a file every gateway reads).
const ALGORITHMS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
];

pub struct Validator {
    cfg: OauthBearerConfig,
    keys: ArcSwap<JwkSet>,
    stamp: Mutex<Option<SystemTime>>,
}

/// A valid token: who, and until when.
#[derive(Debug)]
pub struct Token {
    pub principal: String,
    /// Time left until the token expires.
    pub remaining: Duration,
}

impl Validator {
    pub fn new(cfg: &OauthBearerConfig) -> Result<Validator, String> {
        let keys = load(&cfg.jwks_file)?;
        Ok(Validator {
            stamp: Mutex::new(modified(&cfg.jwks_file)),
            cfg: cfg.clone(),
            keys: ArcSwap::from_pointee(keys),
        })
    }

    /// Re-reads the JWKS if the file changed (the provider rotated keys);
    /// a file that does not load keeps the keys read before (logged).
    pub fn refresh(&self) -> bool {
        let now = modified(&self.cfg.jwks_file);
        let Ok(mut stamp) = self.stamp.lock() else {
            return false;
        };
        if *stamp == now {
            return false;
        }
        *stamp = now;
        match load(&self.cfg.jwks_file) {
            Ok(k) => {
                tracing::info!(file = %self.cfg.jwks_file, keys = k.keys.len(), "JWKS changed; reloaded");
                self.keys.store(Arc::new(k));
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS changed but does not load; keeping the keys read before");
                false
            }
        }
    }

    /// Checks a JWT; why not, in words a client may see.
    pub fn validate(&self, jwt: &str) -> Result<Token, String> {
        let header = jsonwebtoken::decode_header(jwt).map_err(|e| format!("not a JWT: {e}"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        let keys = self.keys.load();
        let jwk = match &header.kid {
            Some(kid) => keys.find(kid),
            // Without a key id, a JWKS of one key is unambiguous.
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| "no key of the JWKS matches the token's key id".to_string())?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable JWKS key: {e}"))?;
        let mut v = Validation::new(header.alg);
        v.leeway = self.cfg.clock_skew_ms / 1000;
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&[&self.cfg.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(jwt, &key, &v)
                .map_err(|e| match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                        "the token expired".to_string()
                    }
                    jsonwebtoken::errors::ErrorKind::InvalidAudience => {
                        "wrong audience".to_string()
                    }
                    jsonwebtoken::errors::ErrorKind::InvalidIssuer => "wrong issuer".to_string(),
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => {
                        "bad signature".to_string()
                    }
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                        "not valid yet (nbf)".to_string()
                    }
                    _ => format!("invalid token: {e}"),
                })?;
        let principal = match data.claims.get(&self.cfg.principal_claim) {
            Some(serde_json::Value::String(p)) if !p.is_empty() => p.clone(),
            _ => {
                return Err(format!(
                    "no `{}` claim to name the principal",
                    self.cfg.principal_claim
                ))
            }
        };
        let exp = data
            .claims
            .get("exp")
            .and_then(|e| e.as_u64())
            .ok_or_else(|| "no `exp` claim".to_string())?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Ok(Token {
            principal,
            // Expired within the leeway: a session of a moment, re-authenticated at once.
            remaining: Duration::from_secs(exp.saturating_sub(now).max(1)),
        })
    }
}

/// The token of an RFC 7628 initial client response
/// (`n,,\x01auth=Bearer <token>\x01...\x01`); `None` if malformed.
pub fn bearer(message: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(message).ok()?;
    let (gs2, rest) = text.split_once('\x01')?;
    if !(gs2.starts_with("n,") || gs2.starts_with("y,")) {
        return None;
    }
    rest.split('\x01')
        .find_map(|kv| kv.strip_prefix("auth="))
        .and_then(|a| {
            a.strip_prefix("Bearer ")
                .or_else(|| a.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

fn load(path: &str) -> Result<JwkSet, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|e| format!("{path}: not a JWKS: {e}"))?;
    if set.keys.is_empty() {
        return Err(format!("{path}: the JWKS has no key"));
    }
    for k in &set.keys {
        DecodingKey::from_jwk(k).map_err(|e| format!("{path}: unusable key: {e}"))?;
    }
    Ok(set)
}

fn modified(path: &str) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_is_read_from_the_initial_response() {
        assert_eq!(
            bearer(b"n,,\x01auth=Bearer abc.def.ghi\x01\x01"),
            Some("abc.def.ghi")
        );
        assert_eq!(
            bearer(b"n,a=user,\x01host=h\x01auth=Bearer t\x01\x01"),
            Some("t")
        );
        assert_eq!(bearer(b"n,,\x01auth=Basic t\x01\x01"), None);
        assert_eq!(bearer(b"p=x,,\x01auth=Bearer t\x01\x01"), None);
        assert_eq!(bearer(b"\x01"), None);
        assert_eq!(bearer(b"\xff"), None);
    }
}
