//! `POST /join/{conversationId}` (one-shot SDP dialect): identity (token or trusted
//! `X-User-Claim`), the permission service asked through the control plane, and the
//! user's current conversation, shared by every shard.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use corelay_testkit::*;

/// A permission service on loopback that answers by path:
/// `/user/{u}/conversation/ok*` 200, `.../deny*` 403, `.../silent*` nothing (it holds the
/// connection for 10 s), anything else 404. It records every path it is asked for.
struct Permissions {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Permissions {
    fn start() -> Permissions {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            // Bounded: a test makes a handful of requests.
            for stream in listener.incoming().take(200) {
                let Ok(mut stream) = stream else { return };
                let log = log.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let mut line = head.split_whitespace();
                    let (method, path) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
                    log.lock().unwrap().push(format!("{method} {path}"));
                    let conversation = path.rsplit('/').next().unwrap_or("");
                    let status = if conversation.starts_with("ok") {
                        "200 OK"
                    } else if conversation.starts_with("deny") {
                        "403 Forbidden"
                    } else if conversation.starts_with("silent") {
                        std::thread::sleep(Duration::from_secs(10));
                        return;
                    } else {
                        "404 Not Found"
                    };
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                });
            }
        });
        Permissions { port, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn bearer(user: &str) -> String {
    format!("Bearer {}", token(user, None))
}

/// `POST /join/{conversation}` with these headers: status, body, and how long it took.
fn join(port: u16, conversation: &str, headers: &[(&str, &str)]) -> (u16, String, Duration) {
    let started = Instant::now();
    let (status, body) = http(port, "POST", &format!("/join/{conversation}"), headers, b"")
        .expect("the server answers");
    (status, body, started.elapsed())
}

fn error_message(body: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    v["error"]["message"].as_str().unwrap().to_string()
}

#[test]
fn the_permission_service_decides() {
    let perms = Permissions::start();
    let url = format!("http://127.0.0.1:{}", perms.port);
    let server = Server::builder()
        .shards(2)
        .args(["--permissions-url", &url, "--permissions-timeout-ms", "500"])
        .spawn();
    let alice = bearer("alice");

    let (status, body, _) = join(server.port, "ok-1", &[("Authorization", &alice)]);
    assert_eq!(
        (status, body.as_str()),
        (200, ""),
        "allowed: 200, empty body"
    );
    assert_eq!(perms.seen(), ["GET /user/alice/conversation/ok-1"]);

    // The token may also come as ?token=.
    let (status, body, _) = join(
        server.port,
        &format!("ok-2?token={}", token("bob", None)),
        &[],
    );
    assert_eq!(status, 200, "{body}");
    assert!(perms
        .seen()
        .contains(&"GET /user/bob/conversation/ok-2".to_string()));

    let (status, body, _) = join(server.port, "deny-1", &[("Authorization", &alice)]);
    assert_eq!(status, 401, "{body}");
    let m = error_message(&body);
    assert!(m.contains("403") && m.contains("deny-1"), "{m}");

    let (status, body, took) = join(server.port, "silent-1", &[("Authorization", &alice)]);
    assert_eq!(status, 401, "{body}");
    let m = error_message(&body);
    assert!(m.contains("no answer within 500 ms"), "{m}");
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}"
    );

    // A refusal does not change the current conversation, a success does.
    let (status, _, _) = join(server.port, "ok-3", &[("Authorization", &alice)]);
    assert_eq!(status, 200);
}

