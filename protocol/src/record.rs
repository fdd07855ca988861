//! The record layer: length-prefixed AES-256-GCM records, one key and one sequence
//! number per direction, the sequence number as the nonce.
//!
//! Wire: `len: u16 BE | ciphertext[len]`, where ciphertext = AES-256-GCM(payload || type)
//! with nonce = 0x00000000 || seq (u64 BE) and AAD = the two length bytes.
//!
//! A key update record moves its direction to the next key (HKDF-Expand of the current
//! one) with the sequence number back at 0, so that no key seals more records than
//! AES-GCM's safety margin allows however long a session lives.

use aws_lc_rs::{
    aead::{Aad, LessSafeKey, Nonce, TlsProtocolId, TlsRecordSealingKey, UnboundKey, AES_256_GCM},
    hkdf::{Prk, HKDF_SHA256},
};
use zeroize::Zeroizing;

pub const RECORD_HEADER_LEN: usize = 2;
pub const TAG_LEN: usize = 16;
/// Largest payload one record carries.
pub const MAX_PAYLOAD: usize = 16 * 1024;
pub const MAX_CIPHERTEXT: usize = MAX_PAYLOAD + 1 + TAG_LEN;
pub const MIN_CIPHERTEXT: usize = 1 + TAG_LEN;
/// Largest record on the wire, header included.
pub const MAX_RECORD: usize = RECORD_HEADER_LEN + MAX_CIPHERTEXT;

/// What a record carries; the byte after the payload, inside the encryption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ContentType {
    Data = 0,
    /// Orderly end of this direction; anything after it is an error. A TCP close
    /// without it is a truncation.
    Close = 1,
    /// The records after it are sealed under the next key; carries no payload.
    KeyUpdate = 2,
}

/// Records a sender seals under one key before it updates the key: TLS 1.3's limit for
/// AES-GCM is 2^24.5 full-size records (RFC 8446, section 5.5).
pub const KEY_UPDATE_INTERVAL: u64 = 1 << 24;
const KEY_UPDATE_INFO: &[u8] = b"xlattice/1 key update";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record of {0} bytes exceeds the maximum of {MAX_CIPHERTEXT}")]
    TooLarge(usize),
    #[error("record of {0} bytes is shorter than the minimum of {MIN_CIPHERTEXT}")]
    TooShort(usize),
    #[error("record failed authentication (tampered, replayed, reordered or wrong key)")]
    Forged,
    #[error("record has unknown content type {0}")]
    UnknownType(u8),
    #[error("a {0} record carries a payload")]
    ControlWithPayload(&'static str),
    #[error("peer closed the connection without a close record (truncated session)")]
    Truncated,
    #[error("sequence numbers exhausted")]
    SequenceExhausted,
    #[error("payload of {0} bytes exceeds the maximum of {MAX_PAYLOAD}")]
    PayloadTooLarge(usize),
}

// === impl RecordError ===

impl RecordError {
    /// A short, stable label for metrics: how a session failed after its handshake.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge(_) | Self::TooShort(_) | Self::PayloadTooLarge(_) => "bad_length",
            Self::Forged => "forged",
            Self::UnknownType(_) | Self::ControlWithPayload(_) => "bad_content_type",
            Self::SequenceExhausted => "sequence_exhausted",
            Self::Truncated => "truncated",
        }
    }

    /// The record-layer failure behind an error a `SecureStream` returned, if it was one
    /// (the rest are the transport's own errors).
    pub fn of(error: &std::io::Error) -> Option<&RecordError> {
        error.get_ref()?.downcast_ref::<RecordError>()
    }
}

fn nonce(seq: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte AES-256 key"))
}

