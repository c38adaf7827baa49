//! WHIP and WHEP with aiortc, a WebRTC implementation independent of the server's (str0m)
//! and of the browsers: runs tests/aiortc/run.sh against this build's binary. One aiortc
//! peer publishes a synthetic video and audio over WHIP, a second one views them over WHEP
//! (>= 30 decoded video frames within 20 s), then both sessions are DELETEd. It needs
//! python3 (with venv), and PyPI the first time (the venv is kept in target/aiortc-venv).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn aiortc_publishes_over_whip_and_views_over_whep() {
    let root = env!("CARGO_MANIFEST_DIR");
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new("bash")
            .arg(format!("{root}/tests/aiortc/run.sh"))
            .arg(env!("CARGO_BIN_EXE_corelay"))
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .process_group(0)
            .spawn()
            .expect("bash runs")
    };
    // run.sh bounds itself at 150 s (+5 s to kill); this is the backstop.
    let limit = Duration::from_secs(180);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > limit {
            // SAFETY: kill(2) on the process group we created.
            unsafe {
                libc::kill(-(child.id() as i32), libc::SIGKILL);
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(log.path()).unwrap_or_default();
    println!("{output}");
    match status {
        None => panic!("tests/aiortc/run.sh ran over {limit:?}"),
        Some(s) => assert!(
            s.success(),
            "tests/aiortc/run.sh failed ({s}); output above"
        ),
    }
}
