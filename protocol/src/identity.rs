//! A member's cryptographic identity and its on-disk (and in-Secret) layout.
//!
//! Layout: three files, the same names as the keys of the Kubernetes Secret the
//! operator writes, so a mounted Secret directory loads as is.
//!   node-id  lowercase hex NodeID
//!   sk.pem   skPriv, PKCS#8 PEM
//!   ck.pem   ckPriv, PKCS#8 PEM

use std::{fs, io, path::Path};

use zeroize::Zeroizing;

use crate::{
    keys::{DecryptionKey, KeyError, RsaBits, SigningKey},
    node_id::{NodeId, NodeIdBits, NodeIdError},
    PublicKey,
};

pub const NODE_ID_FILE: &str = "node-id";
pub const SK_FILE: &str = "sk.pem";
pub const CK_FILE: &str = "ck.pem";
pub const IDENTITY_FILES: [&str; 3] = [NODE_ID_FILE, SK_FILE, CK_FILE];

/// NodeID, skPriv and ckPriv of one member.
#[derive(Debug)]
pub struct Identity {
    pub node_id: NodeId,
    pub sk: SigningKey,
    pub ck: DecryptionKey,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{file}: missing")]
    Missing { file: &'static str },
    #[error("{file}: {source}")]
    NodeId { file: &'static str, source: NodeIdError },
    #[error("{file}: {source}")]
    Key { file: &'static str, source: KeyError },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
}

impl Identity {
    /// Mints a fresh identity. CPU-heavy (two RSA key generations): keep it off async runtimes.
    pub fn generate(node_id_bits: NodeIdBits, rsa_bits: RsaBits) -> Result<Self, KeyError> {
        Ok(Self {
            node_id: NodeId::random(node_id_bits),
            sk: SigningKey::generate(rsa_bits)?,
            ck: DecryptionKey::generate(rsa_bits)?,
        })
    }

    /// Same NodeID, new keys: what a key rotation produces.
    pub fn rotated(&self, rsa_bits: RsaBits) -> Result<Self, KeyError> {
        Ok(Self {
            node_id: self.node_id,
            sk: SigningKey::generate(rsa_bits)?,
            ck: DecryptionKey::generate(rsa_bits)?,
        })
    }

    pub fn sk_public(&self) -> &PublicKey {
        self.sk.public_key()
    }

    pub fn ck_public(&self) -> &PublicKey {
        self.ck.public_key()
    }

    /// The files of the layout, private keys in zeroize-on-drop buffers.
    pub fn to_files(&self) -> [(&'static str, Zeroizing<Vec<u8>>); 3] {
        let pem = |s: Zeroizing<String>| Zeroizing::new(s.as_bytes().to_vec());
        [
            (NODE_ID_FILE, Zeroizing::new(self.node_id.to_string().into_bytes())),
            (SK_FILE, pem(self.sk.to_pkcs8_pem())),
            (CK_FILE, pem(self.ck.to_pkcs8_pem())),
        ]
    }

    /// Reads the layout through `get`, which returns a file's bytes by name.
    pub fn from_files<'a>(get: impl Fn(&str) -> Option<&'a [u8]>) -> Result<Self, IdentityError> {
        let read = |file: &'static str| get(file).ok_or(IdentityError::Missing { file });
        let node_id_text = String::from_utf8_lossy(read(NODE_ID_FILE)?);
        let node_id = node_id_text.trim().parse().map_err(|source| IdentityError::NodeId {
            file: NODE_ID_FILE,
            source,
        })?;
        let sk = SigningKey::from_pkcs8_pem(read(SK_FILE)?)
            .map_err(|source| IdentityError::Key { file: SK_FILE, source })?;
        let ck = DecryptionKey::from_pkcs8_pem(read(CK_FILE)?)
            .map_err(|source| IdentityError::Key { file: CK_FILE, source })?;
        Ok(Self { node_id, sk, ck })
    }

    pub fn load_dir(dir: &Path) -> Result<Self, IdentityError> {
        let mut files = Vec::with_capacity(3);
        for name in IDENTITY_FILES {
            let path = dir.join(name);
            match fs::read(&path) {
                Ok(bytes) => files.push((name, Zeroizing::new(bytes))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(IdentityError::Io {
                        path: path.display().to_string(),
                        source,
                    })
                }
            }
        }
        Self::from_files(|name| files.iter().find(|(n, _)| *n == name).map(|(_, b)| b.as_slice()))
    }

    /// Writes the layout with owner-only permissions, each file replaced atomically.
    pub fn save_dir(&self, dir: &Path) -> Result<(), IdentityError> {
        let io_err = |path: &Path| {
            let path = path.display().to_string();
            move |source| IdentityError::Io { path, source }
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        for (name, bytes) in self.to_files() {
            let path = dir.join(name);
            let tmp = dir.join(format!(".{name}.tmp"));
            write_private(&tmp, &bytes).map_err(io_err(&tmp))?;
            fs::rename(&tmp, &path).map_err(io_err(&path))?;
        }
        Ok(())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_round_trip_keeps_everything() {
        let dir = std::env::temp_dir().join(format!("xl-identity-{}", std::process::id()));
        let id = Identity::generate(NodeIdBits::B160, RsaBits::B2048).unwrap();
        id.save_dir(&dir).unwrap();
        let back = Identity::load_dir(&dir).unwrap();
        assert_eq!(back.node_id, id.node_id);
        assert_eq!(back.sk_public(), id.sk_public());
        assert_eq!(back.ck_public(), id.ck_public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(SK_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "private key readable by others: {mode:o}");
        }
        fs::remove_file(dir.join(CK_FILE)).unwrap();
        let err = Identity::load_dir(&dir).unwrap_err();
        assert_eq!(err.to_string(), "ck.pem: missing");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_files_are_named() {
        let id = Identity::generate(NodeIdBits::B256, RsaBits::B2048).unwrap();
        let files = id.to_files();
        let err = Identity::from_files(|name| match name {
            NODE_ID_FILE => Some(b"xyz".as_slice()),
            _ => files.iter().find(|(n, _)| *n == name).map(|(_, b)| b.as_slice()),
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("node-id: "), "{err}");
        let err = Identity::from_files(|name| match name {
            SK_FILE => Some(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".as_slice()),
            _ => files.iter().find(|(n, _)| *n == name).map(|(_, b)| b.as_slice()),
        })
        .unwrap_err();
        assert!(err.to_string().starts_with("sk.pem: "), "{err}");
    }
}
