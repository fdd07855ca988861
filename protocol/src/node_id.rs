//! NodeID: the 160- or 256-bit number that names a cluster member.

use std::{fmt, str::FromStr};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Sizes a NodeID may have, in bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeIdBits {
    B160,
    B256,
}

/// A member's NodeID: 20 or 32 bytes, written as lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    len: u8,
    bytes: [u8; 32],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeIdError {
    #[error("a NodeID is 40 or 64 hex digits (160 or 256 bits), found {0} characters")]
    WrongTextLength(usize),
    #[error("a NodeID is 20 or 32 bytes, found {0} bytes")]
    WrongByteLength(usize),
    #[error("character {found:?} at position {position} is not a lowercase hex digit")]
    NotLowercaseHex { position: usize, found: char },
    #[error("{0} is not a NodeID size: use 160 or 256")]
    UnsupportedBits(u16),
}

// === impl NodeIdBits ===

impl NodeIdBits {
    pub const fn bytes(self) -> usize {
        match self {
            Self::B160 => 20,
            Self::B256 => 32,
        }
    }

    pub const fn bits(self) -> u16 {
        (self.bytes() * 8) as u16
    }
}

impl TryFrom<u16> for NodeIdBits {
    type Error = NodeIdError;

    fn try_from(bits: u16) -> Result<Self, Self::Error> {
        match bits {
            160 => Ok(Self::B160),
            256 => Ok(Self::B256),
            other => Err(NodeIdError::UnsupportedBits(other)),
        }
    }
}

// === impl NodeId ===

impl NodeId {
    /// Draws a NodeID from the system CSPRNG. Uniqueness within a cluster is the
    /// caller's to check (the operator does, against the identities it already holds).
    pub fn random(bits: NodeIdBits) -> Self {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes[..bits.bytes()]).expect("system RNG failed");
        Self {
            len: bits.bytes() as u8,
            bytes,
        }
    }

    pub fn from_bytes(raw: &[u8]) -> Result<Self, NodeIdError> {
        if raw.len() != 20 && raw.len() != 32 {
            return Err(NodeIdError::WrongByteLength(raw.len()));
        }
        let mut bytes = [0u8; 32];
        bytes[..raw.len()].copy_from_slice(raw);
        Ok(Self {
            len: raw.len() as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn bits(&self) -> NodeIdBits {
        if self.len == 20 {
            NodeIdBits::B160
        } else {
            NodeIdBits::B256
        }
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some((position, found)) = text.char_indices().find(|(_, c)| !matches!(c, '0'..='9' | 'a'..='f')) {
            return Err(NodeIdError::NotLowercaseHex { position, found });
        }
        if text.len() != 40 && text.len() != 64 {
            return Err(NodeIdError::WrongTextLength(text.len()));
        }
        let raw = hex::decode(text).expect("checked to be hex of even length");
        Self::from_bytes(&raw)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.as_bytes() {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_for_both_sizes() {
        for bits in [NodeIdBits::B160, NodeIdBits::B256] {
            let id = NodeId::random(bits);
            let text = id.to_string();
            assert_eq!(text.len(), bits.bytes() * 2);
            assert_eq!(text.parse::<NodeId>().unwrap(), id);
            assert_eq!(id.bits(), bits);
        }
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        assert_eq!("abc".parse::<NodeId>(), Err(NodeIdError::WrongTextLength(3)));
        let upper = "A".repeat(40);
        assert_eq!(
            upper.parse::<NodeId>(),
            Err(NodeIdError::NotLowercaseHex {
                position: 0,
                found: 'A'
            })
        );
        let msg = format!("{}", "0g".repeat(20).parse::<NodeId>().unwrap_err());
        assert!(msg.contains("position 1"), "{msg}");
        assert_eq!(NodeId::from_bytes(&[0; 21]), Err(NodeIdError::WrongByteLength(21)));
        assert_eq!(NodeIdBits::try_from(128), Err(NodeIdError::UnsupportedBits(128)));
    }

    #[test]
    fn random_ids_differ() {
        assert_ne!(NodeId::random(NodeIdBits::B256), NodeId::random(NodeIdBits::B256));
    }
}
