//! Static router keys (X25519) and the list of peers a router accepts.
//!
//! Keys are printed and parsed as standard base64 of the 32 raw bytes, the
//! same text form WireGuard uses (`wg genkey` / `wg pubkey`).

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use snow::params::DHChoice;
use snow::resolvers::{CryptoResolver, DefaultResolver};

/// Length in bytes of an X25519 key (public or private).
pub const KEY_LEN: usize = 32;

/// Errors from creating or parsing keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text was not valid base64.
    #[error("key is not valid base64")]
    Base64,
    /// The decoded key had the wrong length.
    #[error("key has {0} bytes, expected 32")]
    Length(usize),
    /// The system random generator or the crypto backend failed.
    #[error("key generation failed: {0}")]
    Crypto(String),
}

/// A router's public X25519 key: its identity on the peer protocol.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses the base64 text form (44 characters, WireGuard style).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        decode_key(text).map(Self)
    }

    /// The base64 text form.
    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| KeyError::Length(bytes.len()))?;
        Ok(Self(arr))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::from_base64(s)
    }
}

/// A router's static key pair. The private half never leaves this type
/// except through [`KeyPair::to_base64`] (for writing the config file).
#[derive(Clone)]
pub struct KeyPair {
    private: [u8; KEY_LEN],
    public: PublicKey,
}

impl KeyPair {
    /// Generates a fresh key pair from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let kp = crate::connection::noise_params()
            .and_then(|p| snow::Builder::new(p).generate_keypair())
            .map_err(|e| KeyError::Crypto(e.to_string()))?;
        let private: [u8; KEY_LEN] = kp
            .private
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::Length(kp.private.len()))?;
        Self::from_private(private)
    }

    /// Builds the pair from a raw private key (the public half is derived).
    pub fn from_private(private: [u8; KEY_LEN]) -> Result<Self, KeyError> {
        let mut dh = DefaultResolver
            .resolve_dh(&DHChoice::Curve25519)
            .ok_or_else(|| KeyError::Crypto("no X25519 implementation".into()))?;
        dh.set(&private);
        let public = PublicKey::from_slice(dh.pubkey())?;
        Ok(Self { private, public })
    }

    /// Parses a private key in base64 (the text `wg genkey` would print).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Self::from_private(decode_key(text)?)
    }

    /// The private key in base64, for writing into a config file.
    pub fn to_base64(&self) -> String {
        B64.encode(self.private)
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn private_bytes(&self) -> &[u8; KEY_LEN] {
        &self.private
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public", &self.public)
            .field("private", &"<redacted>")
            .finish()
    }
}

fn decode_key(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let bytes = B64.decode(text.trim()).map_err(|_| KeyError::Base64)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Length(bytes.len()))
}

/// The peers a router accepts connections from: public key -> a local name
/// used in logs. A responder refuses any initiator whose static key is not
/// listed here.
#[derive(Clone, Debug, Default)]
pub struct PeerSet {
    peers: HashMap<PublicKey, String>,
}

impl PeerSet {
    /// An empty set (accepts nobody).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or renames) a peer.
    pub fn insert(&mut self, key: PublicKey, name: impl Into<String>) {
        self.peers.insert(key, name.into());
    }

    /// Removes a peer; returns whether it was present.
    pub fn remove(&mut self, key: &PublicKey) -> bool {
        self.peers.remove(key).is_some()
    }

    /// Whether `key` is an accepted peer.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.peers.contains_key(key)
    }

    /// The configured name of a peer.
    pub fn name(&self, key: &PublicKey) -> Option<&str> {
        self.peers.get(key).map(String::as_str)
    }

    /// Number of configured peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer is configured.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

impl FromIterator<(PublicKey, String)> for PeerSet {
    fn from_iter<I: IntoIterator<Item = (PublicKey, String)>>(iter: I) -> Self {
        Self {
            peers: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keypair_base64_round_trip_and_public_derivation() {
        let kp = KeyPair::generate().unwrap();
        let text = kp.to_base64();
        assert_eq!(text.len(), 44);
        let back = KeyPair::from_base64(&text).unwrap();
        assert_eq!(back.public(), kp.public());
        let pk = PublicKey::from_base64(&kp.public().to_base64()).unwrap();
        assert_eq!(pk, kp.public());
    }

    #[test]
    fn public_key_matches_rfc7748_vector() {
        // RFC 7748 section 6.1, Alice's key pair.
        let private: [u8; 32] = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let public: [u8; 32] = [
            0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e,
            0xf7, 0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e,
            0xaa, 0x9b, 0x4e, 0x6a,
        ];
        let kp = KeyPair::from_private(private).unwrap();
        assert_eq!(kp.public().as_bytes(), &public);
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert!(matches!(
            PublicKey::from_base64("not base64!"),
            Err(KeyError::Base64)
        ));
        assert!(matches!(
            PublicKey::from_base64("AAAA"),
            Err(KeyError::Length(3))
        ));
    }

    #[test]
    fn debug_does_not_print_private_key() {
        let kp = KeyPair::generate().unwrap();
        let dbg = format!("{kp:?}");
        assert!(!dbg.contains(&kp.to_base64()));
    }
}
