//! The first bytes a server reads from anyone: the routing preamble, the hello header and
//! the whole hello, on both ports, through the async reader (`read_hello`) and the pure
//! checker (`server_accept`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlattice_fuzz::{block_on, directory, replay, server, server_now};
use xlattice_protocol::{
    handshake::{parse_hello_header, parse_route, server_accept, ServerSecrets, HELLO_HEADER_LEN, ROUTE_LEN},
    read_hello, PortKind, ServerContext,
};

fuzz_target!(|data: &[u8]| {
    if let Some(preamble) = data.get(..ROUTE_LEN) {
        let _ = parse_route(preamble.try_into().expect("ROUTE_LEN bytes"));
    }
    for port in [PortKind::Client, PortKind::Cluster] {
        if let Some(header) = data.get(..HELLO_HEADER_LEN) {
            let _ = parse_hello_header(header.try_into().expect("8 bytes"), port, 256);
        }
        let ctx = ServerContext {
            port,
            identity: server(),
            directory: directory(),
            replay: replay(),
            post_quantum: xlattice_protocol::PostQuantum::Preferred,
        };
        let mut input = data;
        let _ = block_on(read_hello(&mut input, &ctx));
        let _ = server_accept(&ctx, data, server_now(), ServerSecrets::random());
    }
});
