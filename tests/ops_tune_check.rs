//! `corelay tune-check` on this very machine: every line is there, with a status, and the
//! exit status agrees with the FAIL lines.

use std::process::Command;

/// Labels of the lines, in report order.
const LINES: &[&str] = &[
    "memlock",
    "nofile",
    "net.core.rmem_max",
    "net.core.wmem_max",
    "udp ports",
    "cpu governor",
    "smt",
    "irqbalance",
    "nic queues",
    "nic offloads",
];

/// Runs tune-check with extra flags; returns (exit code, stdout).
fn tune_check(extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_corelay"))
        .arg("tune-check")
        .args(["--shards", "2"])
        .args(extra)
        .env_remove("CORELAY_CONFIG")
        .output()
        .expect("corelay runs");
    let stdout = String::from_utf8(out.stdout).unwrap();
    (out.status.code().expect("exited"), stdout)
}

/// (status, label) of each report line, checking the shape as it goes.
fn parse(stdout: &str) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    for line in stdout.lines().filter(|l| !l.starts_with("tune-check:")) {
        let (status, rest) = line.split_once(' ').expect("status first");
        assert!(
            ["ok", "warn", "FAIL"].contains(&status),
            "bad status in {line:?}"
        );
        let (label, detail) = rest.trim_start().split_once(": ").expect("label: detail");
        assert!(!detail.is_empty(), "{line}");
        assert_eq!(
            status != "ok",
            line.contains(" | fix: "),
            "a fix exactly on warn and FAIL lines: {line}"
        );
        lines.push((status.to_string(), label.to_string()));
    }
    lines
}

fn read_sysctl(name: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn every_line_is_present_and_the_exit_status_matches() {
    let (code, stdout) = tune_check(&[]);
    let lines = parse(&stdout);
    let labels: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(labels, LINES, "{stdout}");
    let fails = lines.iter().filter(|(s, _)| s == "FAIL").count();
    assert_eq!(code, i32::from(fails > 0), "{stdout}");
    let summary = stdout.lines().last().unwrap();
    assert!(summary.contains(&format!("{fails} FAIL")), "{summary}");
}

#[test]
fn a_buffer_above_the_kernel_maximum_fails() {
    // 1 GiB is the largest buffer the config accepts and far above any usual rmem_max.
    let gib = 1u64 << 30;
    let (code, stdout) = tune_check(&["--udp-recv-buffer", &gib.to_string()]);
    let lines = parse(&stdout);
    let rmem = lines
        .iter()
        .find(|(_, l)| l == "net.core.rmem_max")
        .unwrap();
    if read_sysctl("rmem_max") < gib {
        assert_eq!(rmem.0, "FAIL", "{stdout}");
        assert_eq!(code, 1, "{stdout}");
        assert!(
            stdout.contains(&format!("sysctl -w net.core.rmem_max={gib}")),
            "{stdout}"
        );
    } else {
        assert_eq!(rmem.0, "ok", "{stdout}");
    }
}

#[test]
fn the_smallest_buffers_pass_the_socket_checks() {
    // 64 KiB, the config's floor: below every kernel's default maximum.
    let (_, stdout) = tune_check(&["--udp-recv-buffer", "65536", "--udp-send-buffer", "65536"]);
    for (status, label) in parse(&stdout) {
        if label.starts_with("net.core.") {
            assert_eq!(status, "ok", "{stdout}");
        }
    }
}

#[test]
fn a_bad_setting_is_a_usage_error() {
    let (code, _) = tune_check(&["--udp-recv-buffer", "lots"]);
    assert_eq!(code, 2);
}