/// Sealing goes through AWS-LC's TLS 1.3 AES-GCM, which checks that the nonces of a key
/// only grow (ours: 0 || seq from 0): the FIPS module counts it as an approved service,
/// where sealing with a nonce from outside (LessSafeKey) is not. Same ciphertexts.
fn sealing_key(bytes: &[u8; 32]) -> TlsRecordSealingKey {
    TlsRecordSealingKey::new(&AES_256_GCM, TlsProtocolId::TLS13, bytes).expect("32-byte AES-256 key")
}

trait DirectionKey {
    fn from_secret(bytes: &[u8; 32]) -> Self;
}

impl DirectionKey for LessSafeKey {
    fn from_secret(bytes: &[u8; 32]) -> Self {
        key(bytes)
    }
}

impl DirectionKey for TlsRecordSealingKey {
    fn from_secret(bytes: &[u8; 32]) -> Self {
        sealing_key(bytes)
    }
}

/// One direction's current key and sequence number.
struct Direction<K> {
    secret: Zeroizing<[u8; 32]>,
    key: K,
    seq: u64,
}

impl<K: DirectionKey> Direction<K> {
    fn new(secret: &[u8; 32]) -> Self {
        Self {
            secret: Zeroizing::new(*secret),
            key: K::from_secret(secret),
            seq: 0,
        }
    }

    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        let current = self.seq;
        self.seq = self.seq.checked_add(1).ok_or(RecordError::SequenceExhausted)?;
        Ok(nonce(current))
    }

    /// next = HKDF-Expand-SHA256(PRK = current, info = "xlattice/1 key update", L = 32).
    fn update(&mut self) {
        let mut next = Zeroizing::new([0u8; 32]);
        Prk::new_less_safe(HKDF_SHA256, &self.secret[..])
            .expand(&[KEY_UPDATE_INFO], HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut next[..]))
            .expect("HKDF-Expand of 32 bytes");
        *self = Self::new(&next);
    }
}

/// Seals outgoing records for one direction.
pub struct RecordSealer {
    direction: Direction<TlsRecordSealingKey>,
    update_every: u64,
}

impl RecordSealer {
    pub fn new(key_bytes: &[u8; 32]) -> Self {
        Self::with_key_update_interval(key_bytes, KEY_UPDATE_INTERVAL)
    }

    /// A sealer that asks for a key update every `records` records (tests use a few).
    pub fn with_key_update_interval(key_bytes: &[u8; 32], records: u64) -> Self {
        Self {
            direction: Direction::new(key_bytes),
            update_every: records.max(1),
        }
    }

    /// Whether the next record should be a key update: the caller seals one, then goes on.
    pub fn key_update_due(&self) -> bool {
        self.direction.seq >= self.update_every
    }

    /// Bytes a record carrying `payload_len` bytes takes on the wire.
    pub const fn record_len(payload_len: usize) -> usize {
        RECORD_HEADER_LEN + payload_len + 1 + TAG_LEN
    }

    /// Appends one record carrying `payload` to `out`.
    pub fn seal(&mut self, kind: ContentType, payload: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(RecordError::PayloadTooLarge(payload.len()));
        }
        let start = out.len();
        out.resize(start + Self::record_len(payload.len()), 0);
        self.seal_into(kind, payload, &mut out[start..])
            .map(drop)
            .inspect_err(|_| out.truncate(start))
    }

    /// Writes one record carrying `payload` at the start of `out`, which must hold
    /// `record_len(payload.len())` bytes; returns that length. Encrypts straight from
    /// the caller's bytes: one pass, no copy first.
    pub fn seal_into(&mut self, kind: ContentType, payload: &[u8], out: &mut [u8]) -> Result<usize, RecordError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(RecordError::PayloadTooLarge(payload.len()));
        }
        let len = Self::record_len(payload.len());
        let nonce = self.direction.next_nonce()?;
        let header = ((len - RECORD_HEADER_LEN) as u16).to_be_bytes();
        out[..RECORD_HEADER_LEN].copy_from_slice(&header);
        let (ciphertext, type_and_tag) = out[RECORD_HEADER_LEN..len].split_at_mut(payload.len());
        self.direction
            .key
            .seal_out_of_place_scatter(
                nonce,
                Aad::from(header),
                payload,
                ciphertext,
                &[kind as u8],
                type_and_tag,
            )
            .expect("AES-GCM sealing of a bounded record");
        if kind == ContentType::KeyUpdate {
            self.direction.update();
        }
        Ok(len)
    }
}

