//! The API documents the server serves about itself:
//!
//! - `GET /openapi.json`: OpenAPI 3.1 for every HTTP endpoint, generated with utoipa from
//!   the types below, which are the types the endpoints build their bodies from (so the
//!   document and the code cannot drift apart);
//! - `GET /docs`: a self-contained HTML page (no external script, style or font) that
//!   fetches `/openapi.json` and `/asyncapi` and renders them;
//! - `GET /asyncapi`: AsyncAPI 3.0 for the WebSocket dialects (`asyncapi.json` beside this
//!   file: one channel per endpoint, so a new dialect is a new set of channels, operations
//!   and messages).
//!
//! A new HTTP endpoint is documented by a `#[utoipa::path]` stub in [`paths`] listed in
//! [`ApiDoc`], with its body types deriving `ToSchema` here (or where they live).

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::Response;
use crate::auth::validate_id;
use crate::stats::ShardSnapshot;

/// The body of every error answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `not_found`, `method_not_allowed`, `bad_request`,
    /// `unauthorized`, `upgrade_required`, `payload_too_large`, ...
    #[schema(example = "bad_request")]
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: &str) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: message.to_string(),
            },
        }
    }
}

/// `GET /health`: the state of every shard.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthBody {
    pub status: HealthStatus,
    /// The server's version (Cargo package version).
    #[schema(example = "0.1.0")]
    pub version: &'static str,
    pub uptime_seconds: u64,
    /// One entry per shard, in shard order.
    pub shards: Vec<ShardHealth>,
}

/// `ok` when every shard answered within `server.health_timeout_ms`, else `degraded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Degraded,
}

/// A shard's figures, or why they are missing.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum ShardHealth {
    Answered(ShardSnapshot),
    Silent(ShardSilent),
}

/// A shard that did not answer within the deadline.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShardSilent {
    pub id: usize,
    #[schema(example = "no answer within the deadline")]
    pub error: String,
}

/// Ids of rooms, users and namespaces (`crate::auth::validate_id`).
pub const ID_PATTERN: &str = "^[A-Za-z0-9_.:-]{1,128}$";

/// `POST /login` request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginRequest {
    /// Display name: 1-64 characters, not all whitespace (space, tab, CR, LF, form
    /// feed); surrounding whitespace is trimmed.
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "[^\\t\\n\\f\\r ]",
        example = "Ann"
    )]
    pub user_name: String,
    /// Scope the token to this room (1-128 characters of `A-Z a-z 0-9 _ . : -`);
    /// omitted or null: any room.
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9_.:-]{1,128}$",
        example = "r1"
    )]
    pub room_id: Option<String>,
}

impl LoginRequest {
    /// Parses and validates a request body exactly as the schema above describes it; the
    /// error is the message of the 400 answer.
    pub fn from_body(body: &[u8]) -> Result<LoginRequest, String> {
        let expected = "expected {\"userName\", \"roomId\"}";
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("{expected}: {e}"))?;
        // serde would also take a struct from a JSON array: only an object is one.
        if !value.is_object() {
            return Err(format!("{expected}: the body must be a JSON object"));
        }
        let req: LoginRequest =
            serde_json::from_value(value).map_err(|e| format!("{expected}: {e}"))?;
        if req.user_name.chars().count() > 64 || req.name().is_empty() {
            return Err("userName must be 1-64 characters, not all whitespace".into());
        }
        if let Some(room) = &req.room_id {
            validate_id("roomId", room)?;
        }
        Ok(req)
    }

    /// The display name without surrounding whitespace.
    pub fn name(&self) -> &str {
        self.user_name
            .trim_matches(|c: char| c.is_ascii_whitespace())
    }
}

/// `POST /login` answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    /// HS256 JWT for every dialect.
    pub token: String,
    /// When the token expires, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// The user id minted for this login.
    #[schema(example = "user-1a2b3c4d")]
    pub user_id: String,
}

/// Values of the WebSocket upgrade headers.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
enum UpgradeValue {
    #[serde(rename = "websocket")]
    Websocket,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
enum ConnectionValue {
    Upgrade,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
enum WsVersionValue {
    #[serde(rename = "13")]
    V13,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "lowercase")]
enum LatencyFormat {
    Json,
    Hdr,
}

/// Stubs that carry the path documentation; the handlers are in `shard::front_door`.
#[allow(dead_code)]
mod paths {
    use super::*;

