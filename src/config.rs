//! One validated [`Config`] merged from embedded defaults, a TOML file, environment
//! variables and command-line flags, in that rising order of precedence.
//!
//! Every setting is described once in [`KEYS`]: its file key, environment variable, flag,
//! default and help text. The CLI flags are built from that table and so is the README's
//! configuration table, so the three ways of setting a value can never drift apart.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One configurable setting.
pub struct KeySpec {
    /// Dotted key in the TOML file (`section.name`).
    pub key: &'static str,
    /// Environment variable, if any.
    pub env: Option<&'static str>,
    /// Long flag without the leading dashes.
    pub flag: &'static str,
    /// Embedded default, as text; `None` means unset.
    pub default: Option<&'static str>,
    pub help: &'static str,
}

macro_rules! key {
    ($key:literal, $env:expr, $flag:literal, $default:expr, $help:literal) => {
        KeySpec {
            key: $key,
            env: $env,
            flag: $flag,
            default: $default,
            help: $help,
        }
    };
}

/// Every setting corelay reads. Order is the order of the README table.
pub const KEYS: &[KeySpec] = &[
    key!("server.listen", Some("LISTEN"), "listen", Some("127.0.0.1:3001"),
        "HTTP/WebSocket listen address: host:port, or :port for every interface (Go style, e.g. LISTEN=:80); every shard accepts on it with SO_REUSEPORT"),
    key!("server.host", Some("HOST"), "host", None,
        "Overrides the host of server.listen (an IP address, or a name that resolves), e.g. --host 0.0.0.0"),
    key!("server.port", Some("PORT"), "port", None,
        "Overrides the port of server.listen"),
    key!("server.shards", Some("CORELAY_SHARDS"), "shards", Some("0"),
        "Number of shards (one pinned core each); 0 = one per core the process may run on"),
    key!("server.health_timeout_ms", Some("CORELAY_HEALTH_TIMEOUT_MS"), "health-timeout-ms", Some("1000"),
        "How long /health waits for every shard before answering degraded"),
    key!("server.head_timeout_ms", Some("CORELAY_HEAD_TIMEOUT_MS"), "head-timeout-ms", Some("10000"),
        "A client must send a complete HTTP request head within this time (else 408)"),
    key!("server.shutdown_grace_ms", Some("CORELAY_SHUTDOWN_GRACE_MS"), "shutdown-grace-ms", Some("3000"),
        "On SIGTERM/SIGINT, how long open sessions get to close before the process exits"),
    key!("server.admin_token", Some("CORELAY_ADMIN_TOKEN"), "admin-token", None,
        "Secret (16 bytes or more) an operator sends as Authorization: Bearer to reset /latency (?reset=true); unset = no reset at all"),
    key!("udp.port_base", Some("CORELAY_UDP_PORT_BASE"), "udp-port-base", Some("40000"),
        "Shard i receives media on UDP port port_base + i (0 = any free port per shard)"),
    key!("udp.announced_ip", Some("CORELAY_ANNOUNCED_IP"), "announced-ip", Some("127.0.0.1"),
        "Address advertised in ICE candidates: the address clients really reach"),
    key!("udp.recv_buffer", Some("CORELAY_UDP_RECV_BUFFER"), "udp-recv-buffer", Some("4194304"),
        "Requested SO_RCVBUF of each shard's UDP socket, in bytes (the kernel may grant less)"),
    key!("udp.send_buffer", Some("CORELAY_UDP_SEND_BUFFER"), "udp-send-buffer", Some("4194304"),
        "Requested SO_SNDBUF of each shard's UDP socket, in bytes (the kernel may grant less)"),
    key!("auth.jwt_secret", Some("JWT_SECRET"), "jwt-secret", None,
        "HS256 secret for tokens; unset = dev mode (random secret, POST /login on, loud warning)"),
    key!("auth.login", Some("CORELAY_LOGIN"), "login", None,
        "Enable POST /login (true/false); default: on in dev mode only"),
    key!("auth.require_exp", Some("CORELAY_AUTH_REQUIRE_EXP"), "auth-require-exp", Some("true"),
        "Refuse tokens without an exp claim (true/false); off accepts them (they never expire), an exp that is there is checked either way"),
    key!("auth.token_ttl_s", Some("CORELAY_TOKEN_TTL_S"), "token-ttl-s", Some("3600"),
        "Lifetime of tokens minted by POST /login, in seconds"),
    key!("auth.max_token_ttl_s", Some("CORELAY_MAX_TOKEN_TTL_S"), "max-token-ttl-s", None,
        "Refuse tokens whose exp is more than this many seconds from now (and tokens without exp); unset = any exp"),
    key!("auth.trust_user_claim_header", Some("CORELAY_TRUST_USER_CLAIM_HEADER"), "trust-user-claim-header", Some("false"),
        "Accept the X-User-Claim header ({\"userid\", \"clientid\"}, set by a trusted auth proxy) as the identity of /join and /connect"),
    key!("permissions.url", Some("PERMISSIONS_HOST"), "permissions-url", None,
        "Permission service for POST /join (http(s) URL or host:port): GET {url}/user/{userId}/conversation/{conversationId} must answer 2xx; unset = every join allowed"),
    key!("permissions.timeout_ms", Some("CORELAY_PERMISSIONS_TIMEOUT_MS"), "permissions-timeout-ms", Some("2000"),
        "How long POST /join waits for the permission service before answering 401"),
    key!("p2p.allow_anonymous", Some("CORELAY_P2P_ALLOW_ANONYMOUS"), "p2p-allow-anonymous", Some("false"),
        "Let peer-to-peer relay clients connect without a token (UserId then comes from the packet)"),
    key!("limits.max_message_bytes", Some("CORELAY_MAX_MESSAGE_BYTES"), "max-message-bytes", Some("1048576"),
        "Largest WebSocket message or HTTP body accepted, in bytes"),
    key!("limits.session_queue_bytes", Some("CORELAY_SESSION_QUEUE_BYTES"), "session-queue-bytes", Some("4194304"),
        "Bytes of messages that may wait for one slow client (a WebSocket or SockJS session); beyond them it is closed with 1013 too slow (one message always fits)"),
    key!("limits.session_lag_ms", Some("CORELAY_SESSION_LAG_MS"), "session-lag-ms", Some("10000"),
        "A client whose oldest waiting message has waited longer than this when the next one comes is closed with 1013 too slow"),
    key!("limits.messages_per_s", Some("CORELAY_MESSAGES_PER_S"), "messages-per-s", Some("200"),
        "Messages one client may send per second on average (WebSocket: every frame, pings included; SockJS: each message of an xhr_send); over it (and the burst) it gets an error and is closed with 1008 rate limit"),
    key!("limits.message_burst", Some("CORELAY_MESSAGE_BURST"), "message-burst", Some("1000"),
        "Messages one client may send at once above limits.messages_per_s (the token bucket's size)"),
    key!("limits.bytes_per_s", Some("CORELAY_BYTES_PER_S"), "bytes-per-s", Some("4194304"),
        "Message bytes one client may send per second on average (burst: this or limits.max_message_bytes, the larger); over it: an error and close 1008 rate limit"),
    key!("limits.write_timeout_ms", Some("CORELAY_WRITE_TIMEOUT_MS"), "write-timeout-ms", Some("10000"),
        "A WebSocket whose client accepts no bytes for this long is closed and leaves its room"),
    key!("limits.idle_timeout_ms", Some("CORELAY_IDLE_TIMEOUT_MS"), "idle-timeout-ms", Some("60000"),
        "A WebSocket with no frame from its client (pongs included) for this long is closed with 1001; the server pings every half of it"),
    key!("limits.auth_timeout_ms", Some("CORELAY_AUTH_TIMEOUT_MS"), "auth-timeout-ms", Some("5000"),
        "A /pubsub client that did not authenticate (token or auth message) within this time gets an error and is closed with 1008"),
    key!("limits.unauthenticated_message_bytes", Some("CORELAY_UNAUTHENTICATED_MESSAGE_BYTES"), "unauthenticated-message-bytes", Some("4096"),
        "Largest WebSocket message accepted on /pubsub before it authenticates, in bytes (over it: error, close 1009)"),
    key!("limits.request_buffer_bytes", Some("CORELAY_REQUEST_BUFFER_BYTES"), "request-buffer-bytes", Some("67108864"),
        "Request body bytes one shard may hold at once across its connections; a body that would exceed it gets 503 with Retry-After"),
    key!("limits.connect_timeout_ms", Some("CORELAY_CONNECT_TIMEOUT_MS"), "connect-timeout-ms", Some("30000"),
        "A WebRTC transport (any dialect) whose ICE and DTLS are not up this long after it was made (mediasoup: after its first connect-transport, produce or consume) is released with its producers and consumers (mediasoup: transport-closed event; WHIP/WHEP and /connect: the session ends)"),
    key!("limits.sources_per_transport", Some("CORELAY_SOURCES_PER_TRANSPORT"), "sources-per-transport", Some("8"),
        "Client addresses one transport receives from, each bound by a STUN request whose MESSAGE-INTEGRITY checks out; requests from further addresses are dropped"),
    key!("limits.unbound_packets_per_s", Some("CORELAY_UNBOUND_PACKETS_PER_S"), "unbound-packets-per-s", Some("50"),
        "UDP datagrams per second (burst: the same) a source address not bound to a transport may send, i.e. its ICE checks; over it they are dropped and counted; 0 = no limit"),
    key!("limits.transports_per_session", Some("CORELAY_TRANSPORTS_PER_SESSION"), "transports-per-session", Some("64"),
        "Media transports one session may hold (mediasoup create-transport; /pubsub takes one per publisher it subscribes to, plus its own); over it: that request's error naming this setting"),
    key!("limits.producers_per_session", Some("CORELAY_PRODUCERS_PER_SESSION"), "producers-per-session", Some("32"),
        "Producers (published tracks) one session may hold; over it: that request's error"),
    key!("limits.producers_per_transport", Some("CORELAY_PRODUCERS_PER_TRANSPORT"), "producers-per-transport", Some("16"),
        "Producers on one transport (mediasoup produce, the sending sections of one SDP offer); over it: that request's error"),
    key!("limits.consumers_per_session", Some("CORELAY_CONSUMERS_PER_SESSION"), "consumers-per-session", Some("256"),
        "Consumers (received tracks) one session may hold; over it: that request's error"),
    key!("limits.sessions_per_user", Some("CORELAY_SESSIONS_PER_USER"), "sessions-per-user", Some("16"),
        "Sessions of one userId in one media room; the room dialects keep one per user (a newer session replaces the older), so this counts WHIP/WHEP resources; over it: 429"),
    key!("limits.members_per_room", Some("CORELAY_MEMBERS_PER_ROOM"), "members-per-room", Some("1000"),
        "Sessions in one room (media rooms and relay rooms); one more is refused with an error naming this setting"),
    key!("limits.rooms_per_shard", Some("CORELAY_ROOMS_PER_SHARD"), "rooms-per-shard", Some("10000"),
        "Rooms one shard holds (media rooms and relay rooms, each); a session that would open one more is refused"),
    key!("limits.encodings_per_request", Some("CORELAY_ENCODINGS_PER_REQUEST"), "encodings-per-request", Some("8"),
        "Entries of rtpParameters.encodings in one produce"),
    key!("limits.codecs_per_request", Some("CORELAY_CODECS_PER_REQUEST"), "codecs-per-request", Some("64"),
        "Entries of a codec list in one request (rtpParameters.codecs, rtpCapabilities.codecs) and of each codec's rtcpFeedback"),
    key!("limits.header_extensions_per_request", Some("CORELAY_HEADER_EXTENSIONS_PER_REQUEST"), "header-extensions-per-request", Some("32"),
        "Entries of rtpParameters.headerExtensions in one produce (each id 1-255, RFC 8285, used once)"),
    key!("limits.media_sections_per_offer", Some("CORELAY_MEDIA_SECTIONS_PER_OFFER"), "media-sections-per-offer", Some("64"),
        "Media sections (m= lines) of one SDP offer or answer (WHIP, WHEP, /pubsub, /connect)"),
    key!("limits.max_string_bytes", Some("CORELAY_MAX_STRING_BYTES"), "max-string-bytes", Some("512"),
        "Longest string a client may give: a CNAME, mid, rid, MIME type, codec parameters (fmtp), header extension URI, DTLS fingerprint, ICE candidate, or one line of an SDP document"),
    key!("limits.connections_per_ip", Some("CORELAY_CONNECTIONS_PER_IP"), "connections-per-ip", Some("256"),
        "TCP connections one client address may hold open at once, counted over every shard (loopback too); one more gets 429 and is closed; 0 = no cap"),
    key!("limits.sessions_per_ip_per_s", Some("CORELAY_SESSIONS_PER_IP_PER_S"), "sessions-per-ip-per-s", Some("20"),
        "New sessions (WebSocket upgrades, WHIP/WHEP POSTs, new SockJS sessions) one client address may open per second on average; over it (and the burst): 429 with Retry-After; 0 = no limit"),
    key!("limits.sessions_per_ip_burst", Some("CORELAY_SESSIONS_PER_IP_BURST"), "sessions-per-ip-burst", Some("200"),
        "New sessions one client address may open at once above limits.sessions_per_ip_per_s"),
    key!("limits.sessions_per_token_per_s", Some("CORELAY_SESSIONS_PER_TOKEN_PER_S"), "sessions-per-token-per-s", Some("5"),
        "New sessions one token subject (its userId and room) may open per second on average; over it (and the burst): 429 with Retry-After; 0 = no limit"),
    key!("limits.sessions_per_token_burst", Some("CORELAY_SESSIONS_PER_TOKEN_BURST"), "sessions-per-token-burst", Some("20"),
        "New sessions one token subject may open at once above limits.sessions_per_token_per_s"),
    key!("tls.cert", Some("CORELAY_TLS_CERT"), "tls-cert", None,
        "PEM certificate chain; with tls.key, the HTTP port speaks HTTPS/WSS only"),
    key!("tls.key", Some("CORELAY_TLS_KEY"), "tls-key", None,
        "PEM private key for tls.cert"),
    key!("log.level", Some("RUST_LOG"), "log-level", Some("info"),
        "Log filter (tracing EnvFilter syntax, e.g. info or corelay=debug)"),
    key!("log.format", Some("CORELAY_LOG_FORMAT"), "log-format", Some("text"),
        "Log format: text or json"),
    key!("log.file", Some("CORELAY_LOG_FILE"), "log-file", None,
        "Also write logs to this file, rotated daily (FILE.YYYY-MM-DD); unset = stdout only"),
];

