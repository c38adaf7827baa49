//! Shell check scripts (tests/aiortc/run.sh, tests/api/check_api_docs.sh) run from a test.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `bash ROOT/SCRIPT BINARY` in `root` (the repository), in its own process group
/// (killed as a whole after `limit`), printing its output; panics unless it exits 0.
/// A test of the corelay package passes `env!("CARGO_MANIFEST_DIR")` and
/// `env!("CARGO_BIN_EXE_corelay")`.
pub fn run_check_script(root: &Path, binary: &Path, script: &str, limit: Duration) {
    use std::os::unix::process::CommandExt;
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new("bash")
        .arg(root.join(script))
        .arg(binary)
        .current_dir(root)
        .stdin(Stdio::null())
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap())
        .process_group(0)
        .spawn()
        .expect("bash runs");
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
    println!(
        "{}",
        std::fs::read_to_string(log.path()).unwrap_or_default()
    );
    match status {
        None => panic!("{script} ran over {limit:?}"),
        Some(s) => assert!(s.success(), "{script} failed ({s}); output above"),
    }
}