    #[utoipa::path(
        get, path = "/health", tag = "server",
        summary = "State of every shard",
        description = "Gathered from every shard; a shard that does not answer within \
            `server.health_timeout_ms` makes the status `degraded`.",
        responses(
            (status = 200, description = "Every shard answered", body = HealthBody),
            (status = 503, description = "Some shard did not answer in time", body = HealthBody),
        )
    )]
    fn health() {}

    #[utoipa::path(
        post, path = "/login", tag = "auth",
        summary = "Mint a token (dev mode or auth.login = true only)",
        request_body(content = LoginRequest, content_type = "application/json"),
        responses(
            (status = 200, description = "A token for the new user", body = LoginResponse),
            (status = 400, description = "Malformed body, bad userName or roomId", body = ErrorBody),
            (status = 404, description = "Login is disabled (the default when JWT_SECRET is set); the message says `login is disabled (auth.login)`", body = ErrorBody),
            (status = 413, description = "Body over limits.max_message_bytes", body = ErrorBody),
        )
    )]
    fn login() {}

    #[utoipa::path(
        get, path = "/p2p", tag = "p2p",
        summary = "Peer-to-peer relay WebSocket (default namespace)",
        description = "WebSocket upgrade; the messages are described by the AsyncAPI \
            document at `/asyncapi`. The token (`Authorization: Bearer` or `?token=`) is \
            checked before the upgrade; it may be left out only when \
            `p2p.allow_anonymous` is on.",
        params(
            ("Upgrade" = inline(UpgradeValue), Header, description = "Must hold `websocket`"),
            ("Connection" = inline(ConnectionValue), Header, description = "Must hold `Upgrade`"),
            ("Sec-WebSocket-Key" = String, Header, pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$",
                description = "Base64 of 16 random bytes (RFC 6455)"),
            ("Sec-WebSocket-Version" = inline(WsVersionValue), Header),
        ),
        responses(
            (status = 101, description = "Switching Protocols: the connection speaks WebSocket from now on",
                headers(("Upgrade" = String), ("Connection" = String), ("Sec-WebSocket-Accept" = String))),
            (status = 400, description = "Bad namespace, missing or malformed Sec-WebSocket-Key, or version not 13", body = ErrorBody),
            (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
            (status = 426, description = "Not a WebSocket upgrade request", body = ErrorBody,
                headers(("Upgrade" = String, description = "`websocket`"))),
        ),
        security(("bearer" = []), ("token" = []))
    )]
    fn p2p() {}

    #[utoipa::path(
        get, path = "/p2p/{namespace}", tag = "p2p",
        summary = "Peer-to-peer relay WebSocket (rooms scoped by namespace)",
        description = "As `/p2p`, with rooms scoped by the namespace.",
        params(
            ("namespace" = String, Path, min_length = 1, max_length = 128,
                pattern = "^[A-Za-z0-9_.:-]{1,128}$",
                description = "1-128 characters of `A-Z a-z 0-9 _ . : -`"),
            ("Upgrade" = inline(UpgradeValue), Header, description = "Must hold `websocket`"),
            ("Connection" = inline(ConnectionValue), Header, description = "Must hold `Upgrade`"),
            ("Sec-WebSocket-Key" = String, Header, pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$",
                description = "Base64 of 16 random bytes (RFC 6455)"),
            ("Sec-WebSocket-Version" = inline(WsVersionValue), Header),
        ),
        responses(
            (status = 101, description = "Switching Protocols: the connection speaks WebSocket from now on",
                headers(("Upgrade" = String), ("Connection" = String), ("Sec-WebSocket-Accept" = String))),
            (status = 400, description = "Bad namespace, missing or malformed Sec-WebSocket-Key, or version not 13", body = ErrorBody),
            (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
            (status = 426, description = "Not a WebSocket upgrade request", body = ErrorBody,
                headers(("Upgrade" = String, description = "`websocket`"))),
        ),
        security(("bearer" = []), ("token" = []))
    )]
    fn p2p_namespace() {}

    #[utoipa::path(
        get, path = "/ws", tag = "mediasoup",
        summary = "Request/response WebSocket for mediasoup-client (also at `/?token=`)",
        description = "WebSocket upgrade; the messages are described by the AsyncAPI \
            document at `/asyncapi`. The token (`?token=` or `Authorization: Bearer`) is \
            checked before the upgrade.",
        params(
            ("Upgrade" = inline(UpgradeValue), Header, description = "Must hold `websocket`"),
            ("Connection" = inline(ConnectionValue), Header, description = "Must hold `Upgrade`"),
            ("Sec-WebSocket-Key" = String, Header, pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$",
                description = "Base64 of 16 random bytes (RFC 6455)"),
            ("Sec-WebSocket-Version" = inline(WsVersionValue), Header),
        ),
        responses(
            (status = 101, description = "Switching Protocols: the connection speaks WebSocket from now on",
                headers(("Upgrade" = String), ("Connection" = String), ("Sec-WebSocket-Accept" = String))),
            (status = 400, description = "Missing or malformed Sec-WebSocket-Key, or version not 13", body = ErrorBody),
            (status = 401, description = "Missing, invalid or expired token", body = ErrorBody),
            (status = 426, description = "Not a WebSocket upgrade request", body = ErrorBody,
                headers(("Upgrade" = String, description = "`websocket`"))),
        ),
        security(("bearer" = []), ("token" = []))
    )]
    fn ws() {}

    #[utoipa::path(
        get, path = "/", tag = "demo",
        summary = "The demo page",
        description = "Without an upgrade: the demo page. With a WebSocket upgrade and a \
            token (`?token=` or `Authorization: Bearer`): the request/response dialect, as \
            `/ws`. With an upgrade and no token: the publish/subscribe dialect, as `/pubsub` \
            (`auth` first). See the AsyncAPI document.",
        responses((status = 200, description = "HTML page", body = String, content_type = "text/html"))
    )]
    fn root() {}

    #[utoipa::path(
        get, path = "/demo", tag = "demo",
        summary = "The built-in demo page (publish/subscribe dialect, works offline)",
        responses((status = 200, description = "HTML page", body = String, content_type = "text/html"))
    )]
    fn demo() {}

    #[utoipa::path(
        get, path = "/demo.js", tag = "demo",
        summary = "The demo page's script",
        responses((status = 200, description = "JavaScript", body = String, content_type = "text/javascript"))
    )]
    fn demo_js() {}

    #[utoipa::path(
        get, path = "/demo.css", tag = "demo",
        summary = "The demo page's style sheet",
        responses((status = 200, description = "CSS", body = String, content_type = "text/css"))
    )]
    fn demo_css() {}

    #[utoipa::path(
        get, path = "/pubsub", tag = "pubsub",
        summary = "Publish/subscribe SDP dialect (WebSocket; also at `/` without a token)",
        description = "WebSocket upgrade. The token comes as `?token=` (checked before the \
            upgrade) or in the first message `{\"type\": \"auth\", \"token\"}`.",
        params(
            ("Upgrade" = inline(UpgradeValue), Header, description = "Must hold `websocket`"),
            ("Connection" = inline(ConnectionValue), Header, description = "Must hold `Upgrade`"),
            ("Sec-WebSocket-Key" = String, Header, pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$",
                description = "Base64 of 16 random bytes (RFC 6455)"),
            ("Sec-WebSocket-Version" = inline(WsVersionValue), Header),
        ),
        responses(
            (status = 101, description = "Switching Protocols",
                headers(("Upgrade" = String), ("Connection" = String), ("Sec-WebSocket-Accept" = String))),
            (status = 400, description = "Missing or malformed Sec-WebSocket-Key, or version not 13", body = ErrorBody),
            (status = 401, description = "Invalid or expired `?token=`", body = ErrorBody),
            (status = 426, description = "Not a WebSocket upgrade request", body = ErrorBody,
                headers(("Upgrade" = String, description = "`websocket`"))),
        ),
    )]
    fn pubsub() {}

    #[utoipa::path(
        post, path = "/join/{conversationId}", tag = "oneshot",
        summary = "Join a conversation (one-shot SDP dialect)",
        description = "Makes this conversation the user's current one (moving the user out \
            of its previous one), which a later `GET /connect` joins, on any shard. The \
            caller is a Bearer token (`Authorization` or `?token=`; a token scoped to a \
            room must name this conversation), or, only when \
            `auth.trust_user_claim_header` is on and no token is sent, the `X-User-Claim` \
            header. When `permissions.url` is set, the server first asks \
            `GET {permissions.url}/user/{userId}/conversation/{conversationId}`: any answer \
            but 2xx, or none within `permissions.timeout_ms`, refuses the join with 401. \
            A request body is ignored.",
        params(
            ("conversationId" = String, Path, min_length = 1, max_length = 128,
                pattern = "^[A-Za-z0-9_.:-]{1,128}$",
                description = "1-128 characters of `A-Z a-z 0-9 _ . : -`"),
            ("X-User-Claim" = Option<String>, Header, nullable = false,
                description = "JSON `{\"userid\", \"clientid\"}` set by a trusted auth proxy; \
                    read only when `auth.trust_user_claim_header` is on and no token is sent \
                    (both required, else 400; both ids 1-128 characters of `A-Z a-z 0-9 _ . : -`)",
                example = json!(r#"{"userid":"alice","clientid":"d1"}"#)),
        ),
        responses(
            (status = 200, description = "Joined: the conversation is the user's current one (empty body)"),
            (status = 400, description = "Bad conversationId, no identity (no token, and no trusted \
                X-User-Claim), or a malformed X-User-Claim", body = ErrorBody),
            (status = 401, description = "Invalid or expired token, or the permission service \
                refused (non-2xx), was unreachable or did not answer in time (the message says \
                which)", body = ErrorBody),
            (status = 403, description = "A token scoped to another room", body = ErrorBody),
            (status = 413, description = "Body over limits.max_message_bytes", body = ErrorBody),
        ),
        security(("bearer" = []), ("token" = []), ())
    )]
    fn join() {}

    #[utoipa::path(
        get, path = "/latency", tag = "server",
        summary = "Latency histograms, per shard and merged",
        description = "Histograms: `forwardUs` (UDP receive to send of forwarded packets), \
            `joinMs` (join-room to first media), `requestUs` (signaling request handling), \
            `loopLagUs` (how late the media timer fired). JSON gives count, min, p50, p90, \
            p99, p99.9 and max; `format=hdr` gives the HdrHistogram interval log (V2, \
            compressed, base64) for standard HdrHistogram tools.",
        params(
            ("format" = Option<LatencyFormat>, Query, description = "`json` (default) or `hdr`"),
            ("reset" = Option<bool>, Query, description = "Start a new interval after this answer; \
                needs the admin token (server.admin_token) as `Authorization: Bearer`"),
        ),
        responses(
            (status = 200, description = "The histograms: JSON, or the interval log for `format=hdr`",
                content((Object = "application/json"), (String = "text/plain"))),
            (status = 400, description = "Unknown format", body = ErrorBody),
            (status = 401, description = "`reset=true` without `Authorization: Bearer` (the \
                admin token, server.admin_token); nothing is reset", body = ErrorBody),
            (status = 403, description = "`reset=true` with a wrong admin token, or with \
                server.admin_token unset (no reset at all); nothing is reset", body = ErrorBody),
            (status = 503, description = "No shard answered", body = ErrorBody),
        )
    )]
    fn latency() {}

    #[utoipa::path(
        get, path = "/metrics", tag = "server",
        summary = "Prometheus metrics (text format), labelled by shard",
        responses((status = 200, description = "Prometheus text format 0.0.4", body = String,
            content_type = "text/plain"))
    )]
    fn metrics() {}

    #[utoipa::path(
        post, path = "/whip/{roomId}", tag = "whip",
        summary = "WHIP: publish with an SDP offer (RFC 9725)",
        description = "Bearer token required (canPublish). The answer's resource URL ends the session.",
        params(("roomId" = String, Path, pattern = "^[A-Za-z0-9_.:-]{1,128}$")),
        request_body(content = String, content_type = "application/sdp"),
        responses(
            (status = 201, description = "SDP answer; Location names the session", content_type = "application/sdp", body = String,
                headers(("Location" = String, description = "/whip/{roomId}/{resourceId}"))),
            (status = 400, description = "Bad SDP, no usable codec, or over a per-request limit (limits.media_sections_per_offer, limits.max_string_bytes, ...; the message names it)", body = ErrorBody),
            (status = 401, description = "Missing or invalid token", body = ErrorBody),
            (status = 403, description = "No publish grant, or a token for another room", body = ErrorBody),
            (status = 405, description = "Wrong method", body = ErrorBody),
            (status = 413, description = "Body over limits.max_message_bytes", body = ErrorBody),
            (status = 415, description = "Content-Type is not application/sdp", body = ErrorBody),
            (status = 429, description = "The room or shard is full, or the user holds limits.sessions_per_user sessions in the room (limits.members_per_room, limits.rooms_per_shard; the message names it); Retry-After", body = ErrorBody),
        ),
        security(("bearer" = []))
    )]
    fn whip() {}

    #[utoipa::path(
        delete, path = "/whip/{roomId}/{resourceId}", tag = "whip",
        summary = "End a WHIP or WHEP session (also at /whep/{roomId}/{resourceId})",
        params(("roomId" = String, Path), ("resourceId" = String, Path)),
        responses(
            (status = 200, description = "Ended"),
            (status = 401, description = "Missing or invalid token", body = ErrorBody),
            (status = 403, description = "Another user's session, or a token for another room", body = ErrorBody),
            (status = 404, description = "No such session", body = ErrorBody),
            (status = 405, description = "Wrong method", body = ErrorBody),
        ),
        security(("bearer" = []))
    )]
    fn whip_delete() {}

    #[utoipa::path(
        patch, path = "/whip/{roomId}/{resourceId}", tag = "whip",
        summary = "Trickle ICE candidates into a WHIP or WHEP session",
        params(("roomId" = String, Path), ("resourceId" = String, Path)),
        request_body(content = String, content_type = "application/trickle-ice-sdpfrag"),
        responses(
            (status = 204, description = "Candidates added"),
            (status = 400, description = "A bad candidate line", body = ErrorBody),
            (status = 401, description = "Missing or invalid token", body = ErrorBody),
            (status = 403, description = "Another user's session", body = ErrorBody),
            (status = 404, description = "No such session", body = ErrorBody),
            (status = 415, description = "Content-Type is not application/trickle-ice-sdpfrag", body = ErrorBody),
        ),
        security(("bearer" = []))
    )]
    fn whip_patch() {}

    #[utoipa::path(
        post, path = "/whep/{roomId}", tag = "whip",
        summary = "WHEP: view everything published in a room, up to the offer's media sections",
        params(("roomId" = String, Path, pattern = "^[A-Za-z0-9_.:-]{1,128}$")),
        request_body(content = String, content_type = "application/sdp"),
        responses(
            (status = 201, description = "SDP answer; Location names the session", content_type = "application/sdp", body = String,
                headers(("Location" = String, description = "/whep/{roomId}/{resourceId}"))),
            (status = 400, description = "Bad SDP, or over a per-request limit (limits.media_sections_per_offer, limits.consumers_per_session, ...; the message names it)", body = ErrorBody),
            (status = 401, description = "Missing or invalid token", body = ErrorBody),
            (status = 403, description = "No subscribe grant, or a token for another room", body = ErrorBody),
            (status = 404, description = "No such room, or nothing published", body = ErrorBody),
            (status = 405, description = "Wrong method", body = ErrorBody),
            (status = 413, description = "Body over limits.max_message_bytes", body = ErrorBody),
            (status = 415, description = "Content-Type is not application/sdp", body = ErrorBody),
            (status = 429, description = "The room or shard is full, or the user holds limits.sessions_per_user sessions in the room (limits.members_per_room, limits.rooms_per_shard; the message names it); Retry-After", body = ErrorBody),
        ),
        security(("bearer" = []))
    )]
    fn whep() {}

    #[utoipa::path(
        post, path = "/whep/{roomId}/{publisherId}", tag = "whip",
        summary = "WHEP: view one publisher's tracks (DELETE and PATCH here act on a session)",
        params(("roomId" = String, Path), ("publisherId" = String, Path)),
        request_body(content = String, content_type = "application/sdp"),
        responses(
            (status = 201, description = "SDP answer", content_type = "application/sdp", body = String,
                headers(("Location" = String))),
            (status = 400, description = "Bad SDP, or over a per-request limit (limits.media_sections_per_offer, limits.consumers_per_session, ...; the message names it)", body = ErrorBody),
            (status = 401, description = "Missing or invalid token", body = ErrorBody),
            (status = 403, description = "No subscribe grant", body = ErrorBody),
            (status = 404, description = "No such room or publisher", body = ErrorBody),
            (status = 413, description = "Body over limits.max_message_bytes", body = ErrorBody),
            (status = 415, description = "Content-Type is not application/sdp", body = ErrorBody),
            (status = 429, description = "The room or shard is full, or the user holds limits.sessions_per_user sessions in the room (limits.members_per_room, limits.rooms_per_shard; the message names it); Retry-After", body = ErrorBody),
        ),
        security(("bearer" = []))
    )]
    fn whep_publisher() {}

    #[utoipa::path(
        get, path = "/connect", tag = "oneshot",
        summary = "One-shot SDP dialect (WebSocket): one offer in, one answer out",
        description = "The conversation is the user's current one (`POST /join`), else the \
            token's room, else `?conversation=`. Identity: a Bearer token, or `X-User-Claim` \
            when `auth.trust_user_claim_header` is on.",
        params(
            ("conversation" = Option<String>, Query, description = "Used when neither /join nor the token names one"),
            ("Upgrade" = inline(UpgradeValue), Header, description = "Must hold `websocket`"),
            ("Connection" = inline(ConnectionValue), Header, description = "Must hold `Upgrade`"),
            ("Sec-WebSocket-Key" = String, Header, pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$",
                description = "Base64 of 16 random bytes (RFC 6455)"),
            ("Sec-WebSocket-Version" = inline(WsVersionValue), Header),
        ),
        responses(
            (status = 101, description = "Switching Protocols",
                headers(("Upgrade" = String), ("Connection" = String), ("Sec-WebSocket-Accept" = String))),
            (status = 400, description = "No identity, no conversation, or a bad upgrade", body = ErrorBody),
            (status = 401, description = "Invalid or expired token", body = ErrorBody),
            (status = 403, description = "A token for another room", body = ErrorBody),
            (status = 426, description = "Not a WebSocket upgrade request", body = ErrorBody,
                headers(("Upgrade" = String, description = "`websocket`"))),
        ),
        security(("bearer" = []), ("token" = []))
    )]
    fn connect() {}

    #[utoipa::path(
        get, path = "/openapi.json", tag = "docs",
        summary = "This document (OpenAPI 3.1)",
        responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json"))
    )]
    fn openapi() {}

    #[utoipa::path(
        get, path = "/docs", tag = "docs",
        summary = "The API documents rendered as an HTML page (works offline)",
        responses((status = 200, description = "HTML page", body = String, content_type = "text/html"))
    )]
    fn docs() {}

    #[utoipa::path(
        get, path = "/asyncapi", tag = "docs",
        summary = "The WebSocket dialects (AsyncAPI 3.0)",
        responses((status = 200, description = "The AsyncAPI document", body = Object, content_type = "application/json"))
    )]
    fn asyncapi() {}
}

