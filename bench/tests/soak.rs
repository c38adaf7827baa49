//! A 20-second soak of the debug build: every dialect churns and the server's RSS, fds and
//! transports come back. Ignored (it takes over a minute with the warm-up and settling):
//! `cargo build && cargo test -p corelay-bench --test soak -- --ignored`.

use std::process::Command;

#[test]
#[ignore]
fn a_short_soak_leaves_nothing_behind() {
    let report = std::env::temp_dir().join(format!("corelay-soak-{}.json", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_soak"))
        .args([
            "--seconds",
            "20",
            "--sessions",
            "6",
            "--hold",
            "2",
            "--report-every",
            "10",
        ])
        .args(["--warmup", "10"])
        .args(["--settle", "60", "--json"])
        .arg(&report)
        .status()
        .expect("the soak runs");
    let text = std::fs::read_to_string(&report).expect("a report");
    let _ = std::fs::remove_file(&report);
    assert!(status.success(), "soak failed: {text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["pass"], true, "{text}");
    for kind in ["mediasoup", "pubsub", "whip", "connect", "p2p", "sockjs"] {
        let done = json["scenarios"][kind]["done"].as_u64().unwrap_or(0);
        assert!(done > 0, "no {kind} scenario succeeded: {text}");
    }
}
