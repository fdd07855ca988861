//! `xlattice probe`, the real binary: what `kubectl xlattice check --probe-network-policy`
//! runs in its two pods. A dial exits 0 only on the outcome it expects.

use std::{
    process::{Child, Command},
    time::Duration,
};

fn xlattice(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_xlattice"));
    command.args(args);
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dial(port: u16, expect: &str) -> bool {
    let address = format!("127.0.0.1:{port}");
    xlattice(&[
        "probe",
        "dial",
        &address,
        "--expect",
        expect,
        "--within",
        "3s",
        "--timeout",
        "500ms",
    ])
    .output()
    .unwrap()
    .status
    .success()
}

#[test]
fn dial_exits_zero_only_on_the_outcome_it_expects() {
    let port = free_port();
    // Nothing listens yet: blocked, never open.
    assert!(dial(port, "blocked"));
    assert!(!dial(port, "open"));
    let _listener = Killed(
        xlattice(&["probe", "listen", "--port", &port.to_string()])
            .spawn()
            .unwrap(),
    );
    let open = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(open, "the listener never came up");
    assert!(dial(port, "open"));
    assert!(!dial(port, "blocked"));
}
