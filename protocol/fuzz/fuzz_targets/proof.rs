//! The member proof once opened: every byte is the client's choice, since it picks key1.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlattice_protocol::handshake::parse_proof;

fuzz_target!(|data: &[u8]| {
    if let Ok((_, signature)) = parse_proof(data) {
        assert!(signature.len() < data.len());
    }
});