struct Security;

/// What the front door may answer on any endpoint before it is routed: 429 over
/// `limits.connections_per_ip` (and, where a session opens, over the new-session rates),
/// 503 from the file-descriptor reserve. Added to every operation that does not say it.
struct FrontDoorLimits;

impl Modify for FrontDoorLimits {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{header::Header, Content, Ref, ResponseBuilder, Schema, Type};
        let error = || Content::new(Some(Ref::from_schema_name("ErrorBody")));
        let retry_after = || {
            Header::new(Schema::Object(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .build(),
            ))
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for op in operations.into_iter().flatten() {
                let responses = &mut op.responses.responses;
                responses.entry("429".into()).or_insert_with(|| {
                    ResponseBuilder::new()
                        .description(
                            "This client address holds limits.connections_per_ip connections \
                             already, or (where a session opens: WebSocket upgrades, WHIP/WHEP \
                             POSTs) opens new sessions faster than limits.sessions_per_ip_* or \
                             its token subject faster than limits.sessions_per_token_*",
                        )
                        .content("application/json", error())
                        .header("Retry-After", retry_after())
                        .build()
                        .into()
                });
                responses.entry("503".into()).or_insert_with(|| {
                    ResponseBuilder::new()
                        .description(
                            "The server is at its file-descriptor limit: only /health, /metrics \
                             and /latency are served until it eases",
                        )
                        .content("application/json", error())
                        .header("Retry-After", retry_after())
                        .build()
                        .into()
                });
            }
        }
    }
}

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("HS256 JWT (README, Tokens)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "The same JWT as a query parameter (browsers cannot set headers on WebSockets)",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "corelay",
        description = "HTTP endpoints of corelay, a thread-per-core WebRTC SFU. The \
            WebSocket dialects are described by the AsyncAPI document at `/asyncapi`. \
            Errors are JSON `{\"error\": {\"code\", \"message\"}}`; every endpoint answers \
            405 with `Allow` for a method it does not take.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        paths::health,
        paths::login,
        paths::p2p,
        paths::p2p_namespace,
        paths::ws,
        paths::root,
        paths::demo,
        paths::demo_js,
        paths::demo_css,
        paths::pubsub,
        paths::join,
        paths::latency,
        paths::metrics,
        paths::whip,
        paths::whip_delete,
        paths::whip_patch,
        paths::whep,
        paths::whep_publisher,
        paths::connect,
        paths::openapi,
        paths::docs,
        paths::asyncapi,
    ),
    components(schemas(ErrorBody, ErrorDetail, LatencyFormat)),
    modifiers(&Security, &FrontDoorLimits),
    tags(
        (name = "server", description = "Server state"),
        (name = "auth", description = "Tokens"),
        (name = "p2p", description = "Peer-to-peer relay dialect (WebSocket)"),
        (name = "pubsub", description = "Publish/subscribe SDP dialect (WebSocket)"),
        (name = "demo", description = "The built-in demo page"),
        (name = "whip", description = "WHIP and WHEP (HTTP + SDP)"),
        (name = "mediasoup", description = "Request/response dialect for mediasoup-client (WebSocket)"),
        (name = "oneshot", description = "One-shot SDP dialect (`/join`, `/connect`)"),
        (name = "docs", description = "API documents"),
    )
)]
pub struct ApiDoc;

