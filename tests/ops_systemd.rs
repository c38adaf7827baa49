//! The systemd unit, its companions and install.sh.
//!
//! These tests need `systemd-analyze` (Debian package `systemd`) and `strace` (package
//! `strace`); scripts/test.sh installs both. A missing tool is a failure with a message,
//! never a silent skip: a skipped check would let a broken unit ship.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use corelay::config::{Layers, KEYS};
use corelay_testkit::{recv_json, send_text, token, ws_connect, Server};

const UNIT: &str = include_str!("../systemd/corelay.service");
const TOML_EXAMPLE: &str = include_str!("../systemd/corelay.toml.example");
const SYSCTL: &str = include_str!("../tuning/99-corelay.conf");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a tool that must be installed; panics with the package to install if it is not.
fn run_tool(tool: &str, package: &str, args: &[&str]) -> Output {
    match Command::new(tool).args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{tool}` is not installed: install the Debian package `{package}` \
             (scripts/test.sh does: apt-get install {package})"
        ),
        Err(e) => panic!("cannot run {tool}: {e}"),
    }
}

/// A copy of the unit whose ExecStart names a copy of the built binary, because
/// `systemd-analyze verify` checks that the binary exists and /usr/local/bin/corelay is
/// not installed on a test machine.
fn unit_copy(dir: &Path) -> PathBuf {
    let bin = dir.join("corelay");
    std::fs::copy(env!("CARGO_BIN_EXE_corelay"), &bin).unwrap();
    let original = "ExecStart=/usr/local/bin/corelay ";
    assert!(
        UNIT.contains(original),
        "ExecStart changed: update this test"
    );
    let text = UNIT.replace(original, &format!("ExecStart={} ", bin.display()));
    let unit = dir.join("corelay.service");
    std::fs::write(&unit, text).unwrap();
    unit
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    let out = run_tool(
        "systemd-analyze",
        "systemd",
        &["verify", "--man=no", unit.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    // Unknown keys and unparsable values are only warnings with exit status 0.
    let about_unit: Vec<_> = stderr.lines().filter(|l| l.contains("corelay")).collect();
    assert!(about_unit.is_empty(), "verify warned: {about_unit:#?}");
}

#[test]
fn the_unit_is_well_hardened() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path());
    // Exposure 0.0 (locked down) .. 10.0 (unprotected); the threshold is in tenths.
    let out = run_tool(
        "systemd-analyze",
        "systemd",
        &[
            "security",
            "--offline=yes",
            "--threshold=25",
            unit.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success(),
        "exposure above 2.5: {summary}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_unit_says_what_the_operations_guide_promises() {
    for line in [
        "Type=notify",
        "ExecStart=/usr/local/bin/corelay --config /etc/corelay/corelay.toml",
        "EnvironmentFile=-/etc/corelay/corelay.env",
        "User=corelay",
        "LimitMEMLOCK=infinity",
        "LimitNOFILE=1048576",
        "Restart=on-failure",
        "WatchdogSec=30s",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "SystemCallArchitectures=native",
        "ProtectKernelTunables=yes",
        "ProtectControlGroups=yes",
        "LockPersonality=yes",
        "RestrictRealtime=yes",
        "MemoryDenyWriteExecute=yes",
    ] {
        assert!(UNIT.lines().any(|l| l == line), "missing: {line}");
    }
    let filter = allowed_syscall_words();
    for call in [
        "@system-service",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "mlock",
    ] {
        assert!(filter.contains(call), "SystemCallFilter lacks {call}");
    }
    // Every service setting says why: the line above each one is a comment or a
    // setting of the same commented group.
    let lines: Vec<&str> = UNIT.lines().collect();
    let service = lines.iter().position(|l| *l == "[Service]").unwrap();
    for (i, l) in lines.iter().enumerate().skip(service + 1) {
        if l.starts_with('[') {
            break;
        }
        if l.contains('=') && !l.starts_with('#') {
            let above = lines[i - 1];
            assert!(
                above.starts_with('#') || above.contains('='),
                "no comment above {l:?}"
            );
        }
    }
}

/// The words of every `SystemCallFilter=` line: groups (`@...`) and call names.
fn allowed_syscall_words() -> BTreeSet<String> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix("SystemCallFilter="))
        .flat_map(|v| v.split_whitespace().map(str::to_string))
        .collect()
}

/// Expands `@group`s with `systemd-analyze syscall-filter` (groups nest).
fn expand(word: &str, out: &mut BTreeSet<String>, seen: &mut BTreeSet<String>) {
    if !word.starts_with('@') {
        out.insert(word.to_string());
        return;
    }
    if !seen.insert(word.to_string()) {
        return;
    }
    let res = run_tool("systemd-analyze", "systemd", &["syscall-filter", word]);
    assert!(res.status.success(), "unknown syscall group {word}");
    let text = String::from_utf8_lossy(&res.stdout).into_owned();
    for line in text.lines().skip(1) {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        expand(t.split_whitespace().next().unwrap(), out, seen);
    }
}

/// Runs the server under `strace -f -c` through start-up, /health, a relay WebSocket, a
/// datagram to each shard and SIGTERM; returns the system calls it made. `-D` keeps the
/// traced server our direct child, so we can signal it.
fn syscalls_of_a_server_run() -> BTreeSet<String> {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("strace.txt");
    let report_arg = report.display().to_string();
    let server = Server::builder()
        .shards(2)
        .wrapper("strace", ["-f", "-c", "-D", "-qq", "-o", &report_arg])
        .health_timeout(Duration::from_secs(30))
        .try_spawn();
    let mut server = match server {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`strace` is not installed: install the Debian package `strace`")
        }
        Err(e) => panic!("cannot run strace: {e}"),
    };
    let port = server.port;
    let health = server.health();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for shard in health["shards"].as_array().unwrap() {
        let p = shard["udpPort"].as_u64().unwrap() as u16;
        udp.send_to(b"not a stun packet", ("127.0.0.1", p)).unwrap();
    }
    let mut ws = ws_connect(port, &format!("/p2p?token={}", token("alice", None))).unwrap();
    send_text(
        &mut ws,
        r#"{"Header":{"Event":"connect","UserId":"alice","RoomId":"r1"},"Payload":""}"#,
    );
    let _ = recv_json(&mut ws);
    // The traced server is our child (strace -D runs as a grandchild): signal it.
    server.sigterm();
    let _ = ws.read(); // the 1001 close frame
    let status = server.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "clean exit under strace");
    // strace writes its table when the last traced thread is gone.
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&report).unwrap_or_default();
        if text.contains("total") {
            return text
                .lines()
                .filter(|l| !l.starts_with('%') && !l.starts_with('-'))
                .filter_map(|l| l.split_whitespace().last())
                .filter(|w| *w != "total")
                .map(str::to_string)
                .collect();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no strace report: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_syscall_filter_allows_every_call_the_server_makes() {
    let mut allowed = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for word in allowed_syscall_words() {
        expand(&word, &mut allowed, &mut seen);
    }
    assert!(allowed.contains("io_uring_enter") && allowed.contains("mlock"));
    let used = syscalls_of_a_server_run();
    assert!(used.contains("io_uring_setup"), "not traced? {used:?}");
    let denied: Vec<_> = used.difference(&allowed).collect();
    assert!(
        denied.is_empty(),
        "SystemCallFilter in systemd/corelay.service would deny {denied:?}"
    );
}

#[test]
fn the_config_example_documents_every_key_and_is_valid() {
    // Each key appears as `#name = value` under its `[section]`, with a comment.
    let mut section = "";
    let mut documented = Vec::new();
    let mut uncommented = String::new();
    for line in TOML_EXAMPLE.lines() {
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s;
            uncommented.push_str(line);
        } else if let Some(setting) = line
            .strip_prefix('#')
            .filter(|l| !l.starts_with(' ') && l.contains(" = "))
        {
            let name = setting.split(" = ").next().unwrap().trim();
            documented.push(format!("{section}.{name}"));
            uncommented.push_str(setting);
        } else {
            assert!(
                line.is_empty() || line.starts_with('#'),
                "a setting that is not commented out (keep defaults commented): {line}"
            );
        }
        uncommented.push('\n');
    }
    for spec in KEYS {
        assert!(
            documented.iter().any(|k| k == spec.key),
            "systemd/corelay.toml.example lacks `{}`",
            spec.key
        );
    }
    for key in &documented {
        assert!(KEYS.iter().any(|s| s.key == key), "unknown key {key}");
    }
    // With every setting uncommented, the example is a valid configuration.
    let mut layers = Layers::with_defaults();
    layers
        .apply_toml(&uncommented, Path::new("corelay.toml.example"))
        .unwrap();
    layers.build().unwrap();
    // And as shipped (all commented) it parses too.
    let mut layers = Layers::with_defaults();
    layers
        .apply_toml(TOML_EXAMPLE, Path::new("corelay.toml.example"))
        .unwrap();
    layers.build().unwrap();
}

