//! The server's reply as the client reads it, against the vectors' first hello.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlattice_fuzz::{client_secrets, server_ck};
use xlattice_protocol::{handshake::client_hello, PortKind};

fuzz_target!(|data: &[u8]| {
    let (_, pending) = client_hello(server_ck(), PortKind::Client, None, client_secrets()).expect("a hello");
    let _ = pending.finish(data);
});
