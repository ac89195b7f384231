//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka speaks
//! them: the server side (Switchyard's listeners) with the salted
//! credentials it checks against, and the client side ([`Client`],
//! Switchyard authenticating to a site's brokers).
//!
//! A credential never holds the password: only the salt, the iteration
//! count and the two keys derived from the salted password (`StoredKey`,
//! `ServerKey`), as Kafka keeps them in its metadata. PLAIN is checked
//! against the same credential ([`Credential::verify_password`]).
//!
//! The exchange, two round trips:
//!
//! ```text
//! client-first   n,,n=<user>,r=<client nonce>
//! server-first   r=<client nonce><server nonce>,s=<salt>,i=<iterations>
//! client-final   c=<gs2 header>,r=<nonce>,p=<proof>
//! server-final   v=<server signature>
//! ```
//!
//! Channel binding is not offered (`n` or `y` only), as Kafka does not.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// The SCRAM hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
pub enum Hash {
    #[serde(rename = "SCRAM-SHA-256")]
    Sha256,
    #[serde(rename = "SCRAM-SHA-512")]
    Sha512,
}

impl Hash {
    pub fn mechanism(self) -> &'static str {
        match self {
            Hash::Sha256 => "SCRAM-SHA-256",
            Hash::Sha512 => "SCRAM-SHA-512",
        }
    }

    /// Kafka's minimum iterations for its SCRAM credentials.
    pub const MIN_ITERATIONS: u32 = 4096;

    fn hmac(self, key: &[u8], data: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], data: &[&[u8]]) -> Vec<u8> {
            // HMAC takes keys of any length.
            let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("any key length");
            for d in data {
                m.update(d);
            }
            m.finalize().into_bytes().to_vec()
        }
        match self {
            Hash::Sha256 => run::<Hmac<Sha256>>(key, data),
            Hash::Sha512 => run::<Hmac<Sha512>>(key, data),
        }
    }

    fn h(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    /// `Hi(password, salt, i)`: PBKDF2 with this hash's HMAC. Slow on
    /// purpose (`iterations`): run it off the async workers.
    fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Hash::Sha256 => {
                let mut out = vec![0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
                out
            }
            Hash::Sha512 => {
                let mut out = vec![0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
                out
            }
        }
    }
}

/// A user's SCRAM credential for one hash (base64 fields in files).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    #[serde(with = "b64")]
    pub salt: Vec<u8>,
    pub iterations: u32,
    #[serde(with = "b64")]
    pub stored_key: Vec<u8>,
    #[serde(with = "b64")]
    pub server_key: Vec<u8>,
}

mod b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        B64.decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

/// `n` random bytes from the operating system.
pub fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    // The OS generator failing is not something to serve through.
    getrandom::fill(&mut b).expect("the operating system's random generator");
    b
}

impl Credential {
    /// A new credential for `password` with a fresh random salt.
    pub fn new(hash: Hash, password: &[u8], iterations: u32) -> Credential {
        let salt = random(24);
        let salted = hash.salted_password(password, &salt, iterations);
        let client_key = hash.hmac(&salted, &[b"Client Key"]);
        Credential {
            stored_key: hash.h(&client_key),
            server_key: hash.hmac(&salted, &[b"Server Key"]),
            salt,
            iterations,
        }
    }

    /// Whether `password` is this credential's (PLAIN). Slow (PBKDF2): run
    /// it off the async workers.
    pub fn verify_password(&self, hash: Hash, password: &[u8]) -> bool {
        let salted = hash.salted_password(password, &self.salt, self.iterations);
        let client_key = hash.hmac(&salted, &[b"Client Key"]);
        bool::from(hash.h(&client_key).ct_eq(&self.stored_key))
    }
}

/// Why an exchange failed. `Malformed` is the client's protocol error;
/// `BadCredentials` must not tell an unknown user from a wrong password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Malformed(String),
    BadCredentials,
}