#[test]
fn the_sysctl_drop_in_names_real_settings_and_fits_the_defaults() {
    let mut values = std::collections::HashMap::new();
    for line in SYSCTL.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').expect("key = value");
        let (k, v) = (k.trim(), v.trim());
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        assert!(Path::new(&path).exists(), "no such sysctl: {k}");
        values.insert(k.to_string(), v.to_string());
    }
    let num = |k: &str| values[k].parse::<u64>().unwrap();
    let defaults = corelay::config::Config::defaults();
    assert!(num("net.core.rmem_max") >= defaults.udp_recv_buffer as u64);
    assert!(num("net.core.wmem_max") >= defaults.udp_send_buffer as u64);
    assert_eq!(
        values["net.ipv4.ip_local_reserved_ports"],
        format!(
            "{}-{}",
            defaults.udp_port_base,
            defaults.udp_port_base + 255
        )
    );
}

/// Runs install.sh into `dest`; returns its stdout.
fn install(dest: &Path) -> String {
    let out = Command::new("bash")
        .arg(repo().join("systemd/install.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_corelay")])
        .env("DESTDIR", dest)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "install.sh failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn secret(env_file: &Path) -> String {
    std::fs::read_to_string(env_file)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("JWT_SECRET="))
        .expect("a JWT_SECRET line")
        .to_string()
}