/// Environment variables of the original systems' deploy files (PROTOCOLS.md section 6)
/// that corelay does not act on yet, with what they would do there.
pub const NOT_ACTED_ON: &[(&str, &str)] = &[
    ("CLUSTER_MODE", "Rheomesh cluster mode"),
    ("REDIS_URL", "Rheomesh cluster registry"),
    ("NODE_ID", "Rheomesh cluster node id"),
    ("NATS", "Beep audio bites"),
];

/// The one start-up warning line for those of [`NOT_ACTED_ON`] that are set (non-empty),
/// or `None` when none is.
pub fn not_acted_on_warning(lookup: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set: Vec<String> = NOT_ACTED_ON
        .iter()
        .filter(|(var, _)| lookup(var).is_some_and(|v| !v.is_empty()))
        .map(|(var, what)| format!("{var} ({what})"))
        .collect();
    (!set.is_empty()).then(|| {
        format!(
            "environment variables from the original deploy files are set but corelay does \
             not act on them yet, so they are ignored: {}; corelay runs as one node (no \
             cluster, no NATS publishing)",
            set.join(", ")
        )
    })
}

/// Where a value came from; named in validation errors so an operator finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(&'static str),
    Flag(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => write!(f, "the default"),
            Source::File(p) => write!(f, "config file {}", p.display()),
            Source::Env(v) => write!(f, "environment variable {v}"),
            Source::Flag(fl) => write!(f, "flag --{fl}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("unknown key `{key}` in config file {path} (known keys: {known})")]
    UnknownKey {
        key: String,
        path: PathBuf,
        known: String,
    },
    #[error("invalid value {value:?} for `{key}` (from {origin}): expected {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        origin: Source,
        expected: String,
    },
}

