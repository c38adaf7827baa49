//! Starting the real `corelay` binary for a test, a benchmark or the load tool's tests:
//! [`Server::builder`] is the one way every Rust caller starts it.
//!
//! ```no_run
//! use corelay_testkit::{Ready, Server};
//! let server = Server::builder().shards(2).args(["--login", "true"]).spawn();
//! assert_eq!(server.health()["status"], "ok");
//! # let _ = Ready::Tcp;
//! ```

use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::net::{free_port, http, SECRET};

/// Where one of the server's output streams goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Capture {
    /// Discarded (the default).
    #[default]
    Null,
    /// The caller's own stream.
    Inherit,
    /// A pipe, read with [`Server::wait_with_output`] or from `server.child.stdout`.
    Piped,
    /// Appended to this file (created when missing).
    File(PathBuf),
}

impl Capture {
    fn stdio(&self) -> std::io::Result<Stdio> {
        Ok(match self {
            Capture::Null => Stdio::null(),
            Capture::Inherit => Stdio::inherit(),
            Capture::Piped => Stdio::piped(),
            Capture::File(path) => OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?
                .into(),
        })
    }
}

/// How [`ServerBuilder::spawn`] decides that the server is up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ready {
    /// `GET /health` answers 200 over plain HTTP (the default).
    #[default]
    Health,
    /// A TCP connect to the HTTP port succeeds: for a TLS server, which refuses plain HTTP.
    Tcp,
    /// No check: `spawn` returns as soon as the process runs (the test watches for
    /// readiness itself, e.g. on a NOTIFY_SOCKET).
    None,
}

/// Options for one `corelay` process; [`Server::builder`] makes one.
///
/// The command line is `[WRAPPER...] BINARY --listen 127.0.0.1:PORT --shards N
/// --udp-port-base 0 [ARGS...]`, PORT a free loopback port. The environment is the
/// caller's, with `JWT_SECRET` = [`SECRET`] and `RUST_LOG` = `info` unless changed by
/// [`env`](Self::env) or [`env_remove`](Self::env_remove).
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    binary: Option<PathBuf>,
    shards: usize,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    stdout: Capture,
    stderr: Capture,
    ready: Ready,
    health_timeout: Duration,
    wrapper: Vec<OsString>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        ServerBuilder {
            binary: None,
            shards: 1,
            args: Vec::new(),
            env: vec![
                ("JWT_SECRET".into(), Some(SECRET.into())),
                ("RUST_LOG".into(), Some("info".into())),
            ],
            stdout: Capture::Null,
            stderr: Capture::Null,
            ready: Ready::Health,
            health_timeout: Duration::from_secs(20),
            wrapper: Vec::new(),
        }
    }
}

impl ServerBuilder {
    /// The server binary. Default: [`default_binary`] (`CORELAY_BIN`, else the `corelay`
    /// next to the running executable). Tests of the corelay package may pass
    /// `env!("CARGO_BIN_EXE_corelay")`.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// `--shards N` (default 1).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }

