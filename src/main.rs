//! The `corelay` command: `serve` (the default), `token`, `tune-check`, `config-table`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgMatches, Command};
use corelay::auth::{validate_id, Authenticator, Grant};
use corelay::config::{self, Config, Layers, LogFormat, KEYS};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for bad configuration or usage, as clap uses.
const EXIT_USAGE: u8 = 2;

fn setting_args() -> Vec<Arg> {
    let mut args = vec![Arg::new("config")
        .long("config")
        .short('c')
        .value_name("FILE")
        .env("CORELAY_CONFIG")
        .help("TOML configuration file (values there are overridden by env vars and flags)")];
    for spec in KEYS {
        args.push(
            Arg::new(spec.key)
                .long(spec.flag)
                .value_name("VALUE")
                .help(spec.help),
        );
    }
    args
}

fn cli() -> Command {
    Command::new("corelay")
        .version(env!("CARGO_PKG_VERSION"))
        .about("A thread-per-core WebRTC SFU. With no subcommand, runs the server.")
        .args(setting_args())
        .subcommand(
            Command::new("serve")
                .about("Run the server (the default)")
                .args(setting_args()),
        )
        .subcommand(
            Command::new("token")
                .about("Print a token signed with the configured secret (JWT_SECRET or auth.jwt_secret)")
                .args(setting_args())
                .arg(Arg::new("room").long("room").value_name("ROOM").help("Room the token is valid for (omit: any room)"))
                .arg(Arg::new("user").long("user").value_name("USER").required(true).help("User id"))
                .arg(Arg::new("name").long("name").value_name("NAME").help("Display name (default: the user id)"))
                .arg(Arg::new("ttl").long("ttl").value_name("DURATION").default_value("1h").help("Lifetime, e.g. 30m, 1h, 7d")),
        )
        .subcommand(
            Command::new("tune-check")
                .about("Check this host's limits and kernel settings against the configuration; exit 1 on a FAIL")
                .args(setting_args()),
        )
        .subcommand(Command::new("config-table").about("Print the configuration table (Markdown)"))
}

fn load_config(m: &ArgMatches) -> Result<Config, String> {
    let mut layers = Layers::with_defaults();
    if let Some(path) = m.get_one::<String>("config") {
        layers
            .apply_file(std::path::Path::new(path))
            .map_err(|e| e.to_string())?;
    }
    layers.apply_env(|k| std::env::var(k).ok());
    layers.apply_flags(
        KEYS.iter()
            .filter_map(|s| m.get_one::<String>(s.key).map(|v| (s.key, v.clone()))),
    );
    layers.build().map_err(|e| e.to_string())
}

/// Logs go to stdout, and also to `log.file` when set (rotated daily). The returned guard
/// flushes the file writer's background thread when dropped: keep it until exit.
fn init_logs(config: &Config) -> Result<Option<WorkerGuard>, String> {
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (writer, guard) = match &config.log_file {
        None => (BoxMakeWriter::new(std::io::stdout), None),
        Some(path) => {
            let (file, guard) = tracing_appender::non_blocking(daily_file(path)?);
            (BoxMakeWriter::new(std::io::stdout.and(file)), Some(guard))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    Ok(guard)
}

/// `/var/log/corelay/corelay.log` -> files `corelay.log.YYYY-MM-DD` in that directory
/// (created if missing), a new one each day (UTC).
fn daily_file(path: &std::path::Path) -> Result<RollingFileAppender, String> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let name = path
        .file_name()
        .expect("validated by config")
        .to_string_lossy();
    RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix(name.as_ref())
        .build(dir)
        .map_err(|e| format!("cannot open log file {}: {e}", path.display()))
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("corelay: {msg}");
    ExitCode::from(EXIT_USAGE)
}

fn main() -> ExitCode {
    let matches = cli().get_matches();
    match matches.subcommand() {
        Some(("config-table", _)) => {
            print!("{}", config::markdown_table());
            ExitCode::SUCCESS
        }
        Some(("token", m)) => token(m),
        Some(("tune-check", m)) => tune_check(m),
        Some(("serve", m)) => serve(m),
        _ => serve(&matches),
    }
}

fn serve(m: &ArgMatches) -> ExitCode {
    let mut config = match load_config(m) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if config.dev_mode {
        config.jwt_secret = corelay::auth::random_secret();
    }
    // Held to the end of this function, i.e. for the life of the server.
    let _log_guard = match init_logs(&config) {
        Ok(g) => g,
        Err(e) => return fail(e),
    };
    if let Some(warning) = config::not_acted_on_warning(|k| std::env::var(k).ok()) {
        tracing::warn!("{warning}");
    }
    match corelay::shard::serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("corelay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn token(m: &ArgMatches) -> ExitCode {
    let config = match load_config(m) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if config.dev_mode {
        return fail("no JWT secret configured: set JWT_SECRET, auth.jwt_secret or --jwt-secret (a dev-mode server's random secret cannot be reached from here)");
    }
    let user = m.get_one::<String>("user").expect("required");
    let room = m.get_one::<String>("room");
    if let Err(e) = validate_id("user", user) {
        return fail(e);
    }
    if let Some(room) = room {
        if let Err(e) = validate_id("room", room) {
            return fail(e);
        }
    }
    let ttl: Duration =
        match humantime::parse_duration(m.get_one::<String>("ttl").expect("default")) {
            Ok(d) if d.as_secs() >= 1 => d,
            _ => return fail("--ttl must be a duration such as 30m, 1h or 7d"),
        };
    if let Some(max) = config.max_token_ttl {
        if ttl > max {
            return fail(format!(
                "--ttl {} is longer than auth.max_token_ttl_s ({} s): the server would refuse the token",
                humantime::format_duration(ttl),
                max.as_secs()
            ));
        }
    }
    let auth = Authenticator::new(config.jwt_secret.as_bytes());
    let (token, _) = auth.mint(&Grant {
        user_id: user,
        user_name: m.get_one::<String>("name").map(String::as_str),
        room: room.map(String::as_str),
        ttl,
    });
    println!("{token}");
    ExitCode::SUCCESS
}

fn tune_check(m: &ArgMatches) -> ExitCode {
    use corelay::tune_check::{check, exit_code, read_facts, Status, Wanted};
    let config = match load_config(m) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    // The cores the shards would run on, by the rule `shard::serve` uses.
    let cpus = corelay::shard::allowed_cpus();
    let shards = if config.shards == 0 {
        cpus.len().max(1)
    } else {
        config.shards
    };
    let cores: Vec<usize> = (0..shards).map(|i| cpus[i % cpus.len()]).collect();
    let wanted = Wanted {
        shards,
        memlock: corelay::shard::required_memlock(shards),
        recv_buffer: config.udp_recv_buffer as u64,
        send_buffer: config.udp_send_buffer as u64,
        port_base: config.udp_port_base,
        cores,
    };
    let lines = check(&read_facts(&wanted.cores), &wanted);
    for line in &lines {
        println!("{line}");
    }
    let count = |s| lines.iter().filter(|l| l.status == s).count();
    println!(
        "tune-check: {} ok, {} warn, {} FAIL (limits are this shell's; a systemd unit sets its own)",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    );
    ExitCode::from(exit_code(&lines))
}