/// The raw settings after merging, before typing: key -> (text, source).
#[derive(Default, Debug)]
pub struct Layers {
    values: BTreeMap<&'static str, (String, Source)>,
}

impl Layers {
    /// Starts from the embedded defaults.
    pub fn with_defaults() -> Self {
        let mut layers = Layers::default();
        for spec in KEYS {
            if let Some(d) = spec.default {
                layers
                    .values
                    .insert(spec.key, (d.to_string(), Source::Default));
            }
        }
        layers
    }

    /// Applies a TOML file: sections of scalar keys, e.g. `[udp] port_base = 40000`.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        self.apply_toml(&text, path)
    }

    pub fn apply_toml(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        let mut flat = Vec::new();
        flatten("", &table, &mut flat);
        for (key, value) in flat {
            let spec =
                KEYS.iter()
                    .find(|s| s.key == key)
                    .ok_or_else(|| ConfigError::UnknownKey {
                        key: key.clone(),
                        path: path.to_path_buf(),
                        known: KEYS.iter().map(|s| s.key).collect::<Vec<_>>().join(", "),
                    })?;
            self.values
                .insert(spec.key, (value, Source::File(path.to_path_buf())));
        }
        Ok(())
    }

    /// Applies environment variables through a lookup (the real environment in `main`,
    /// a map in tests).
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) {
        for spec in KEYS {
            if let Some(var) = spec.env {
                if let Some(v) = lookup(var) {
                    if !v.is_empty() {
                        self.values.insert(spec.key, (v, Source::Env(var)));
                    }
                }
            }
        }
    }

    /// Applies flags given on the command line, as (key, value) pairs.
    pub fn apply_flags<'a>(&mut self, flags: impl IntoIterator<Item = (&'a str, String)>) {
        for (key, value) in flags {
            if let Some(spec) = KEYS.iter().find(|s| s.key == key) {
                self.values
                    .insert(spec.key, (value, Source::Flag(spec.flag)));
            }
        }
    }

    fn raw(&self, key: &'static str) -> Option<&(String, Source)> {
        self.values.get(key)
    }

    fn parse<T>(
        &self,
        key: &'static str,
        expected: &str,
        f: impl Fn(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.raw(key) {
            None => Ok(None),
            Some((text, source)) => f(text.trim())
                .map(Some)
                .ok_or_else(|| ConfigError::Invalid {
                    key,
                    value: text.clone(),
                    origin: source.clone(),
                    expected: expected.to_string(),
                }),
        }
    }

    fn required<T>(
        &self,
        key: &'static str,
        expected: &str,
        f: impl Fn(&str) -> Option<T>,
    ) -> Result<T, ConfigError> {
        Ok(self
            .parse(key, expected, f)?
            .expect("every required key has an embedded default"))
    }

    /// Types and validates every setting.
    pub fn build(&self) -> Result<Config, ConfigError> {
        let mut listen: SocketAddr = self.required(
            "server.listen",
            "host:port (e.g. 0.0.0.0:3001), or :port for every interface (e.g. :80)",
            parse_listen,
        )?;
        if let Some(host) = self.parse(
            "server.host",
            "an IP address (e.g. 0.0.0.0 or ::) or a host name that resolves",
            parse_host,
        )? {
            listen.set_ip(host);
        }
        if let Some(port) = self.parse("server.port", "a TCP port 0-65535", |s| {
            s.parse::<u16>().ok()
        })? {
            listen.set_port(port);
        }
        let shards = self.required(
            "server.shards",
            "a shard count 0-1024 (0 = one per core)",
            |s| s.parse::<usize>().ok().filter(|n| *n <= 1024),
        )?;
        let millis = |key, lo: u64, hi: u64| {
            self.required(key, &format!("milliseconds between {lo} and {hi}"), |s| {
                s.parse::<u64>()
                    .ok()
                    .filter(|n| (lo..=hi).contains(n))
                    .map(Duration::from_millis)
            })
        };
        let health_timeout = millis("server.health_timeout_ms", 10, 60_000)?;
        let head_timeout = millis("server.head_timeout_ms", 100, 600_000)?;
        let shutdown_grace = millis("server.shutdown_grace_ms", 0, 60_000)?;
        let udp_port_base = self.required("udp.port_base", "a UDP port 0-65535", |s| {
            s.parse::<u16>().ok()
        })?;
        let announced_ip = self.required("udp.announced_ip", "an IP address", |s| {
            s.parse::<IpAddr>().ok()
        })?;
        let buffer = |key| {
            self.required(key, "bytes between 65536 and 1073741824", |s| {
                s.parse::<usize>()
                    .ok()
                    .filter(|n| (65_536..=1 << 30).contains(n))
            })
        };
        let udp_recv_buffer = buffer("udp.recv_buffer")?;
        let udp_send_buffer = buffer("udp.send_buffer")?;
        let jwt_secret = self.parse("auth.jwt_secret", "a secret of at least 16 bytes", |s| {
            (s.len() >= 16).then(|| s.to_string())
        })?;
        let login = self.parse("auth.login", "true or false", parse_bool)?;
        let require_exp = self.required("auth.require_exp", "true or false", parse_bool)?;
        let token_ttl = self
            .required("auth.token_ttl_s", "seconds between 60 and 2592000", |s| {
                s.parse::<u64>()
                    .ok()
                    .filter(|n| (60..=2_592_000).contains(n))
            })
            .map(Duration::from_secs)?;
        let max_token_ttl = self
            .parse(
                "auth.max_token_ttl_s",
                "seconds between 60 and 31536000",
                |s| {
                    s.parse::<u64>()
                        .ok()
                        .filter(|n| (60..=31_536_000).contains(n))
                },
            )?
            .map(Duration::from_secs);
        if let Some(max) = max_token_ttl {
            if token_ttl > max {
                let (value, origin) = self.raw("auth.token_ttl_s").cloned().expect("defaulted");
                return Err(ConfigError::Invalid {
                    key: "auth.token_ttl_s",
                    value,
                    origin,
                    expected: format!(
                        "at most auth.max_token_ttl_s ({} s): tokens minted by POST /login \
                         must pass it",
                        max.as_secs()
                    ),
                });
            }
        }
        let admin_token =
            self.parse("server.admin_token", "a secret of at least 16 bytes", |s| {
                (s.len() >= 16).then(|| s.to_string())
            })?;
        let p2p_allow_anonymous =
            self.required("p2p.allow_anonymous", "true or false", parse_bool)?;
        let trust_user_claim_header =
            self.required("auth.trust_user_claim_header", "true or false", parse_bool)?;
        let permissions_url = self.parse(
            "permissions.url",
            "an http:// or https:// URL with a host and no user info, query or fragment \
             (e.g. http://perms:8080/api), or host:port",
            permissions_base,
        )?;
        let permissions_timeout = millis("permissions.timeout_ms", 10, 60_000)?;
        let max_message_bytes = self.required(
            "limits.max_message_bytes",
            "bytes between 1024 and 67108864",
            |s| {
                s.parse::<usize>()
                    .ok()
                    .filter(|n| (1024..=64 << 20).contains(n))
            },
        )?;
        let count = |key, lo: u64, hi: u64| {
            self.required(key, &format!("a number between {lo} and {hi}"), |s| {
                s.parse::<u64>().ok().filter(|n| (lo..=hi).contains(n))
            })
        };
        let limits = Limits {
            session_queue_bytes: count("limits.session_queue_bytes", 1024, 1 << 30)? as usize,
            session_lag: millis("limits.session_lag_ms", 10, 600_000)?,
            messages_per_s: count("limits.messages_per_s", 1, 1_000_000)? as u32,
            message_burst: count("limits.message_burst", 1, 10_000_000)? as u32,
            bytes_per_s: count("limits.bytes_per_s", 1024, 1 << 32)? as usize,
            write_timeout: millis("limits.write_timeout_ms", 10, 600_000)?,
            idle_timeout: millis("limits.idle_timeout_ms", 100, 3_600_000)?,
            auth_timeout: millis("limits.auth_timeout_ms", 10, 600_000)?,
            unauthenticated_message_bytes: count(
                "limits.unauthenticated_message_bytes",
                256,
                64 << 20,
            )? as usize,
            request_buffer_bytes: count("limits.request_buffer_bytes", 1024, 1 << 40)? as usize,
            connect_timeout: millis("limits.connect_timeout_ms", 100, 3_600_000)?,
            sources_per_transport: count("limits.sources_per_transport", 1, 64)? as usize,
            unbound_packets_per_s: count("limits.unbound_packets_per_s", 0, 1_000_000)? as u32,
            transports_per_session: count("limits.transports_per_session", 1, 1_000_000)? as usize,
            producers_per_session: count("limits.producers_per_session", 1, 1_000_000)? as usize,
            producers_per_transport: count("limits.producers_per_transport", 1, 1_000_000)?
                as usize,
            consumers_per_session: count("limits.consumers_per_session", 1, 1_000_000)? as usize,
            sessions_per_user: count("limits.sessions_per_user", 1, 1_000_000)? as usize,
            members_per_room: count("limits.members_per_room", 1, 1_000_000)? as usize,
            rooms_per_shard: count("limits.rooms_per_shard", 1, 1_000_000)? as usize,
            encodings_per_request: count("limits.encodings_per_request", 1, 1024)? as usize,
            codecs_per_request: count("limits.codecs_per_request", 1, 4096)? as usize,
            header_extensions_per_request: count("limits.header_extensions_per_request", 1, 255)?
                as usize,
            media_sections_per_offer: count("limits.media_sections_per_offer", 1, 4096)? as usize,
            max_string_bytes: count("limits.max_string_bytes", 64, 1 << 20)? as usize,
            connections_per_ip: count("limits.connections_per_ip", 0, 10_000_000)? as u32,
            sessions_per_ip_per_s: count("limits.sessions_per_ip_per_s", 0, 1_000_000)? as u32,
            sessions_per_ip_burst: count("limits.sessions_per_ip_burst", 1, 10_000_000)? as u32,
            sessions_per_token_per_s: count("limits.sessions_per_token_per_s", 0, 1_000_000)?
                as u32,
            sessions_per_token_burst: count("limits.sessions_per_token_burst", 1, 10_000_000)?
                as u32,
        };
        let log_level = self.required(
            "log.level",
            "a tracing filter such as info or corelay=debug",
            |s| {
                tracing_subscriber::EnvFilter::try_new(s)
                    .ok()
                    .map(|_| s.to_string())
            },
        )?;
        let log_format = self.required("log.format", "text or json", |s| match s {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        })?;
        // A path that names a file: the appender writes FILE.YYYY-MM-DD beside it.
        let log_file = self.parse(
            "log.file",
            "a file path such as /var/log/corelay/corelay.log",
            |s| {
                let path = PathBuf::from(s);
                (!s.ends_with('/') && path.file_name().is_some()).then_some(path)
            },
        )?;
        let tls = match (self.raw("tls.cert"), self.raw("tls.key")) {
            (None, None) => None,
            (Some((cert, _)), Some((key, _))) => Some(TlsFiles {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            }),
            (Some((v, origin)), None) | (None, Some((v, origin))) => {
                return Err(ConfigError::Invalid {
                    key: if self.raw("tls.cert").is_some() {
                        "tls.cert"
                    } else {
                        "tls.key"
                    },
                    value: v.clone(),
                    origin: origin.clone(),
                    expected: "tls.cert and tls.key set together".into(),
                })
            }
        };
        let dev_mode = jwt_secret.is_none();
        Ok(Config {
            tls,
            listen,
            shards,
            health_timeout,
            head_timeout,
            shutdown_grace,
            udp_port_base,
            announced_ip,
            udp_recv_buffer,
            udp_send_buffer,
            login_enabled: login.unwrap_or(dev_mode),
            require_exp,
            jwt_secret: jwt_secret.unwrap_or_default(),
            dev_mode,
            token_ttl,
            max_token_ttl,
            admin_token,
            p2p_allow_anonymous,
            trust_user_claim_header,
            permissions_url,
            permissions_timeout,
            max_message_bytes,
            limits,
            log_level,
            log_format,
            log_file,
        })
    }
}

