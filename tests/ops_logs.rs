//! `log.file`: logs go to stdout and to a daily-rotated file.

use std::time::{Duration, Instant};

use corelay_testkit::{Capture, Server};

/// The text of every `corelay.log.*` file in `dir`.
fn log_files(dir: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("corelay.log."))
        .map(|n| (n.clone(), std::fs::read_to_string(dir.join(&n)).unwrap()))
        .collect()
}

#[test]
fn the_log_file_receives_the_ready_line_and_the_last_line() {
    let dir = tempfile::tempdir().unwrap();
    // A directory that does not exist yet: the appender creates it.
    let logs = dir.path().join("logs");
    let file = logs.join("corelay.log");
    let mut server = Server::builder()
        .shards(1)
        .args(["--log-file", file.to_str().unwrap()])
        .spawn();

    // While running: the ready line is there (written by a background thread, so poll).
    let start = Instant::now();
    loop {
        let files = log_files(&logs);
        if files.iter().any(|(_, t)| t.contains(" ready: http://")) {
            // Daily rotation: the name carries the date, FILE.YYYY-MM-DD.
            let (name, _) = &files[0];
            let date = name.strip_prefix("corelay.log.").unwrap();
            assert_eq!(date.len(), 10, "{name}");
            assert_eq!(date.matches('-').count(), 2, "{name}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no ready line in {logs:?}: {files:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    server.sigterm();
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    // The guard lives to the end: the last line of the process is in the file too.
    let text: String = log_files(&logs).into_iter().map(|(_, t)| t).collect();
    assert!(text.contains("corelay stopped"), "{text}");
}

#[test]
fn stdout_still_gets_the_logs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("corelay.log");
    let mut server = Server::builder()
        .shards(1)
        .args(["--log-format", "json"])
        .env("CORELAY_LOG_FILE", &file)
        .stdout(Capture::Piped)
        .spawn();
    server.sigterm();
    let out = server.wait_with_output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ready: http://"), "{stdout}");
    let text: String = log_files(dir.path()).into_iter().map(|(_, t)| t).collect();
    let first = text.lines().next().expect("a line in the file");
    assert!(
        serde_json::from_str::<serde_json::Value>(first).is_ok(),
        "the file gets the same format: {first}"
    );
}

#[test]
fn an_unusable_log_file_stops_start_up_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the directory should be.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let out = Server::builder()
        .shards(1)
        .arg("--log-file")
        .arg(blocker.join("corelay.log"))
        .output();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open log file"), "{err}");
}

/// Runs the server with `env` until healthy, stops it, and returns its stdout.
fn run_and_collect_stdout(env: &[(&str, &str)]) -> String {
    let mut builder = Server::builder().shards(1).stdout(Capture::Piped);
    for var in ["CLUSTER_MODE", "REDIS_URL", "NODE_ID", "NATS"] {
        builder = builder.env_remove(var);
    }
    let mut server = builder.envs(env.iter().copied()).spawn();
    server.sigterm();
    let out = server.wait_with_output();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn deploy_file_variables_not_acted_on_get_one_warning_line() {
    let stdout = run_and_collect_stdout(&[
        ("NATS", "nats://localhost:4222"),
        ("REDIS_URL", "redis://127.0.0.1:6379"),
    ]);
    let lines: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("not act on them yet"))
        .collect();
    assert_eq!(lines.len(), 1, "exactly one warning line:\n{stdout}");
    let line = lines[0];
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains("NATS") && line.contains("REDIS_URL"),
        "{line}"
    );
    assert!(
        !line.contains("CLUSTER_MODE") && !line.contains("NODE_ID"),
        "only the variables that are set: {line}"
    );
    assert!(
        stdout.contains("ready: http://"),
        "it still starts:\n{stdout}"
    );

    let quiet = run_and_collect_stdout(&[]);
    assert!(
        !quiet.contains("not act on them yet"),
        "no warning when none is set:\n{quiet}"
    );
}