#[test]
fn an_unreachable_service_refuses_within_the_timeout() {
    // A port nobody listens on, given as a bare host:port (plain http).
    let closed = free_port();
    let server = Server::builder()
        .env("PERMISSIONS_HOST", format!("127.0.0.1:{closed}"))
        .env("CORELAY_PERMISSIONS_TIMEOUT_MS", "500")
        .spawn();
    let (status, body, took) = join(server.port, "ok-1", &[("Authorization", &bearer("alice"))]);
    assert_eq!(status, 401, "{body}");
    let m = error_message(&body);
    assert!(m.contains("unreachable"), "{m}");
    assert!(
        took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
}

#[test]
fn without_a_service_every_join_is_allowed() {
    let server = Server::builder().shards(1).spawn();
    for conversation in ["deny-1", "anything", "a:b.c-d_e"] {
        let (status, body, _) = join(
            server.port,
            conversation,
            &[("Authorization", &bearer("u1"))],
        );
        assert_eq!((status, body.as_str()), (200, ""), "{conversation}");
    }
}

#[test]
fn requests_are_checked_before_the_service_is_asked() {
    let perms = Permissions::start();
    let url = format!("http://127.0.0.1:{}", perms.port);
    let server = Server::builder()
        .shards(1)
        .args(["--permissions-url", &url])
        .spawn();
    let alice = bearer("alice");

    // Wrong method: 405 with Allow.
    for method in ["GET", "PUT", "DELETE"] {
        let (status, headers, _) = http_with_headers(
            server.port,
            method,
            "/join/ok-1",
            &[("Authorization", &alice)],
            b"",
        )
        .unwrap();
        assert_eq!(status, 405, "{method}");
        let allow = headers
            .iter()
            .find(|(k, _)| k == "allow")
            .map(|(_, v)| v.as_str());
        assert_eq!(allow, Some("POST"), "{method}");
    }
    // A bad conversation id: 400.
    for bad in ["", "has%20space", "a%2Fb", &"x".repeat(129)] {
        let (status, body, _) = join(server.port, bad, &[("Authorization", &alice)]);
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert!(error_message(&body).contains("conversationId"), "{body}");
    }
    // No identity: 400; a bad token: 401; a token scoped to another room: 403 (as on every
    // endpoint).
    let (status, body, _) = join(server.port, "ok-1", &[]);
    assert_eq!(status, 400, "{body}");
    let (status, body, _) = join(
        server.port,
        "ok-1",
        &[("Authorization", "Bearer not.a.jwt")],
    );
    assert_eq!(status, 401, "{body}");
    let scoped = format!("Bearer {}", token("alice", Some("ok-room")));
    let (status, body, _) = join(server.port, "ok-1", &[("Authorization", &scoped)]);
    assert_eq!(status, 403, "{body}");
    let (status, _, _) = join(server.port, "ok-room", &[("Authorization", &scoped)]);
    assert_eq!(status, 200);
    // Only the last join reached the service.
    assert_eq!(perms.seen(), ["GET /user/alice/conversation/ok-room"]);
}

#[test]
fn the_user_claim_header_counts_only_when_trusted() {
    let perms = Permissions::start();
    let url = format!("http://127.0.0.1:{}", perms.port);
    let claim = r#"{"userid": "carol", "clientid": "d1"}"#;

    let untrusted = Server::builder()
        .shards(1)
        .args(["--permissions-url", &url])
        .spawn();
    let (status, body, _) = join(untrusted.port, "ok-1", &[("X-User-Claim", claim)]);
    assert_eq!(status, 400, "{body}");
    assert!(error_message(&body).contains("not trusted"), "{body}");
    assert!(perms.seen().is_empty());

    let trusted = Server::builder()
        .args([
            "--permissions-url",
            &url,
            "--trust-user-claim-header",
            "true",
        ])
        .spawn();
    let (status, body, _) = join(trusted.port, "ok-1", &[("X-User-Claim", claim)]);
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(perms.seen(), ["GET /user/carol/conversation/ok-1"]);
    let (status, body, _) = join(trusted.port, "deny-1", &[("X-User-Claim", claim)]);
    assert_eq!(status, 401, "{body}");

    // Malformed claims: 400, and the service is not asked.
    for bad in [
        "carol",
        "{\"userid\": 7}",
        "{\"clientid\": \"d1\"}",
        "{\"userid\": \"carol\"}",
        "{\"userid\": \"carol\", \"clientid\": null}",
        "{\"userid\": \"a b\"}",
    ] {
        let (status, body, _) = join(trusted.port, "ok-2", &[("X-User-Claim", bad)]);
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(error_message(&body).contains("X-User-Claim"), "{body}");
    }
    assert_eq!(perms.seen().len(), 2);

    // A token, when sent, still decides.
    let (status, _, _) = join(
        trusted.port,
        "ok-3",
        &[("X-User-Claim", claim), ("Authorization", &bearer("dave"))],
    );
    assert_eq!(status, 200);
    assert_eq!(
        perms.seen().last().unwrap(),
        "GET /user/dave/conversation/ok-3"
    );
}

/// The JSON log lines of `dir` (the server's `--log-file`).
fn log_lines(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        lines.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
    }
    lines
}

#[test]
fn a_second_join_moves_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("corelay.log");
    let server = Server::builder()
        .shards(2)
        .args(["--log-file", file.to_str().unwrap(), "--log-format", "json"])
        .spawn();
    let alice = bearer("alice");
    // Several joins, each on whichever shard accepts it: each one names the previous
    // conversation, whichever shard recorded it.
    let conversations = ["c1", "c2", "c1", "c3", "c4", "c5"];
    for c in conversations {
        let (status, body, _) = join(server.port, c, &[("Authorization", &alice)]);
        assert_eq!(status, 200, "{body}");
    }
    let started = Instant::now();
    let moves = loop {
        let moves: Vec<(Option<String>, String)> = log_lines(dir.path())
            .iter()
            .filter(|l| l["fields"]["user"] == "alice")
            .filter(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("join:"))
            })
            .map(|l| {
                let f = &l["fields"];
                (
                    f["from"].as_str().map(str::to_string),
                    f["to"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        if moves.len() == conversations.len() || started.elapsed() > Duration::from_secs(10) {
            break moves;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut expected = vec![(None, "c1".to_string())];
    for pair in conversations.windows(2) {
        expected.push((Some(pair[0].to_string()), pair[1].to_string()));
    }
    assert_eq!(moves, expected);
}