/// A listen address: `host:port`, where host is an IP address (IPv6 in brackets) or a
/// name that resolves, or Go's `:port` meaning every interface (`0.0.0.0:port`).
fn parse_listen(s: &str) -> Option<SocketAddr> {
    if let Some(port) = s.strip_prefix(':') {
        let port = port.parse::<u16>().ok()?;
        return Some(SocketAddr::new(
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            port,
        ));
    }
    if let Ok(addr) = s.parse() {
        return Some(addr);
    }
    let (host, port) = s.rsplit_once(':')?;
    Some(SocketAddr::new(parse_host(host)?, port.parse().ok()?))
}

/// A listen host: an IP address (IPv6 optionally in brackets), or a host name resolved by
/// the system resolver (an IPv4 address preferred), as `--host` of the original servers
/// takes it.
fn parse_host(s: &str) -> Option<IpAddr> {
    use std::net::ToSocketAddrs;
    let bare = s
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(ip) = bare.parse() {
        return Some(ip);
    }
    let name_like = !bare.is_empty()
        && bare.len() <= 253
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !name_like {
        return None;
    }
    let addrs: Vec<IpAddr> = (bare, 0).to_socket_addrs().ok()?.map(|a| a.ip()).collect();
    addrs
        .iter()
        .find(|ip| ip.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut Vec<(String, String)>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out),
            toml::Value::String(s) => out.push((key, s.clone())),
            other => out.push((key, other.to_string())),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Certificate and key files for HTTPS/WSS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The validated configuration every shard shares (read-only).
#[derive(Clone, Debug)]
pub struct Config {
    /// When set, the HTTP port speaks TLS only.
    pub tls: Option<TlsFiles>,
    pub listen: SocketAddr,
    /// Requested shard count; 0 means one per available core.
    pub shards: usize,
    pub health_timeout: Duration,
    pub head_timeout: Duration,
    pub shutdown_grace: Duration,
    pub udp_port_base: u16,
    pub announced_ip: IpAddr,
    pub udp_recv_buffer: usize,
    pub udp_send_buffer: usize,
    /// The HS256 secret; in dev mode the caller fills in a random one.
    pub jwt_secret: String,
    pub dev_mode: bool,
    pub login_enabled: bool,
    /// Refuse tokens without `exp`.
    pub require_exp: bool,
    pub token_ttl: Duration,
    /// Tokens whose `exp` is further than this from now are refused (`auth.max_token_ttl_s`).
    pub max_token_ttl: Option<Duration>,
    /// The operator's secret for `/latency?reset=true` (`server.admin_token`).
    pub admin_token: Option<String>,
    pub p2p_allow_anonymous: bool,
    /// Take the identity of the one-shot dialect from the `X-User-Claim` header.
    pub trust_user_claim_header: bool,
    /// Base URL of the permission service (normalized: scheme, no trailing slash); `None`
    /// allows every `POST /join`.
    pub permissions_url: Option<String>,
    pub permissions_timeout: Duration,
    pub max_message_bytes: usize,
    /// What one client may cost the others (the `limits.*` settings).
    pub limits: Limits,
    pub log_level: String,
    pub log_format: LogFormat,
    /// Extra log destination, rotated daily; stdout always gets the logs too.
    pub log_file: Option<PathBuf>,
}

/// The `limits.*` settings beyond `max_message_bytes`: what one client may hold or send.
#[derive(Clone, Debug)]
pub struct Limits {
    pub session_queue_bytes: usize,
    pub session_lag: Duration,
    pub messages_per_s: u32,
    pub message_burst: u32,
    pub bytes_per_s: usize,
    pub write_timeout: Duration,
    pub idle_timeout: Duration,
    pub auth_timeout: Duration,
    pub unauthenticated_message_bytes: usize,
    pub request_buffer_bytes: usize,
    /// A transport not connected this long after it was made is released.
    pub connect_timeout: Duration,
    /// Client addresses one transport may have bound.
    pub sources_per_transport: usize,
    /// Datagrams per second from one source not bound to a transport (0: no limit).
    pub unbound_packets_per_s: u32,
    pub transports_per_session: usize,
    pub producers_per_session: usize,
    pub producers_per_transport: usize,
    pub consumers_per_session: usize,
    pub sessions_per_user: usize,
    pub members_per_room: usize,
    pub rooms_per_shard: usize,
    pub encodings_per_request: usize,
    pub codecs_per_request: usize,
    pub header_extensions_per_request: usize,
    pub media_sections_per_offer: usize,
    pub max_string_bytes: usize,
    /// Open TCP connections per client address over every shard; 0 = no cap.
    pub connections_per_ip: u32,
    /// New sessions per second per client address (0 = no limit), and the burst.
    pub sessions_per_ip_per_s: u32,
    pub sessions_per_ip_burst: u32,
    /// New sessions per second per token subject (0 = no limit), and the burst.
    pub sessions_per_token_per_s: u32,
    pub sessions_per_token_burst: u32,
}

impl Limits {
    /// The media core's share of these limits.
    pub fn transport_limits(&self) -> crate::sfu::TransportLimits {
        crate::sfu::TransportLimits {
            connect_timeout: self.connect_timeout,
            sources_per_transport: self.sources_per_transport,
            unbound_packets_per_s: self.unbound_packets_per_s,
        }
    }

    /// The caps of the media core (and the relay rooms), as the plain values it takes.
    pub fn caps(&self) -> crate::sfu::Caps {
        crate::sfu::Caps {
            transports_per_session: self.transports_per_session,
            producers_per_session: self.producers_per_session,
            producers_per_transport: self.producers_per_transport,
            consumers_per_session: self.consumers_per_session,
            sessions_per_user: self.sessions_per_user,
            members_per_room: self.members_per_room,
            rooms_per_shard: self.rooms_per_shard,
            encodings_per_request: self.encodings_per_request,
            codecs_per_request: self.codecs_per_request,
            header_extensions_per_request: self.header_extensions_per_request,
            media_sections_per_offer: self.media_sections_per_offer,
            max_string_bytes: self.max_string_bytes,
        }
    }
}

impl Config {
    /// Defaults only; what `corelay` with no arguments and no environment runs with.
    pub fn defaults() -> Config {
        Layers::with_defaults()
            .build()
            .expect("embedded defaults are valid")
    }
}

/// Renders the configuration table for the README from [`KEYS`].
pub fn markdown_table() -> String {
    let mut out =
        String::from("| file key | env var | flag | default | meaning |\n|---|---|---|---|---|\n");
    for s in KEYS {
        out.push_str(&format!(
            "| `{}` | {} | `--{}` | {} | {} |\n",
            s.key,
            s.env
                .map(|e| format!("`{e}`"))
                .unwrap_or_else(|| "-".into()),
            s.flag,
            s.default
                .map(|d| format!("`{d}`"))
                .unwrap_or_else(|| "unset".into()),
            s.help
        ));
    }
    out
}

/// Validates and normalizes a `permissions.url` value: an `http://` or `https://` URL with
/// a host (and maybe a port and a base path), or a bare `host:port`, which means
/// `http://host:port`. No user info, query or fragment. The result has no trailing slash.
pub fn permissions_base(value: &str) -> Option<String> {
    let value = value.trim();
    let full = if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    };
    let url = url::Url::parse(&full).ok()?;
    let ok = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none();
    ok.then(|| url.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn defaults_make_a_dev_server() {
        let c = Config::defaults();
        assert_eq!(c.listen, "127.0.0.1:3001".parse().unwrap());
        assert_eq!(c.udp_port_base, 40000);
        assert_eq!(c.announced_ip.to_string(), "127.0.0.1");
        assert_eq!(c.shards, 0);
        assert!(c.dev_mode);
        assert!(c.login_enabled);
        assert_eq!(c.udp_recv_buffer, 4 << 20);
    }

    #[test]
    fn file_then_env_then_flags() {
        let mut l = Layers::with_defaults();
        l.apply_toml(
            "[udp]\nport_base = 41000\nannounced_ip = \"10.0.0.1\"\n[server]\nshards = 3\n",
            Path::new("x.toml"),
        )
        .unwrap();
        l.apply_env(env(&[("CORELAY_UDP_PORT_BASE", "42000"), ("PORT", "4000")]));
        l.apply_flags([("udp.port_base", "43000".to_string())]);
        let c = l.build().unwrap();
        assert_eq!(c.udp_port_base, 43000, "flag beats env beats file");
        assert_eq!(c.announced_ip.to_string(), "10.0.0.1", "file beats default");
        assert_eq!(c.shards, 3);
        assert_eq!(c.listen.port(), 4000, "PORT overrides the listen port");
    }

    #[test]
    fn secret_turns_dev_mode_off() {
        let mut l = Layers::with_defaults();
        l.apply_env(env(&[("JWT_SECRET", "0123456789abcdef-secret")]));
        let c = l.build().unwrap();
        assert!(!c.dev_mode);
        assert!(
            !c.login_enabled,
            "login is off outside dev mode unless configured"
        );
    }

    #[test]
    fn bad_value_names_key_value_source_and_allowed() {
        let mut l = Layers::with_defaults();
        l.apply_env(env(&[("CORELAY_UDP_PORT_BASE", "70000")]));
        let err = l.build().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("udp.port_base"), "{text}");
        assert!(text.contains("70000"), "{text}");
        assert!(text.contains("CORELAY_UDP_PORT_BASE"), "{text}");
        assert!(text.contains("0-65535"), "{text}");
    }

    #[test]
    fn short_secret_and_bad_listen_are_rejected() {
        let mut l = Layers::with_defaults();
        l.apply_flags([("auth.jwt_secret", "short".to_string())]);
        assert!(matches!(
            l.build(),
            Err(ConfigError::Invalid {
                key: "auth.jwt_secret",
                ..
            })
        ));
        let mut l = Layers::with_defaults();
        l.apply_flags([("server.listen", "nowhere".to_string())]);
        let err = l.build().unwrap_err();
        assert!(err.to_string().contains("--listen"), "{err}");
    }

    #[test]
    fn transport_limits_have_defaults_and_ranges() {
        let c = Config::defaults();
        assert_eq!(
            c.limits.transport_limits(),
            crate::sfu::TransportLimits::default(),
            "the table's defaults are the media core's"
        );
        let mut l = Layers::with_defaults();
        l.apply_env(env(&[
            ("CORELAY_CONNECT_TIMEOUT_MS", "1500"),
            ("CORELAY_SOURCES_PER_TRANSPORT", "2"),
            ("CORELAY_UNBOUND_PACKETS_PER_S", "0"),
        ]));
        let t = l.build().unwrap().limits.transport_limits();
        assert_eq!(t.connect_timeout, Duration::from_millis(1500));
        assert_eq!(t.sources_per_transport, 2);
        assert_eq!(t.unbound_packets_per_s, 0);
        for (key, bad) in [
            ("limits.connect_timeout_ms", "10"),
            ("limits.sources_per_transport", "0"),
            ("limits.sources_per_transport", "65"),
            ("limits.unbound_packets_per_s", "-1"),
        ] {
            let mut l = Layers::with_defaults();
            l.apply_flags([(key, bad.to_string())]);
            let err = l.build().unwrap_err().to_string();
            assert!(err.contains(key), "{key}={bad}: {err}");
        }
    }

    #[test]
    fn tls_needs_cert_and_key_together() {
        let mut l = Layers::with_defaults();
        l.apply_flags([("tls.cert", "/x/cert.pem".to_string())]);
        let err = l.build().unwrap_err();
        assert!(err.to_string().contains("together"), "{err}");
        l.apply_env(env(&[("CORELAY_TLS_KEY", "/x/key.pem")]));
        let c = l.build().unwrap();
        assert_eq!(c.tls.unwrap().key, PathBuf::from("/x/key.pem"));
    }

    #[test]
    fn unknown_file_key_is_an_error() {
        let mut l = Layers::with_defaults();
        let err = l
            .apply_toml("[udp]\nport_bsae = 1\n", Path::new("c.toml"))
            .unwrap_err();
        assert!(err.to_string().contains("udp.port_bsae"), "{err}");
    }

    #[test]
    fn log_file_is_unset_by_default_and_set_by_each_layer() {
        assert_eq!(Config::defaults().log_file, None);
        let mut l = Layers::with_defaults();
        l.apply_toml(
            "[log]\nfile = \"/var/log/corelay/a.log\"\n",
            Path::new("c.toml"),
        )
        .unwrap();
        assert_eq!(
            l.build().unwrap().log_file,
            Some(PathBuf::from("/var/log/corelay/a.log"))
        );
        l.apply_env(env(&[("CORELAY_LOG_FILE", "/tmp/b.log")]));
        assert_eq!(
            l.build().unwrap().log_file,
            Some(PathBuf::from("/tmp/b.log"))
        );
        l.apply_flags([("log.file", "c.log".to_string())]);
        assert_eq!(l.build().unwrap().log_file, Some(PathBuf::from("c.log")));
        let spec = KEYS.iter().find(|s| s.key == "log.file").unwrap();
        assert_eq!(
            (spec.env, spec.flag, spec.default),
            (Some("CORELAY_LOG_FILE"), "log-file", None)
        );
    }

    #[test]
    fn log_file_must_name_a_file() {
        let mut l = Layers::with_defaults();
        l.apply_flags([("log.file", "/var/log/corelay/".to_string())]);
        let err = l.build().unwrap_err();
        assert!(err.to_string().contains("log.file"), "{err}");
        assert!(err.to_string().contains("--log-file"), "{err}");
    }

    #[test]
    fn permission_and_claim_keys_default_to_open_and_untrusted() {
        let c = Config::defaults();
        assert_eq!(c.permissions_url, None);
        assert_eq!(c.permissions_timeout, Duration::from_millis(2000));
        assert!(!c.trust_user_claim_header);
        for (key, env, flag) in [
            ("permissions.url", "PERMISSIONS_HOST", "permissions-url"),
            (
                "permissions.timeout_ms",
                "CORELAY_PERMISSIONS_TIMEOUT_MS",
                "permissions-timeout-ms",
            ),
            (
                "auth.trust_user_claim_header",
                "CORELAY_TRUST_USER_CLAIM_HEADER",
                "trust-user-claim-header",
            ),
        ] {
            let spec = KEYS.iter().find(|s| s.key == key).unwrap();
            assert_eq!((spec.env, spec.flag), (Some(env), flag), "{key}");
        }
    }

    #[test]
    fn permission_and_claim_keys_are_set_by_each_layer() {
        let mut l = Layers::with_defaults();
        l.apply_toml(
            "[permissions]\nurl = \"https://perms.example/api/\"\ntimeout_ms = 750\n\
             [auth]\ntrust_user_claim_header = true\n",
            Path::new("c.toml"),
        )
        .unwrap();
        let c = l.build().unwrap();
        assert_eq!(
            c.permissions_url.as_deref(),
            Some("https://perms.example/api")
        );
        assert_eq!(c.permissions_timeout, Duration::from_millis(750));
        assert!(c.trust_user_claim_header);
        // A bare host:port from the environment means plain http.
        l.apply_env(env(&[
            ("PERMISSIONS_HOST", "perms:8080"),
            ("CORELAY_PERMISSIONS_TIMEOUT_MS", "500"),
            ("CORELAY_TRUST_USER_CLAIM_HEADER", "false"),
        ]));
        let c = l.build().unwrap();
        assert_eq!(c.permissions_url.as_deref(), Some("http://perms:8080"));
        assert_eq!(c.permissions_timeout, Duration::from_millis(500));
        assert!(!c.trust_user_claim_header);
        l.apply_flags([
            ("permissions.url", "http://10.0.0.5:9000".to_string()),
            ("auth.trust_user_claim_header", "yes".to_string()),
        ]);
        let c = l.build().unwrap();
        assert_eq!(c.permissions_url.as_deref(), Some("http://10.0.0.5:9000"));
        assert!(c.trust_user_claim_header);
    }

    #[test]
    fn bad_permission_and_claim_values_name_the_key() {
        for (key, value, source) in [
            ("permissions.url", "ftp://perms", "--permissions-url"),
            ("permissions.url", "http://perms/?x=1", "--permissions-url"),
            ("permissions.url", "perms:notaport", "--permissions-url"),
            ("permissions.timeout_ms", "0", "--permissions-timeout-ms"),
            ("permissions.timeout_ms", "soon", "--permissions-timeout-ms"),
            (
                "auth.trust_user_claim_header",
                "maybe",
                "--trust-user-claim-header",
            ),
        ] {
            let mut l = Layers::with_defaults();
            l.apply_flags([(key, value.to_string())]);
            let err = l.build().unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains(value) && err.contains(source),
                "{err}"
            );
        }
        let mut l = Layers::with_defaults();
        l.apply_env(env(&[("PERMISSIONS_HOST", "gopher://x")]));
        let err = l.build().unwrap_err().to_string();
        assert!(
            err.contains("PERMISSIONS_HOST") && err.contains("http://"),
            "{err}"
        );
    }

    #[test]
    fn go_style_listen_means_every_interface() {
        let mut l = Layers::with_defaults();
        l.apply_env(env(&[("LISTEN", ":80")]));
        assert_eq!(l.build().unwrap().listen, "0.0.0.0:80".parse().unwrap());
        let mut l = Layers::with_defaults();
        l.apply_flags([("server.listen", "[::1]:4000".to_string())]);
        assert_eq!(l.build().unwrap().listen, "[::1]:4000".parse().unwrap());
        for bad in [":", ":http", ":70000", "3001", "::80", "host name:80"] {
            let mut l = Layers::with_defaults();
            l.apply_env(env(&[("LISTEN", bad)]));
            let err = l.build().unwrap_err().to_string();
            assert!(
                err.contains("server.listen") && err.contains("LISTEN") && err.contains(":port"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn host_overrides_the_listen_host_and_keeps_its_port() {
        // Rheomesh's run line: `--host 0.0.0.0`; the port stays server.listen's or PORT.
        let mut l = Layers::with_defaults();
        l.apply_flags([("server.host", "0.0.0.0".to_string())]);
        assert_eq!(l.build().unwrap().listen, "0.0.0.0:3001".parse().unwrap());
        let mut l = Layers::with_defaults();
        l.apply_env(env(&[("HOST", "0.0.0.0"), ("PORT", "9000")]));
        assert_eq!(l.build().unwrap().listen, "0.0.0.0:9000".parse().unwrap());
        // The flag beats the variable; with LISTEN=:80 the host is replaced, the port kept.
        let mut l = Layers::with_defaults();
        l.apply_env(env(&[("HOST", "0.0.0.0"), ("LISTEN", ":80")]));
        l.apply_flags([("server.host", "::".to_string())]);
        assert_eq!(l.build().unwrap().listen, "[::]:80".parse().unwrap());
        let mut l = Layers::with_defaults();
        l.apply_flags([("server.host", "[::1]".to_string())]);
        assert_eq!(l.build().unwrap().listen, "[::1]:3001".parse().unwrap());
        // A name resolves (IPv4 preferred).
        let mut l = Layers::with_defaults();
        l.apply_env(env(&[("HOST", "localhost")]));
        assert!(l.build().unwrap().listen.ip().is_loopback());
        let spec = KEYS.iter().find(|s| s.key == "server.host").unwrap();
        assert_eq!(
            (spec.env, spec.flag, spec.default),
            (Some("HOST"), "host", None)
        );
    }

    #[test]
    fn a_bad_host_names_the_key_and_where_it_came_from() {
        for bad in ["not a host", "0.0.0.0:80", "[::1"] {
            let mut l = Layers::with_defaults();
            l.apply_env(env(&[("HOST", bad)]));
            let err = l.build().unwrap_err().to_string();
            assert!(
                err.contains("server.host") && err.contains("HOST") && err.contains(bad),
                "{err}"
            );
        }
        let mut l = Layers::with_defaults();
        l.apply_flags([("server.host", "".to_string())]);
        let err = l.build().unwrap_err().to_string();
        assert!(err.contains("--host"), "{err}");
    }

    #[test]
    fn require_exp_is_on_by_default_and_set_by_each_layer() {
        assert!(Config::defaults().require_exp);
        let spec = KEYS.iter().find(|s| s.key == "auth.require_exp").unwrap();
        assert_eq!(
            (spec.env, spec.flag, spec.default),
            (
                Some("CORELAY_AUTH_REQUIRE_EXP"),
                "auth-require-exp",
                Some("true")
            )
        );
        let mut l = Layers::with_defaults();
        l.apply_toml("[auth]\nrequire_exp = false\n", Path::new("c.toml"))
            .unwrap();
        assert!(!l.build().unwrap().require_exp);
        l.apply_env(env(&[("CORELAY_AUTH_REQUIRE_EXP", "true")]));
        assert!(l.build().unwrap().require_exp);
        l.apply_flags([("auth.require_exp", "off".to_string())]);
        assert!(!l.build().unwrap().require_exp);
        l.apply_flags([("auth.require_exp", "sometimes".to_string())]);
        let err = l.build().unwrap_err().to_string();
        assert!(
            err.contains("auth.require_exp") && err.contains("--auth-require-exp"),
            "{err}"
        );
    }

    #[test]
    fn hostile_client_limits_have_defaults_and_name_themselves_when_bad() {
        let c = Config::defaults();
        assert_eq!(c.limits.connections_per_ip, 256);
        assert_eq!(
            (
                c.limits.sessions_per_ip_per_s,
                c.limits.sessions_per_ip_burst
            ),
            (20, 200)
        );
        assert_eq!(
            (
                c.limits.sessions_per_token_per_s,
                c.limits.sessions_per_token_burst
            ),
            (5, 20)
        );
        assert_eq!((c.admin_token, c.max_token_ttl), (None, None));
        let mut l = Layers::with_defaults();
        l.apply_env(env(&[
            ("CORELAY_CONNECTIONS_PER_IP", "0"),
            ("CORELAY_ADMIN_TOKEN", "an-operator-secret-123"),
            ("CORELAY_MAX_TOKEN_TTL_S", "86400"),
        ]));
        let c = l.build().unwrap();
        assert_eq!(c.limits.connections_per_ip, 0, "0 = no cap");
        assert_eq!(c.admin_token.as_deref(), Some("an-operator-secret-123"));
        assert_eq!(c.max_token_ttl, Some(Duration::from_secs(86400)));
        for (key, value, flag) in [
            (
                "limits.sessions_per_ip_burst",
                "0",
                "--sessions-per-ip-burst",
            ),
            ("limits.connections_per_ip", "many", "--connections-per-ip"),
            ("server.admin_token", "short", "--admin-token"),
            ("auth.max_token_ttl_s", "10", "--max-token-ttl-s"),
        ] {
            let mut l = Layers::with_defaults();
            l.apply_flags([(key, value.to_string())]);
            let err = l.build().unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(flag), "{err}");
        }
        // Tokens minted by POST /login must pass the maximum.
        let mut l = Layers::with_defaults();
        l.apply_flags([("auth.max_token_ttl_s", "600".to_string())]);
        let err = l.build().unwrap_err().to_string();
        assert!(
            err.contains("auth.token_ttl_s") && err.contains("auth.max_token_ttl_s"),
            "{err}"
        );
        l.apply_flags([("auth.token_ttl_s", "600".to_string())]);
        assert!(l.build().is_ok());
    }

    #[test]
    fn the_not_acted_on_warning_names_exactly_the_variables_set() {
        assert_eq!(not_acted_on_warning(env(&[])), None);
        assert_eq!(
            not_acted_on_warning(env(&[("NATS", "")])),
            None,
            "empty = unset"
        );
        let w = not_acted_on_warning(env(&[
            ("NATS", "nats://localhost:4222"),
            ("REDIS_URL", "redis://r:6379"),
            ("PORT", "9000"),
        ]))
        .unwrap();
        assert!(w.contains("NATS") && w.contains("REDIS_URL"), "{w}");
        assert!(!w.contains("CLUSTER_MODE") && !w.contains("NODE_ID"), "{w}");
        assert!(!w.contains('\n'), "one line: {w}");
        assert!(w.contains("ignored"), "{w}");
        let all: Vec<(&str, &str)> = NOT_ACTED_ON.iter().map(|(v, _)| (*v, "x")).collect();
        let w = not_acted_on_warning(env(&all)).unwrap();
        for var in ["CLUSTER_MODE", "REDIS_URL", "NODE_ID", "NATS"] {
            assert!(w.contains(var), "{w}");
        }
        // None of them is a setting corelay reads.
        for (var, _) in NOT_ACTED_ON {
            assert!(KEYS.iter().all(|s| s.env != Some(var)), "{var}");
        }
    }

    #[test]
    fn resource_caps_default_to_the_media_cores_defaults_and_are_set_by_each_layer() {
        assert_eq!(
            Config::defaults().limits.caps(),
            crate::sfu::Caps::default()
        );
        let mut l = Layers::with_defaults();
        l.apply_toml(
            "[limits]\ntransports_per_session = 3\nmax_string_bytes = 100\n",
            Path::new("c.toml"),
        )
        .unwrap();
        l.apply_env(env(&[("CORELAY_MEMBERS_PER_ROOM", "5")]));
        l.apply_flags([("limits.media_sections_per_offer", "2".to_string())]);
        let caps = l.build().unwrap().limits.caps();
        assert_eq!(
            (
                caps.transports_per_session,
                caps.max_string_bytes,
                caps.members_per_room,
                caps.media_sections_per_offer
            ),
            (3, 100, 5, 2)
        );
        for (key, bad) in [
            ("limits.transports_per_session", "0"),
            ("limits.max_string_bytes", "10"),
            ("limits.header_extensions_per_request", "256"),
            ("limits.rooms_per_shard", "many"),
        ] {
            let mut l = Layers::with_defaults();
            l.apply_flags([(key, bad.to_string())]);
            let err = l.build().unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn table_lists_every_key() {
        let t = markdown_table();
        for s in KEYS {
            assert!(t.contains(s.key));
        }
    }

    #[test]
    fn permissions_urls_are_normalized() {
        let n = |s: &str| permissions_base(s);
        assert_eq!(n("perms:8080").as_deref(), Some("http://perms:8080"));
        assert_eq!(
            n("127.0.0.1:9000").as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(n("[::1]:9000").as_deref(), Some("http://[::1]:9000"));
        assert_eq!(
            n("https://auth.example/api/").as_deref(),
            Some("https://auth.example/api")
        );
        assert_eq!(n("http://perms").as_deref(), Some("http://perms"));
        for bad in [
            "",
            "ftp://perms",
            "http://",
            "http://u:p@perms",
            "http://perms/?a=1",
            "perms:x",
        ] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
    }
}