#[test]
fn install_sh_twice_into_a_destdir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = install(d);
    assert!(
        first.contains("DESTDIR set: not creating the corelay user"),
        "{first}"
    );
    assert!(first.contains("not running systemctl"), "{first}");
    assert!(first.contains("Next steps"), "{first}");

    let bin = d.join("usr/local/bin/corelay");
    let unit = d.join("etc/systemd/system/corelay.service");
    let config = d.join("etc/corelay/corelay.toml");
    let env_file = d.join("etc/corelay/corelay.env");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(mode(&config), 0o644);
    assert_eq!(mode(&env_file), 0o600);
    assert_eq!(std::fs::read_to_string(&unit).unwrap(), UNIT);
    let secret1 = secret(&env_file);
    assert!(secret1.len() >= 32, "a long random secret: {secret1:?}");

    // The installed binary accepts the installed files.
    let check = Command::new(&bin)
        .args(["tune-check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(matches!(check.status.code(), Some(0 | 1)), "{check:?}");

    // The operator edits the config and loosens the env file's mode; a second run keeps
    // the edit and the secret, and puts the mode back.
    std::fs::write(&config, "[server]\nshards = 3\n").unwrap();
    std::fs::set_permissions(&env_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let second = install(d);
    assert!(second.contains("kept the JWT_SECRET"), "{second}");
    assert_eq!(
        secret(&env_file),
        secret1,
        "the secret survives a reinstall"
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "[server]\nshards = 3\n"
    );
    assert_eq!(mode(&env_file), 0o600);
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(mode(&unit), 0o644);
}

#[test]
fn install_sh_adds_a_secret_to_an_env_file_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("etc/corelay/corelay.env");
    std::fs::create_dir_all(env_file.parent().unwrap()).unwrap();
    std::fs::write(&env_file, "RUST_LOG=debug\nJWT_SECRET=\n").unwrap();
    install(dir.path());
    let text = std::fs::read_to_string(&env_file).unwrap();
    assert!(text.starts_with("RUST_LOG=debug\n"), "{text}");
    assert!(secret(&env_file).len() >= 32, "{text}");
    assert_eq!(mode(&env_file), 0o600);
}

#[test]
fn install_sh_refuses_a_missing_binary() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(repo().join("systemd/install.sh"))
        .args(["--binary", "/nonexistent/corelay"])
        .env("DESTDIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--binary"));
}
