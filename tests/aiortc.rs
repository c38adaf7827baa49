//! WHIP and WHEP with aiortc, a WebRTC implementation independent of the server's (str0m)
//! and of the browsers: runs tests/aiortc/run.sh against this build's binary. One aiortc
//! peer publishes a synthetic video and audio over WHIP, a second one views them over WHEP
//! (>= 30 decoded video frames within 20 s), then both sessions are DELETEd. It needs
//! python3 (with venv), and PyPI the first time (the venv is kept in target/aiortc-venv).

use std::path::Path;
use std::time::Duration;

#[test]
fn aiortc_publishes_over_whip_and_views_over_whep() {
    // run.sh bounds itself at 150 s (+5 s to kill); this is the backstop.
    corelay_testkit::run_check_script(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        Path::new(env!("CARGO_BIN_EXE_corelay")),
        "tests/aiortc/run.sh",
        Duration::from_secs(180),
    );
}