/// Opens incoming records for one direction, in order.
pub struct RecordOpener {
    direction: Direction<LessSafeKey>,
}

impl RecordOpener {
    pub fn new(key_bytes: &[u8; 32]) -> Self {
        Self {
            direction: Direction::new(key_bytes),
        }
    }

    /// The ciphertext length a record header announces, checked against the bounds
    /// before anything is read or allocated for it.
    pub fn ciphertext_len(header: [u8; RECORD_HEADER_LEN]) -> Result<usize, RecordError> {
        let len = u16::from_be_bytes(header) as usize;
        if len > MAX_CIPHERTEXT {
            Err(RecordError::TooLarge(len))
        } else if len < MIN_CIPHERTEXT {
            Err(RecordError::TooShort(len))
        } else {
            Ok(len)
        }
    }

    /// Checked here too, not only by callers: a body shorter than the announced length,
    /// or an authentic record of a bare tag, must be an error, never a panic.
    fn check_len(header: [u8; RECORD_HEADER_LEN], ciphertext: &[u8]) -> Result<usize, RecordError> {
        let len = Self::ciphertext_len(header)?;
        match ciphertext.len() {
            n if n < len => Err(RecordError::TooShort(n)),
            n if n > len => Err(RecordError::TooLarge(n)),
            _ => Ok(len),
        }
    }

    /// Decrypts `ciphertext` (exactly the announced length) in place.
    pub fn open<'a>(
        &mut self,
        header: [u8; RECORD_HEADER_LEN],
        ciphertext: &'a mut [u8],
    ) -> Result<(ContentType, &'a [u8]), RecordError> {
        Self::check_len(header, ciphertext)?;
        let nonce = self.direction.next_nonce()?;
        let plain = self
            .direction
            .key
            .open_in_place(nonce, Aad::from(header), ciphertext)
            .map_err(|_| RecordError::Forged)?;
        let (kind, payload) = split_content(plain)?;
        self.after(kind);
        Ok((kind, payload))
    }

    /// Decrypts `ciphertext` (exactly the announced length) into `out`, which must hold
    /// `ciphertext.len() - TAG_LEN` bytes: the payload lands at its start, and its length
    /// is returned. Saves a copy when the caller's buffer has room. On an error, `out`
    /// holds garbage that must not be used.
    pub fn open_into(
        &mut self,
        header: [u8; RECORD_HEADER_LEN],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<(ContentType, usize), RecordError> {
        let len = Self::check_len(header, ciphertext)?;
        let nonce = self.direction.next_nonce()?;
        let (body, tag) = ciphertext.split_at(len - TAG_LEN);
        let plain = &mut out[..len - TAG_LEN];
        self.direction
            .key
            .open_separate_gather(nonce, Aad::from(header), body, tag, plain)
            .map_err(|_| RecordError::Forged)?;
        let (kind, payload) = split_content(plain)?;
        self.after(kind);
        Ok((kind, payload.len()))
    }

    fn after(&mut self, kind: ContentType) {
        if kind == ContentType::KeyUpdate {
            self.direction.update();
        }
    }
}

