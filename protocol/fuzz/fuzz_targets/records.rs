//! The record layer as a server reads it: framing (the two length bytes, bounds before any
//! allocation), opening, content types, close and key update, through both the record
//! opener and `SecureStream`, under the vectors' first session keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncReadExt;
use xlattice_fuzz::{block_on, session_keys};
use xlattice_protocol::{
    record::{RecordOpener, RECORD_HEADER_LEN},
    Role, SecureStream,
};

fuzz_target!(|data: &[u8]| {
    let keys = session_keys();
    let mut opener = RecordOpener::new(&keys.client_to_server);
    let mut wire = data.to_vec();
    let mut at = 0;
    while let Some(header) = wire.get(at..at + RECORD_HEADER_LEN) {
        let header: [u8; RECORD_HEADER_LEN] = header.try_into().expect("header");
        let Ok(len) = RecordOpener::ciphertext_len(header) else {
            break;
        };
        let start = at + RECORD_HEADER_LEN;
        let Some(body) = wire.get_mut(start..start + len) else {
            break;
        };
        if opener.open(header, body).is_err() {
            break;
        }
        at = start + len;
    }
    let mut stream = SecureStream::new(data, &keys, Role::Server, None);
    let mut out = Vec::new();
    if block_on(stream.read_to_end(&mut out)).is_ok() {
        assert!(out.len() <= data.len());
    }
});