/// A parsed client-first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    pub user: String,
    /// `n,,` or `y,,` (with an authzid: `n,a=<id>,`), echoed in `c=`.
    gs2_header: String,
    bare: String,
    nonce: String,
}

impl ClientFirst {
    pub fn parse(msg: &[u8]) -> Result<ClientFirst, Failure> {
        let bad = |why: &str| Failure::Malformed(why.to_string());
        let text = std::str::from_utf8(msg).map_err(|_| bad("client-first is not UTF-8"))?;
        let (flag, rest) = text.split_once(',').ok_or_else(|| bad("no GS2 header"))?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(bad("channel binding is not supported")),
            _ => return Err(bad("bad GS2 channel-binding flag")),
        }
        let (authzid, bare) = rest.split_once(',').ok_or_else(|| bad("no GS2 header"))?;
        if !authzid.is_empty() && !authzid.starts_with("a=") {
            return Err(bad("bad GS2 authzid"));
        }
        let gs2_header = format!("{flag},{authzid},");
        let mut user = None;
        let mut nonce = None;
        for (i, attr) in bare.split(',').enumerate() {
            match (i, attr.split_at_checked(2)) {
                (0, Some(("n=", u))) => {
                    user = Some(saslname(u).ok_or_else(|| bad("bad user name"))?)
                }
                (1, Some(("r=", r))) if !r.is_empty() => nonce = Some(r.to_string()),
                (0, _) => return Err(bad("client-first must start with n=")),
                (1, _) => return Err(bad("client-first has no nonce")),
                // Extensions (Kafka's `tokenauth` for delegation tokens)
                // are not served here: tokens are the cluster's.
                _ => return Err(bad("SCRAM extensions are not supported")),
            }
        }
        let user = user.ok_or_else(|| bad("client-first has no user"))?;
        let nonce = nonce.ok_or_else(|| bad("client-first has no nonce"))?;
        if let Some(a) = authzid.strip_prefix("a=") {
            if saslname(a).as_deref() != Some(user.as_str()) {
                return Err(Failure::BadCredentials);
            }
        }
        Ok(ClientFirst {
            user,
            gs2_header,
            bare: bare.to_string(),
            nonce,
        })
    }
}

/// RFC 5802 saslname: `=2C` is `,`, `=3D` is `=`, any other `=` is an error.
fn saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    (!out.is_empty()).then_some(out)
}

/// The server's side of one exchange, after the client-first message.
pub struct Server {
    hash: Hash,
    first: ClientFirst,
    server_first: String,
    nonce: String,
    credential: Credential,
}

