//! A member directory file (YAML or JSON) as a sidecar or client reads it, then indexed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xlattice_protocol::MemberDirectory;

fuzz_target!(|data: &[u8]| {
    if let Ok(directory) = MemberDirectory::from_slice(data) {
        let _ = directory.index();
    }
});