/// The payload and the type byte after it.
fn split_content(plain: &[u8]) -> Result<(ContentType, &[u8]), RecordError> {
    let (kind, payload) = plain.split_last().expect("MIN_CIPHERTEXT leaves a type byte");
    match *kind {
        0 => Ok((ContentType::Data, payload)),
        1 if payload.is_empty() => Ok((ContentType::Close, payload)),
        2 if payload.is_empty() => Ok((ContentType::KeyUpdate, payload)),
        1 => Err(RecordError::ControlWithPayload("close")),
        2 => Err(RecordError::ControlWithPayload("key update")),
        other => Err(RecordError::UnknownType(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_all(opener: &mut RecordOpener, wire: &mut [u8]) -> Result<Vec<(ContentType, Vec<u8>)>, RecordError> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let header = [wire[at], wire[at + 1]];
            let len = RecordOpener::ciphertext_len(header)?;
            let (kind, payload) = opener.open(header, &mut wire[at + 2..at + 2 + len])?;
            out.push((kind, payload.to_vec()));
            at += 2 + len;
        }
        Ok(out)
    }

    #[test]
    fn records_round_trip_in_order() {
        let key = [7u8; 32];
        let mut sealer = RecordSealer::new(&key);
        let mut wire = Vec::new();
        sealer.seal(ContentType::Data, b"one", &mut wire).unwrap();
        sealer.seal(ContentType::Data, &[0xaa; MAX_PAYLOAD], &mut wire).unwrap();
        sealer.seal(ContentType::Close, b"", &mut wire).unwrap();
        let got = open_all(&mut RecordOpener::new(&key), &mut wire).unwrap();
        assert_eq!(got[0], (ContentType::Data, b"one".to_vec()));
        assert_eq!(got[1].1.len(), MAX_PAYLOAD);
        assert_eq!(got[2], (ContentType::Close, vec![]));
    }

    #[test]
    fn tampering_replay_and_reordering_fail() {
        let key = [1u8; 32];
        let mut sealer = RecordSealer::new(&key);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        sealer.seal(ContentType::Data, b"first", &mut a).unwrap();
        sealer.seal(ContentType::Data, b"second", &mut b).unwrap();

        let mut flipped = a.clone();
        flipped[4] ^= 1;
        assert_eq!(
            open_all(&mut RecordOpener::new(&key), &mut flipped),
            Err(RecordError::Forged)
        );

        let mut reordered = [b.clone(), a.clone()].concat();
        assert_eq!(
            open_all(&mut RecordOpener::new(&key), &mut reordered),
            Err(RecordError::Forged)
        );

        let mut replayed = [a.clone(), a.clone()].concat();
        assert_eq!(
            open_all(&mut RecordOpener::new(&key), &mut replayed),
            Err(RecordError::Forged)
        );

        let mut wrong_key = a.clone();
        assert_eq!(
            open_all(&mut RecordOpener::new(&[2u8; 32]), &mut wrong_key),
            Err(RecordError::Forged)
        );
    }

    #[test]
    fn open_refuses_bodies_that_do_not_match_the_header() {
        // An authentic AES-GCM sealing of nothing at all: a bare 16-byte tag.
        let k = [3u8; 32];
        let mut tag_only = Vec::new();
        key(&k)
            .seal_in_place_append_tag(nonce(0), Aad::from([0u8, 16]), &mut tag_only)
            .unwrap();
        assert_eq!(tag_only.len(), TAG_LEN);
        let mut opener = RecordOpener::new(&k);
        assert_eq!(
            opener.open([0, 16], &mut tag_only).unwrap_err(),
            RecordError::TooShort(16)
        );

        let mut wire = Vec::new();
        RecordSealer::new(&k)
            .seal(ContentType::Data, b"abc", &mut wire)
            .unwrap();
        let header = [wire[0], wire[1]];
        let mut short = wire[2..wire.len() - 1].to_vec();
        assert_eq!(
            RecordOpener::new(&k).open(header, &mut short),
            Err(RecordError::TooShort(19))
        );
        let mut long = [&wire[2..], &[0][..]].concat();
        assert_eq!(
            RecordOpener::new(&k).open(header, &mut long),
            Err(RecordError::TooLarge(21))
        );
        let mut exact = wire[2..].to_vec();
        assert_eq!(
            RecordOpener::new(&k).open(header, &mut exact).unwrap(),
            (ContentType::Data, &b"abc"[..])
        );
    }

    #[test]
    fn lengths_are_bounded_before_reading() {
        assert_eq!(
            RecordOpener::ciphertext_len([0xff, 0xff]),
            Err(RecordError::TooLarge(65535))
        );
        assert_eq!(RecordOpener::ciphertext_len([0, 3]), Err(RecordError::TooShort(3)));
        let mut sealer = RecordSealer::new(&[0; 32]);
        assert_eq!(
            sealer.seal(ContentType::Data, &vec![0; MAX_PAYLOAD + 1], &mut Vec::new()),
            Err(RecordError::PayloadTooLarge(MAX_PAYLOAD + 1))
        );
    }

    #[test]
    fn opening_into_a_separate_buffer_matches_opening_in_place() {
        let key = [7u8; 32];
        let mut sealer = RecordSealer::new(&key);
        let (mut in_place, mut separate) = (RecordOpener::new(&key), RecordOpener::new(&key));
        let mut wire = Vec::new();
        sealer.seal(ContentType::Data, b"payload", &mut wire).unwrap();
        sealer.seal(ContentType::Close, b"", &mut wire).unwrap();
        let mut copy = wire.clone();
        let expected = open_all(&mut in_place, &mut copy).unwrap();

        let mut got = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let header = [wire[at], wire[at + 1]];
            let len = RecordOpener::ciphertext_len(header).unwrap();
            let mut out = vec![0u8; len - TAG_LEN];
            let (kind, n) = separate
                .open_into(header, &wire[at + 2..at + 2 + len], &mut out)
                .unwrap();
            got.push((kind, out[..n].to_vec()));
            at += 2 + len;
        }
        assert_eq!(got, expected);

        // Tampered: refused, whichever way it is opened.
        let mut opener = RecordOpener::new(&key);
        let mut wire = Vec::new();
        RecordSealer::new(&key)
            .seal(ContentType::Data, b"x", &mut wire)
            .unwrap();
        wire[3] ^= 1;
        let mut out = [0u8; 2];
        let header = [wire[0], wire[1]];
        assert_eq!(opener.open_into(header, &wire[2..], &mut out), Err(RecordError::Forged));
        assert_eq!(
            opener.open_into(header, &wire[3..], &mut out),
            Err(RecordError::TooShort(wire.len() - 3))
        );
    }

    #[test]
    fn a_key_update_moves_both_ends_to_the_next_key() {
        let key = [9u8; 32];
        let mut sealer = RecordSealer::with_key_update_interval(&key, 1);
        let mut wire = Vec::new();
        sealer.seal(ContentType::Data, b"one", &mut wire).unwrap();
        assert!(sealer.key_update_due());
        let update_at = wire.len();
        sealer.seal(ContentType::KeyUpdate, b"", &mut wire).unwrap();
        let next_at = wire.len();
        sealer.seal(ContentType::Data, b"two", &mut wire).unwrap();

        let mut copy = wire.clone();
        let opened = open_all(&mut RecordOpener::new(&key), &mut copy).unwrap();
        let kinds: Vec<_> = opened.iter().map(|(k, p)| (*k, p.as_slice())).collect();
        assert_eq!(
            kinds,
            [
                (ContentType::Data, &b"one"[..]),
                (ContentType::KeyUpdate, &b""[..]),
                (ContentType::Data, &b"two"[..])
            ]
        );

        // Without the update the old key cannot open what follows, at either sequence number.
        let mut skipped = [&wire[..update_at], &wire[next_at..]].concat();
        let err = open_all(&mut RecordOpener::new(&key), &mut skipped).unwrap_err();
        assert_eq!(err, RecordError::Forged);
        let mut alone = wire[next_at..].to_vec();
        assert_eq!(
            open_all(&mut RecordOpener::new(&key), &mut alone).unwrap_err(),
            RecordError::Forged
        );
    }
}
