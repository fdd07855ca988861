//! An identity's three files (node-id, sk.pem, ck.pem) as a sidecar loads them from its
//! Secret, split from the input at its first two NUL bytes; and a public key in PEM.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlattice_protocol::{
    identity::{CK_FILE, NODE_ID_FILE, SK_FILE},
    Identity, NodeId, PublicKey,
};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == 0);
    let (node_id, sk, ck) = (parts.next(), parts.next(), parts.next());
    let _ = Identity::from_files(|file| match file {
        NODE_ID_FILE => node_id,
        SK_FILE => sk,
        CK_FILE => ck,
        _ => None,
    });
    let text = String::from_utf8_lossy(data);
    let _ = PublicKey::from_pem(&text);
    let _ = text.trim().parse::<NodeId>();
});