/// The OpenAPI document as JSON text (built once per process).
pub fn openapi_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document serializes")
    })
}

/// The AsyncAPI document as JSON text, with `info.version` set to this build's version.
pub fn asyncapi_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc: serde_json::Value =
            serde_json::from_str(include_str!("asyncapi.json")).expect("asyncapi.json is JSON");
        doc["info"]["version"] = env!("CARGO_PKG_VERSION").into();
        doc.to_string()
    })
}

/// The `/docs` page.
pub const DOCS_HTML: &str = include_str!("docs.html");

/// The answer to `GET` on one of the document paths (404 for any other path).
pub fn document(path: &str) -> Response {
    let (content_type, body) = match path {
        "/openapi.json" => ("application/json", openapi_json()),
        "/asyncapi" => ("application/json", asyncapi_json()),
        "/docs" => ("text/html; charset=utf-8", DOCS_HTML),
        _ => return Response::error(404, "not_found", &format!("no route for {path}")),
    };
    Response::new(200)
        .header("Content-Type", content_type)
        .header("Cache-Control", "no-cache")
        .body(body.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(body: &str) -> Result<LoginRequest, String> {
        LoginRequest::from_body(body.as_bytes())
    }

    #[test]
    fn login_request_matches_its_schema() {
        assert_eq!(login(r#"{"userName": " Ann\t"}"#).unwrap().name(), "Ann");
        assert!(login(r#"{"userName": "Ann", "roomId": null}"#).is_ok());
        assert!(login(r#"{"userName": "Ann", "roomId": "r1", "x": 1}"#).is_ok());
        assert!(login(&format!(r#"{{"userName": "{}"}}"#, "é".repeat(64))).is_ok());
        assert!(login(&format!(r#"{{"userName": "{}"}}"#, "é".repeat(65))).is_err());
        assert!(login(&format!(r#"{{"userName": " {}"}}"#, "a".repeat(64))).is_err());
        assert!(login(r#"{"userName": " \r\n\f\t"}"#).is_err());
        assert!(login(r#"{"userName": ""}"#).is_err());
        assert!(login(r#"["Ann", "r1"]"#).is_err());
        assert!(login(r#"{"userName": "Ann", "roomId": "a b"}"#).is_err());
        assert!(login(r#"{"roomId": "r1"}"#).is_err());
    }

    #[test]
    fn documents_are_json() {
        let openapi: serde_json::Value = serde_json::from_str(openapi_json()).unwrap();
        assert!(openapi["openapi"].as_str().unwrap().starts_with("3.1."));
        let asyncapi: serde_json::Value = serde_json::from_str(asyncapi_json()).unwrap();
        assert_eq!(asyncapi["asyncapi"], "3.0.0");
        assert_eq!(asyncapi["info"]["version"], env!("CARGO_PKG_VERSION"));
    }
}
