//! RSA keys. Every private-key operation goes through aws-lc-rs (constant time);
//! the `rsa` crate is not used (RUSTSEC-2023-0071).

use std::{fmt, sync::Arc};

use aws_lc_rs::{
    encoding::{AsDer, Pkcs8V1Der},
    rsa::{
        KeySize, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey,
        OAEP_SHA256_MGF1SHA256,
    },
    signature::{self, KeyPair, ParsedPublicKey, RsaKeyPair, UnparsedPublicKey},
};
use zeroize::Zeroizing;

const PRIVATE_PEM_TAG: &str = "PRIVATE KEY";
const PUBLIC_PEM_TAG: &str = "PUBLIC KEY";

/// RSA modulus sizes a member key may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RsaBits {
    B2048,
    B3072,
    B4096,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0} is not an allowed RSA key size: use 2048, 3072 or 4096")]
    UnsupportedBits(usize),
    #[error("not PEM: {0}")]
    Pem(#[from] pem::PemError),
    #[error("PEM block is {found:?}, expected {expected:?}")]
    PemTag { found: String, expected: &'static str },
    #[error("not an RSA key of 2048, 3072 or 4096 bits: {0}")]
    Rejected(String),
    #[error("RSA key generation failed")]
    Generate,
}

// === impl RsaBits ===

impl RsaBits {
    pub const fn bits(self) -> usize {
        match self {
            Self::B2048 => 2048,
            Self::B3072 => 3072,
            Self::B4096 => 4096,
        }
    }

    pub const fn bytes(self) -> usize {
        self.bits() / 8
    }

    fn key_size(self) -> KeySize {
        match self {
            Self::B2048 => KeySize::Rsa2048,
            Self::B3072 => KeySize::Rsa3072,
            Self::B4096 => KeySize::Rsa4096,
        }
    }
}

impl TryFrom<usize> for RsaBits {
    type Error = KeyError;

    fn try_from(bits: usize) -> Result<Self, KeyError> {
        match bits {
            2048 => Ok(Self::B2048),
            3072 => Ok(Self::B3072),
            4096 => Ok(Self::B4096),
            other => Err(KeyError::UnsupportedBits(other)),
        }
    }
}

fn decode_pem(text: &[u8], expected: &'static str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let block = pem::parse(text)?;
    if block.tag() != expected {
        return Err(KeyError::PemTag {
            found: block.tag().to_string(),
            expected,
        });
    }
    Ok(Zeroizing::new(block.into_contents()))
}

fn encode_pem(tag: &str, der: &[u8]) -> Zeroizing<String> {
    Zeroizing::new(pem::encode(&pem::Pem::new(tag, der.to_vec())))
}

// === SigningKey ===

/// skPriv: the member's RSA signing key (RSA-PSS-SHA256).
pub struct SigningKey {
    pair: RsaKeyPair,
    public: PublicKey,
}

impl SigningKey {
    pub fn generate(bits: RsaBits) -> Result<Self, KeyError> {
        let pair = RsaKeyPair::generate(bits.key_size()).map_err(|_| KeyError::Generate)?;
        Self::from_pair(pair)
    }

    pub fn from_pkcs8_pem(pem_text: &[u8]) -> Result<Self, KeyError> {
        let der = decode_pem(pem_text, PRIVATE_PEM_TAG)?;
        let pair = RsaKeyPair::from_pkcs8(&der).map_err(|e| KeyError::Rejected(e.to_string()))?;
        Self::from_pair(pair)
    }

    fn from_pair(pair: RsaKeyPair) -> Result<Self, KeyError> {
        let spki = pair
            .public_key()
            .as_der()
            .map_err(|_| KeyError::Rejected("cannot encode public key".into()))?;
        let public = PublicKey::from_spki_der(spki.as_ref())?;
        Ok(Self { pair, public })
    }

    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let der: Pkcs8V1Der<'_> = self.pair.as_der().expect("an RSA key encodes as PKCS#8");
        encode_pem(PRIVATE_PEM_TAG, der.as_ref())
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// RSA-PSS with SHA-256 and MGF1-SHA-256, salt as long as the digest.
    pub fn sign_pss(&self, message: &[u8]) -> Vec<u8> {
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PSS_SHA256,
                &aws_lc_rs::rand::SystemRandom::new(),
                message,
                &mut sig,
            )
            .expect("RSA-PSS signing with a valid key");
        sig
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

// === DecryptionKey ===

/// ckPriv: the member's RSA encryption key (RSA-OAEP-SHA256).
pub struct DecryptionKey {
    oaep: OaepPrivateDecryptingKey,
    pkcs8: Zeroizing<Vec<u8>>,
    public: PublicKey,
}

impl DecryptionKey {
    pub fn generate(bits: RsaBits) -> Result<Self, KeyError> {
        let key = PrivateDecryptingKey::generate(bits.key_size()).map_err(|_| KeyError::Generate)?;
        let der: Pkcs8V1Der<'_> = key.as_der().map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8_der(Zeroizing::new(der.as_ref().to_vec()))
    }

    pub fn from_pkcs8_pem(pem_text: &[u8]) -> Result<Self, KeyError> {
        Self::from_pkcs8_der(decode_pem(pem_text, PRIVATE_PEM_TAG)?)
    }

    fn from_pkcs8_der(pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, KeyError> {
        let key = PrivateDecryptingKey::from_pkcs8(&pkcs8).map_err(|e| KeyError::Rejected(e.to_string()))?;
        RsaBits::try_from(key.key_size_bits())?;
        let spki = key
            .public_key()
            .as_der()
            .map_err(|_| KeyError::Rejected("cannot encode public key".into()))?;
        let public = PublicKey::from_spki_der(spki.as_ref())?;
        let oaep = OaepPrivateDecryptingKey::new(key).map_err(|e| KeyError::Rejected(e.to_string()))?;
        Ok(Self { oaep, pkcs8, public })
    }

    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        encode_pem(PRIVATE_PEM_TAG, &self.pkcs8)
    }

    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// Ciphertext size for this key: the modulus length in bytes.
    pub fn size_bytes(&self) -> usize {
        self.oaep.key_size_bytes()
    }

    /// RSA-OAEP-SHA256 decryption (constant time in aws-lc). `None` for any failure:
    /// the caller must not be able to tell padding errors from others.
    pub fn decrypt_oaep(&self, ciphertext: &[u8], label: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let mut out = Zeroizing::new(vec![0u8; self.oaep.min_output_size()]);
        let len = self
            .oaep
            .decrypt(&OAEP_SHA256_MGF1SHA256, ciphertext, &mut out, Some(label))
            .ok()?
            .len();
        out.truncate(len);
        Some(out)
    }
}

impl fmt::Debug for DecryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecryptionKey")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

// === PublicKey ===

/// An RSA public key (sk or ck), kept as SubjectPublicKeyInfo DER.
#[derive(Clone)]
pub struct PublicKey {
    spki: Arc<[u8]>,
    bits: RsaBits,
    verifier: ParsedPublicKey,
    encryptor: Arc<OaepPublicEncryptingKey>,
}

impl PublicKey {
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        let encrypting = PublicEncryptingKey::from_der(der).map_err(|e| KeyError::Rejected(e.to_string()))?;
        let bits = RsaBits::try_from(encrypting.key_size_bits())?;
        let encryptor = OaepPublicEncryptingKey::new(encrypting).map_err(|e| KeyError::Rejected(e.to_string()))?;
        let verifier = UnparsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA256, der)
            .parse()
            .map_err(|e| KeyError::Rejected(e.to_string()))?;
        Ok(Self {
            spki: der.into(),
            bits,
            verifier,
            encryptor: Arc::new(encryptor),
        })
    }

    pub fn from_pem(pem_text: &str) -> Result<Self, KeyError> {
        Self::from_spki_der(&decode_pem(pem_text.as_bytes(), PUBLIC_PEM_TAG)?)
    }

    pub fn to_pem(&self) -> String {
        pem::encode(&pem::Pem::new(PUBLIC_PEM_TAG, self.spki.to_vec()))
    }

    /// Names this key in a routing preamble: the first 8 bytes of SHA-256 over its SPKI.
    pub fn hint(&self) -> [u8; 8] {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.spki_der());
        digest.as_ref()[..8].try_into().expect("8 of 32 bytes")
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    pub fn bits(&self) -> RsaBits {
        self.bits
    }

    pub fn verify_pss(&self, message: &[u8], signature: &[u8]) -> bool {
        self.verifier.verify_sig(message, signature).is_ok()
    }

    /// RSA-OAEP-SHA256 encryption to this key.
    pub fn encrypt_oaep(&self, plaintext: &[u8], label: &[u8]) -> Vec<u8> {
        let key = &self.encryptor;
        let mut out = vec![0u8; key.ciphertext_size()];
        let len = key
            .encrypt(&OAEP_SHA256_MGF1SHA256, plaintext, &mut out, Some(label))
            .expect("plaintext fits the key")
            .len();
        out.truncate(len);
        out
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.spki == other.spki
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.spki);
        write!(
            f,
            "PublicKey(rsa{}, sha256:{})",
            self.bits.bits(),
            hex::encode(&digest.as_ref()[..8])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_operations() {
        let sk = SigningKey::generate(RsaBits::B2048).unwrap();
        let again = SigningKey::from_pkcs8_pem(sk.to_pkcs8_pem().as_bytes()).unwrap();
        assert_eq!(sk.public_key(), again.public_key());
        let sig = again.sign_pss(b"message");
        assert!(sk.public_key().verify_pss(b"message", &sig));
        assert!(!sk.public_key().verify_pss(b"messagf", &sig));

        let ck = DecryptionKey::generate(RsaBits::B2048).unwrap();
        let public = PublicKey::from_pem(&ck.public_key().to_pem()).unwrap();
        let ct = public.encrypt_oaep(b"secret", b"label");
        assert_eq!(ct.len(), 256);
        assert_eq!(ck.decrypt_oaep(&ct, b"label").unwrap().as_slice(), b"secret");
        assert!(ck.decrypt_oaep(&ct, b"other label").is_none());
    }

    #[test]
    fn wrong_pem_block_is_named() {
        let ck = DecryptionKey::generate(RsaBits::B2048).unwrap();
        let err = PublicKey::from_pem(&ck.to_pkcs8_pem()).unwrap_err();
        assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
        assert!(matches!(RsaBits::try_from(1024), Err(KeyError::UnsupportedBits(1024))));
    }
}
