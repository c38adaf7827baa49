//! The API documents the server serves (`/openapi.json`, `/docs`, `/asyncapi`), checked
//! against the running binary: here for shape and coverage of the routes, and by real
//! validators (schemathesis, the official AsyncAPI schema and parser, live WebSocket
//! traffic) in `tests/api/check_api_docs.sh`.

use std::path::Path;
use std::time::Duration;

use corelay_testkit::*;
use serde_json::Value;

/// Every path the server routes, as the OpenAPI document must name it.
const SERVED: &[&str] = &[
    "/health",
    "/login",
    "/p2p",
    "/p2p/{namespace}",
    "/openapi.json",
    "/docs",
    "/asyncapi",
];

/// Paths that other dialects use or will use (PROTOCOLS.md): when the server answers one of
/// them with anything but 404, the OpenAPI document must describe it.
const CANDIDATES: &[&str] = &[
    "/",
    "/ws",
    "/pubsub",
    "/whip/r1",
    "/whip/r1/x1",
    "/whep/r1",
    "/whep/r1/p1",
    "/connect",
    "/join/c1",
    "/demo",
];

/// Served but not yet documented: the mediasoup-client dialect (`/` and `/ws` with a
/// WebSocket upgrade) is being written; its author adds it to src/http/api_docs.rs and
/// src/http/asyncapi.json and removes it from here.
const PENDING: &[&str] = &[];

const UPGRADE: &[(&str, &str)] = &[
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

fn get_json(port: u16, path: &str) -> Value {
    let (status, headers, body) = http_with_headers(port, "GET", path, &[], b"").unwrap();
    assert_eq!(status, 200, "GET {path}: {body}");
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path} is not JSON: {e}"))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Whether `path` is an instance of the OpenAPI path template `template`.
fn matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
}

#[test]
fn documents_describe_what_the_server_serves() {
    let server = Server::builder()
        .shards(2)
        .args(["--login", "true"])
        .spawn();
    let port = server.port;

    let openapi = get_json(port, "/openapi.json");
    let version = openapi["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "openapi is {version}");
    assert_eq!(openapi["info"]["version"], env!("CARGO_PKG_VERSION"));
    let paths = openapi["paths"].as_object().unwrap();
    for p in SERVED {
        assert!(
            paths.contains_key(*p),
            "{p} is served but not in /openapi.json"
        );
    }

    // Every documented operation is routed (no 404), and answers a status it documents.
    for (template, item) in paths {
        let path = template.replace("{namespace}", "ns1");
        for (method, op) in item.as_object().unwrap() {
            let method = method.to_ascii_uppercase();
            let (status, _, body) = http_with_headers(port, &method, &path, &[], b"").unwrap();
            assert_ne!(
                status, 404,
                "{method} {path} is documented but not routed: {body}"
            );
            let documented = op["responses"].as_object().unwrap();
            assert!(
                documented.contains_key(&status.to_string()),
                "{method} {path} answered {status}, which /openapi.json does not list: {body}"
            );
        }
    }
    // A wrong method gets 405 with Allow on the document endpoints too.
    for p in ["/openapi.json", "/docs", "/asyncapi"] {
        let (status, headers, _) = http_with_headers(port, "POST", p, &[], b"").unwrap();
        assert_eq!(status, 405, "POST {p}");
        assert_eq!(header(&headers, "allow"), Some("GET"), "POST {p}");
    }

    // Nothing is served that the document does not describe.
    for path in CANDIDATES {
        if PENDING.contains(path) || paths.keys().any(|t| matches(t, path)) {
            continue;
        }
        for (method, headers) in [("GET", &[][..]), ("GET", UPGRADE), ("POST", &[][..])] {
            let (status, _, body) = http_with_headers(port, method, path, headers, b"").unwrap();
            assert_eq!(
                status, 404,
                "{method} {path} is served ({status}: {body}) but not in /openapi.json: \
                 document it in src/http/api_docs.rs"
            );
        }
    }

    // /docs: a self-contained HTML page.
    let (status, headers, html) = http_with_headers(port, "GET", "/docs", &[], b"").unwrap();
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(html.trim_start().starts_with("<!doctype html>"), "{html}");
    assert!(html.contains("openapi.json") && html.contains("asyncapi"));
    let lower = html.to_ascii_lowercase();
    for external in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
        assert!(
            !lower.contains(external),
            "/docs must work offline but contains {external:?}"
        );
    }

    // /asyncapi: AsyncAPI 3.0.0 with a channel per relay endpoint.
    let asyncapi = get_json(port, "/asyncapi");
    assert_eq!(asyncapi["asyncapi"], "3.0.0");
    assert_eq!(asyncapi["info"]["version"], env!("CARGO_PKG_VERSION"));
    let addresses: Vec<&str> = asyncapi["channels"]
        .as_object()
        .unwrap()
        .values()
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    for a in ["/p2p", "/p2p/{namespace}"] {
        assert!(addresses.contains(&a), "no AsyncAPI channel for {a}");
    }
}

#[test]
fn percent_encoded_namespaces_are_decoded() {
    // Found by schemathesis: `/p2p/a%3Ab` (a browser's encodeURIComponent("a:b")) was
    // refused as a bad namespace.
    let server = Server::builder().shards(1).spawn();
    let path = format!("/p2p/team%3Aa?token={}", token("alice", None));
    let mut ws = ws_connect(server.port, &path).expect("upgrade");
    send_text(
        &mut ws,
        r#"{"Header": {"Event": "connect", "UserId": "alice", "RoomId": "r"}, "Payload": ""}"#,
    );
    assert_eq!(recv_json(&mut ws)["Payload"], "true");
    let (status, _, _) = http_with_headers(server.port, "GET", "/p2p/a%2Fb", UPGRADE, b"").unwrap();
    assert_eq!(status, 400, "a decoded '/' is still refused");
}

/// Runs tests/api/check_api_docs.sh (schemathesis, AsyncAPI schema and parser, live
/// traffic) against this build's binary. It needs python3 (with venv) and npm, and PyPI and
/// the npm registry the first time.
#[test]
fn validators_accept_the_documents_against_the_running_server() {
    corelay_testkit::run_check_script(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        Path::new(env!("CARGO_BIN_EXE_corelay")),
        "tests/api/check_api_docs.sh",
        Duration::from_secs(200),
    );
}
