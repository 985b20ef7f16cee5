//! The node's QUIC connection ids: the number of the lane that made it (`lanes`, whose
//! steering reads it), 8 random bytes and a 4-byte signature keyed by the data dir's secret,
//! so that a restarted node still recognises its previous run's ids (and tells their clients
//! at once, by a stateless reset, that those connections are gone).
//!
//! quinn's `HashedConnectionIdGenerator` does the same with 3 random bytes, which is too few:
//! quinn routes a client's Initial by its destination id among established connections'
//! ids first, and the id a Retry gives the client is drawn without a check against them. With
//! 16 million possible ids and a few per connection, about one Retry in a few thousand drew
//! the id of an established connection, which then dropped that client's Initials as
//! unexpected, and the client timed out (benches/RESULTS.md, "Address validation"). With 8
//! random bytes that is about once in 2^64 / (ids in use) draws.

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use ring::rand::SecureRandom;

/// The lane's number and the random bytes, which the signature covers.
const NONCE_LEN: usize = 1 + 8;
const SIGNATURE_LEN: usize = 4;

pub(crate) struct SignedConnectionIds {
    key: ring::hmac::Key,
    random: ring::rand::SystemRandom,
    lane: u8,
}

impl SignedConnectionIds {
    pub(crate) fn new(secret: &[u8], lane: u8) -> Self {
        // Its own key, derived from the secret, apart from the stateless reset key.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let derived = ring::hmac::sign(&key, b"chat-node connection ids");
        Self {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref()),
            random: ring::rand::SystemRandom::new(),
            lane,
        }
    }

    fn signature(&self, nonce: &[u8]) -> [u8; SIGNATURE_LEN] {
        let tag = ring::hmac::sign(&self.key, nonce);
        let mut signature = [0; SIGNATURE_LEN];
        signature.copy_from_slice(&tag.as_ref()[..SIGNATURE_LEN]);
        signature
    }
}

impl ConnectionIdGenerator for SignedConnectionIds {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0; NONCE_LEN + SIGNATURE_LEN];
        bytes[0] = self.lane;
        self.random.fill(&mut bytes[1..NONCE_LEN]).expect("the system's random source");
        let signature = self.signature(&bytes[..NONCE_LEN]);
        bytes[NONCE_LEN..].copy_from_slice(&signature);
        ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if cid.len() != NONCE_LEN + SIGNATURE_LEN {
            return Err(InvalidCid);
        }
        let (nonce, signature) = cid.split_at(NONCE_LEN);
        match self.signature(nonce) == signature {
            true => Ok(()),
            false => Err(InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        NONCE_LEN + SIGNATURE_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_recognised_across_restarts_and_only_with_the_same_secret() {
        let mut first_run = SignedConnectionIds::new(&[7; 32], 1);
        let restarted = SignedConnectionIds::new(&[7; 32], 0);
        let other_node = SignedConnectionIds::new(&[8; 32], 1);
        let cid = first_run.generate_cid();
        assert_eq!(cid[0], 1, "the lane's number comes first, for the steering");
        assert!(restarted.validate(&cid).is_ok());
        assert!(other_node.validate(&cid).is_err());
        assert!(restarted.validate(&ConnectionId::new(&[0; 13])).is_err());
        assert!(restarted.validate(&ConnectionId::new(&[0; 8])).is_err());
    }

    /// 200,000 ids, a few for each of a busy node's connections, are all different; from
    /// quinn's hashed generator (3 random bytes) as many repeat about a thousand times.
    #[test]
    fn ids_never_repeat() {
        let mut ids = SignedConnectionIds::new(&[1; 32], 0);
        let mut seen = HashSet::new();
        for _ in 0..200_000 {
            assert!(seen.insert(ids.generate_cid()), "an id was drawn twice");
        }
    }
}
