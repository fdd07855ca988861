//! The server's reply as the client reads it, against the vectors' first hello (version 1)
//! or a fresh hybrid hello (version 2, with its ML-KEM decapsulation): the first byte picks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlattice_fuzz::{client_secrets, server_ck};
use xlattice_protocol::{handshake::client_hello_offering, Offer, PortKind};

fuzz_target!(|data: &[u8]| {
    let Some((pick, reply)) = data.split_first() else {
        return;
    };
    let offer = match pick % 3 {
        0 => Offer::Classical,
        1 => Offer::ClassicalAfterRefusal,
        _ => Offer::Hybrid,
    };
    let (_, pending) =
        client_hello_offering(server_ck(), PortKind::Client, None, client_secrets(), offer).expect("a hello");
    let _ = pending.finish(reply);
});