    /// One more command-line argument, after the listen, shards and UDP port flags.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// More command-line arguments, after the listen, shards and UDP port flags.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable of the server (the last setting of a name wins).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), Some(value.as_ref().to_owned())));
        self
    }

    /// Sets several environment variables.
    pub fn envs<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self = self.env(k, v);
        }
        self
    }

    /// Removes an environment variable from the server's environment (also one of the
    /// defaults: `env_remove("JWT_SECRET")` starts a server in dev mode).
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.env.push((key.as_ref().to_owned(), None));
        self
    }

    /// Where the server's stdout goes (default [`Capture::Null`]).
    pub fn stdout(mut self, to: Capture) -> Self {
        self.stdout = to;
        self
    }

    /// Where the server's stderr goes (default [`Capture::Null`]).
    pub fn stderr(mut self, to: Capture) -> Self {
        self.stderr = to;
        self
    }

    /// The readiness check of [`spawn`](Self::spawn) (default [`Ready::Health`]).
    pub fn ready(mut self, ready: Ready) -> Self {
        self.ready = ready;
        self
    }

    /// How long the readiness check may take before `spawn` panics (default 20 s).
    pub fn health_timeout(mut self, limit: Duration) -> Self {
        self.health_timeout = limit;
        self
    }

    /// Pins the server to CPU `core`: runs it as `taskset -c CORE BINARY ...`.
    pub fn taskset(self, core: usize) -> Self {
        self.wrapper("taskset", ["-c".to_string(), core.to_string()])
    }

    /// Runs the server under another program, `PROGRAM ARGS... BINARY ...` (e.g. `strace`);
    /// replaces an earlier wrapper or [`taskset`](Self::taskset). The child is then that
    /// program: it must run the binary as its own child and pass signals on, or exec it.
    pub fn wrapper<I, S>(mut self, program: impl AsRef<OsStr>, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.wrapper = std::iter::once(program.as_ref().to_owned())
            .chain(args.into_iter().map(|a| a.as_ref().to_owned()))
            .collect();
        self
    }

    fn command(&self, port: u16) -> std::io::Result<Command> {
        let binary = self.binary.clone().unwrap_or_else(default_binary);
        let mut cmd = match self.wrapper.split_first() {
            None => Command::new(&binary),
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&binary);
                cmd
            }
        };
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--shards")
            .arg(self.shards.to_string())
            .args(["--udp-port-base", "0"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(self.stdout.stdio()?)
            .stderr(self.stderr.stdio()?);
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        Ok(cmd)
    }

    /// Starts the server and waits for the readiness check; panics when the process cannot
    /// start, exits during start-up or is not ready within the health timeout.
    pub fn spawn(self) -> Server {
        let what = self.describe();
        self.try_spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"))
    }

    /// Like [`spawn`](Self::spawn), but an error starting the process (a missing wrapper
    /// program, say) is returned; readiness failures still panic.
    pub fn try_spawn(self) -> std::io::Result<Server> {
        let port = free_port();
        let child = self.command(port)?.spawn()?;
        let mut server = Server { port, child };
        let start = Instant::now();
        loop {
            let ready = match self.ready {
                Ready::None => true,
                Ready::Tcp => TcpStream::connect(("127.0.0.1", port)).is_ok(),
                Ready::Health => server.is_healthy(),
            };
            if ready {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                panic!(
                    "{} exited during start-up ({status}) on port {port}",
                    self.describe()
                );
            }
            if start.elapsed() > self.health_timeout {
                panic!(
                    "{} on port {port} not ready ({:?}) within {:?}",
                    self.describe(),
                    self.ready,
                    self.health_timeout
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs the server to its exit and returns its output (stdout and stderr are captured
    /// whatever [`stdout`](Self::stdout) and [`stderr`](Self::stderr) say): for start-up
    /// errors. There is no readiness check.
    pub fn output(self) -> Output {
        let mut cmd = self
            .command(free_port())
            .unwrap_or_else(|e| panic!("cannot set up {}: {e}", self.describe()));
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.describe()))
    }

    fn describe(&self) -> String {
        let binary = self.binary.clone().unwrap_or_else(default_binary);
        let mut words: Vec<String> = self
            .wrapper
            .iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect();
        words.push(binary.display().to_string());
        words.join(" ")
    }
}

/// The server binary when [`ServerBuilder::binary`] names none: `CORELAY_BIN` when set,
/// else `corelay` in the running executable's directory or the one above it (a test runs
/// from `target/<profile>/deps/`, a benchmark from `target/<profile>/`). Panics, naming the
/// build command, when there is none.
pub fn default_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CORELAY_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the running executable's path");
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [Some(dir), dir.parent()];
    for d in candidates.iter().flatten() {
        let bin = d.join("corelay");
        if bin.is_file() {
            return bin;
        }
    }
    let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    panic!(
        "the corelay server binary is missing: no {} (looked next to {}). Build it with \
         `cargo build -p corelay --bin corelay{}` (with the same CARGO_TARGET_DIR), or set \
         CORELAY_BIN to a corelay binary",
        profile_dir.join("corelay").display(),
        exe.display(),
        if release { " --release" } else { "" }
    );
}

/// A running `corelay` process, killed when dropped.
pub struct Server {
    /// The HTTP port on 127.0.0.1.
    pub port: u16,
    /// The process (the wrapper program when there is one).
    pub child: Child,
}

impl Server {
    /// Options for a server; [`ServerBuilder::spawn`] starts it.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whether `GET /health` answers 200 now.
    pub fn is_healthy(&self) -> bool {
        matches!(http(self.port, "GET", "/health", &[], b""), Ok((200, _)))
    }

    /// Polls `GET /health` until it answers 200; panics after `limit`.
    pub fn wait_healthy(&self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.is_healthy() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server on port {} not healthy within {limit:?}", self.port);
    }

    /// `GET /health` as JSON; panics unless it answers 200.
    pub fn health(&self) -> serde_json::Value {
        let (status, body) = http(self.port, "GET", "/health", &[], b"").unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Sends signal `sig` to the process; panics when kill(2) fails.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig}) on pid {}", self.child.id());
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn sigterm(&self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
    }

    /// Waits for the process to exit; kills it and panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "corelay (pid {}) did not exit within {limit:?}",
                    self.child.id()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then [`wait_exit`](Self::wait_exit).
    pub fn stop(&mut self, limit: Duration) -> ExitStatus {
        self.sigterm();
        self.wait_exit(limit)
    }

    /// Waits for the process to exit and returns what it wrote to the piped streams
    /// ([`Capture::Piped`]; empty for the others).
    pub fn wait_with_output(&mut self) -> Output {
        let stderr = self.child.stderr.take().map(|mut e| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = e.read_to_end(&mut buf);
                buf
            })
        });
        let mut stdout = Vec::new();
        if let Some(mut o) = self.child.stdout.take() {
            let _ = o.read_to_end(&mut stdout);
        }
        let status = self.child.wait().unwrap();
        Output {
            status,
            stdout,
            stderr: stderr
                .map(|t| t.join().unwrap_or_default())
                .unwrap_or_default(),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
