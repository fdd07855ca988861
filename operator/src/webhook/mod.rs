//! The sidecar injection webhook: decisions in `inject`, TLS in `certs`, HTTP in `server`.

pub mod certs;
pub mod inject;
pub mod server;