impl Server {
    /// Answers a client-first message for a user whose credential is known.
    pub fn start(hash: Hash, first: ClientFirst, credential: Credential) -> (Server, Vec<u8>) {
        // Letters and digits, as Kafka's own server nonces are.
        let ours: String = random(16).iter().map(|b| format!("{b:02x}")).collect();
        let nonce = format!("{}{ours}", first.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        let out = server_first.clone().into_bytes();
        (
            Server {
                hash,
                first,
                server_first,
                nonce,
                credential,
            },
            out,
        )
    }

    pub fn user(&self) -> &str {
        &self.first.user
    }

    /// Checks the client-final message; the server-final message if the
    /// proof is right.
    pub fn finish(self, msg: &[u8]) -> Result<Vec<u8>, Failure> {
        let bad = |why: &str| Failure::Malformed(why.to_string());
        let text = std::str::from_utf8(msg).map_err(|_| bad("client-final is not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or_else(|| bad("client-final has no proof"))?;
        let mut parts = without_proof.split(',');
        let binding = parts
            .next()
            .and_then(|c| c.strip_prefix("c="))
            .ok_or_else(|| bad("client-final must start with c="))?;
        let nonce = parts
            .next()
            .and_then(|r| r.strip_prefix("r="))
            .ok_or_else(|| bad("client-final has no nonce"))?;
        if parts.next().is_some() {
            return Err(bad("SCRAM extensions are not supported"));
        }
        if B64.decode(binding).ok().as_deref() != Some(self.first.gs2_header.as_bytes()) {
            return Err(bad("channel binding does not match the GS2 header"));
        }
        // Ends with, as Kafka checks it: librdkafka sends its own nonce
        // again in front of the combined one.
        if !nonce.ends_with(&self.nonce) {
            tracing::debug!(user = %self.first.user, "SCRAM client-final with another nonce");
            return Err(Failure::BadCredentials);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| bad("the proof is not base64"))?;
        let auth_message = format!("{},{},{without_proof}", self.first.bare, self.server_first);
        let h = self.hash;
        let signature = h.hmac(&self.credential.stored_key, &[auth_message.as_bytes()]);
        if proof.len() != signature.len() {
            return Err(Failure::BadCredentials);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        if !bool::from(h.h(&client_key).ct_eq(&self.credential.stored_key)) {
            tracing::debug!(user = %self.first.user, "SCRAM proof does not match the stored key");
            return Err(Failure::BadCredentials);
        }
        let server_signature = h.hmac(&self.credential.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// The most iterations a server may ask of [`Client`]: each costs a
/// PBKDF2 round on our side, and a server asking for millions would make
/// every connection to it slow (Kafka allows at most 16384).
pub const MAX_ITERATIONS: u32 = 1 << 20;

/// RFC 5802 saslname encoding of a user name (`,` and `=` escaped).
fn encode_saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// The client's side of one exchange: Switchyard authenticating to a
/// site's broker.
pub struct Client {
    hash: Hash,
    bare: String,
    nonce: String,
}

/// The client-final message and the server signature to expect.
pub struct ClientFinal {
    pub message: Vec<u8>,
    server_signature: Vec<u8>,
}

impl Client {
    /// Starts an exchange: the client-first message.
    pub fn start(hash: Hash, user: &str) -> (Client, Vec<u8>) {
        let nonce: String = random(24).iter().map(|b| format!("{b:02x}")).collect();
        let bare = format!("n={},r={nonce}", encode_saslname(user));
        let first = format!("n,,{bare}").into_bytes();
        (Client { hash, bare, nonce }, first)
    }

    /// Answers the server-first message. Slow (PBKDF2 over the server's
    /// iteration count): run it off the async workers.
    pub fn answer(&self, server_first: &[u8], password: &[u8]) -> Result<ClientFinal, Failure> {
        let bad = |why: &str| Failure::Malformed(why.to_string());
        let text =
            std::str::from_utf8(server_first).map_err(|_| bad("server-first is not UTF-8"))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(Failure::Malformed(format!("server error: {e}")));
        }
        let mut parts = text.split(',');
        let nonce = parts
            .next()
            .and_then(|r| r.strip_prefix("r="))
            .ok_or_else(|| bad("server-first has no nonce"))?;
        let salt = parts
            .next()
            .and_then(|s| s.strip_prefix("s="))
            .ok_or_else(|| bad("server-first has no salt"))?;
        let iterations: u32 = parts
            .next()
            .and_then(|i| i.strip_prefix("i="))
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| bad("server-first has no iteration count"))?;
        // The server's nonce extends ours; anything else is not our exchange.
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(bad("server-first nonce does not extend ours"));
        }
        if !(Hash::MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(Failure::Malformed(format!(
                "server-first asks for {iterations} iterations (accepted: {}..={MAX_ITERATIONS})",
                Hash::MIN_ITERATIONS
            )));
        }
        let salt = B64
            .decode(salt)
            .map_err(|_| bad("server-first salt is not base64"))?;
        let h = self.hash;
        let salted = h.salted_password(password, &salt, iterations);
        let client_key = h.hmac(&salted, &[b"Client Key"]);
        let stored_key = h.h(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.bare);
        let signature = h.hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = h.hmac(&salted, &[b"Server Key"]);
        Ok(ClientFinal {
            message: format!("{without_proof},p={}", B64.encode(proof)).into_bytes(),
            server_signature: h.hmac(&server_key, &[auth_message.as_bytes()]),
        })
    }
}

impl ClientFinal {
    /// Checks the server-final message: the server knew our credential too.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), Failure> {
        let text = std::str::from_utf8(server_final)
            .map_err(|_| Failure::Malformed("server-final is not UTF-8".into()))?;
        if let Some(e) = text.strip_prefix("e=") {
            return Err(Failure::Malformed(format!("server error: {e}")));
        }
        let v = text
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v.split(',').next().unwrap_or(v)).ok())
            .ok_or_else(|| Failure::Malformed("server-final has no signature".into()))?;
        if bool::from(v.ct_eq(&self.server_signature)) {
            Ok(())
        } else {
            Err(Failure::Malformed(
                "the server's signature is wrong (it does not know our credential)".into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_client_and_server_agree_and_a_wrong_password_fails() {
        for hash in [Hash::Sha256, Hash::Sha512] {
            let cred = Credential::new(hash, b"pw,=x", 4096);
            for (password, ok) in [(&b"pw,=x"[..], true), (b"nope", false)] {
                let (client, first) = Client::start(hash, "a,b=c");
                let first = ClientFirst::parse(&first).unwrap();
                assert_eq!(first.user, "a,b=c");
                let (server, sf) = Server::start(hash, first, cred.clone());
                let fin = client.answer(&sf, password).unwrap();
                match server.finish(&fin.message) {
                    Ok(sfin) => {
                        assert!(ok);
                        fin.verify(&sfin).unwrap();
                        assert!(fin.verify(b"v=AAAA").is_err(), "a forged server signature");
                    }
                    Err(e) => {
                        assert!(!ok);
                        assert_eq!(e, Failure::BadCredentials);
                    }
                }
            }
        }
    }

    #[test]
    fn a_client_refuses_a_server_first_that_is_not_its_exchange() {
        let (client, _) = Client::start(Hash::Sha256, "u");
        let ours = client.nonce.clone();
        for (msg, words) in [
            ("r=other,s=AAAA,i=4096".to_string(), "extend"),
            (format!("r={ours},s=AAAA,i=4096"), "extend"),
            (format!("r={ours}x,s=AAAA,i=100"), "iterations"),
            (format!("r={ours}x,s=AAAA,i=999999999"), "iterations"),
            (format!("r={ours}x,s=!!,i=4096"), "base64"),
            ("e=unknown-user".to_string(), "server error"),
        ] {
            match client.answer(msg.as_bytes(), b"pw") {
                Err(Failure::Malformed(m)) => assert!(m.contains(words), "{m} for {msg}"),
                Err(e) => panic!("{msg}: {e:?}"),
                Ok(_) => panic!("{msg}: accepted"),
            }
        }
    }

    /// The client side, as RFC 5802 computes it, for the tests.
    fn client_final(hash: Hash, password: &str, first_bare: &str, server_first: &str) -> String {
        let attrs: Vec<&str> = server_first.split(',').collect();
        let nonce = &attrs[0][2..];
        let salt = B64.decode(&attrs[1][2..]).unwrap();
        let iterations: u32 = attrs[2][2..].parse().unwrap();
        let salted = hash.salted_password(password.as_bytes(), &salt, iterations);
        let client_key = hash.hmac(&salted, &[b"Client Key"]);
        let stored = hash.h(&client_key);
        let without = format!("c=biws,r={nonce}");
        let auth = format!("{first_bare},{server_first},{without}");
        let sig = hash.hmac(&stored, &[auth.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        format!("{without},p={}", B64.encode(proof))
    }

    #[test]
    fn rfc_7677_test_vector() {
        // RFC 7677 section 3: user "user", password "pencil".
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = Hash::Sha256.salted_password(b"pencil", &salt, 4096);
        let client_key = Hash::Sha256.hmac(&salted, &[b"Client Key"]);
        let cred = Credential {
            salt,
            iterations: 4096,
            stored_key: Hash::Sha256.h(&client_key),
            server_key: Hash::Sha256.hmac(&salted, &[b"Server Key"]),
        };
        let first = ClientFirst::parse(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        let mut server = Server::start(Hash::Sha256, first, cred).0;
        // The RFC's server nonce, to reproduce its messages exactly.
        server.nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into();
        server.server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
                .into();
        let fin = server
            .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(fin, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn exchanges_with_both_hashes_and_refuses_a_wrong_password() {
        for hash in [Hash::Sha256, Hash::Sha512] {
            let cred = Credential::new(hash, b"s3cret", 4096);
            assert!(cred.verify_password(hash, b"s3cret"));
            assert!(!cred.verify_password(hash, b"s3cret!"));
            for (password, ok) in [("s3cret", true), ("wrong", false)] {
                let bare = "n=alice,r=abcdef";
                let first = ClientFirst::parse(format!("n,,{bare}").as_bytes()).unwrap();
                assert_eq!(first.user, "alice");
                let (server, sf) = Server::start(hash, first, cred.clone());
                let sf = String::from_utf8(sf).unwrap();
                let cf = client_final(hash, password, bare, &sf);
                let out = server.finish(cf.as_bytes());
                assert_eq!(out.is_ok(), ok, "{hash:?} {password}");
                if !ok {
                    assert_eq!(out.unwrap_err(), Failure::BadCredentials);
                }
            }
        }
    }

    #[test]
    fn librdkafka_sends_its_nonce_again_in_front() {
        // librdkafka's client-final `r=` is its nonce followed by the whole
        // combined one; Kafka accepts that (the nonce must end with it).
        let cred = Credential::new(Hash::Sha256, b"pw", 4096);
        let bare = "n=u,r=cnonce";
        let first = ClientFirst::parse(format!("n,,{bare}").as_bytes()).unwrap();
        let (server, sf) = Server::start(Hash::Sha256, first, cred);
        let sf = String::from_utf8(sf).unwrap();
        // The proof covers the client's own text after the server's first
        // message as sent.
        let combined = &sf[2..sf.find(',').unwrap()];
        let without = format!("c=biws,r=cnonce{combined}");
        let salt = B64.decode(&sf.split(',').nth(1).unwrap()[2..]).unwrap();
        let salted = Hash::Sha256.salted_password(b"pw", &salt, 4096);
        let ck = Hash::Sha256.hmac(&salted, &[b"Client Key"]);
        let auth = format!("{bare},{sf},{without}");
        let sig = Hash::Sha256.hmac(&Hash::Sha256.h(&ck), &[auth.as_bytes()]);
        let proof: Vec<u8> = ck.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let msg = format!("{without},p={}", B64.encode(proof));
        assert!(server.finish(msg.as_bytes()).is_ok());
    }

    #[test]
    fn malformed_messages_are_named() {
        for (msg, words) in [
            (&b"x,,n=a,r=b"[..], "flag"),
            (b"p=tls-unique,,n=a,r=b", "channel binding"),
            (b"n,,r=b", "must start with n="),
            (b"n,,n=a", "no nonce"),
            (b"n,,n=a,r=b,ext=1", "extensions"),
            (b"n,,n=a=2Zb,r=b", "user name"),
            (b"\xff", "UTF-8"),
        ] {
            match ClientFirst::parse(msg) {
                Err(Failure::Malformed(m)) => assert!(m.contains(words), "{m} for {msg:?}"),
                other => panic!("{msg:?}: {other:?}"),
            }
        }
        let first = ClientFirst::parse(b"n,,n=a=2Cb=3Dc,r=x").unwrap();
        assert_eq!(first.user, "a,b=c");
    }
}
