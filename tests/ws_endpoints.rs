//! What each WebSocket path serves, as a raw client sees it.

use corelay_testkit::*;
use serde_json::json;

#[test]
fn root_without_a_token_speaks_publish_subscribe() {
    let server = Server::builder().shards(2).spawn();
    // Rheomesh's client: `ws://host:port`, no path and no token; `auth` first.
    let mut ws = ws_connect(server.port, "/").expect("upgrade on / without a token");
    send_text(
        &mut ws,
        &json!({"type": "auth", "token": token("rhea", None)}).to_string(),
    );
    let ok = recv_json(&mut ws);
    assert_eq!(ok["type"], "auth-ok", "{ok}");
    assert_eq!(ok["userId"], "rhea", "{ok}");
    assert_eq!(ok["username"], "rhea", "{ok}");
    // A room message joins (and may move the session to the room's shard).
    send_text(
        &mut ws,
        &json!({"type": "subscribe-request", "roomName": "lobby", "publisherId": 7}).to_string(),
    );
    let e = recv_json(&mut ws);
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["requestType"], "subscribe-request", "{e}");

    // A bad token in `auth`: the pubsub error, then close 1008.
    let mut ws = ws_connect(server.port, "/").unwrap();
    send_text(&mut ws, r#"{"type": "auth", "token": "nope"}"#);
    let e = recv_json(&mut ws);
    assert_eq!(e["type"], "error", "{e}");
    match ws.read() {
        Ok(tungstenite::Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("expected close 1008, got {other:?}"),
    }
}

#[test]
fn root_with_a_token_stays_mediasoup_and_ws_is_unchanged() {
    let server = Server::builder().shards(1).spawn();
    for path in ["/", "/ws"] {
        let t = token("msc", Some("room-1"));
        let mut ws = ws_connect(server.port, &format!("{path}?token={t}")).unwrap();
        send_text(
            &mut ws,
            r#"{"type": "join-room", "data": {}, "requestId": "r1"}"#,
        );
        let r = recv_json(&mut ws);
        assert_eq!(r["type"], "response", "{path}: {r}");
        assert_eq!(r["requestId"], "r1", "{path}: {r}");
        assert_eq!(r["data"]["roomId"], "room-1", "{path}: {r}");
    }
    // `/ws` still needs its token before the upgrade; `/?token=` with a bad one too.
    assert_eq!(ws_connect(server.port, "/ws").err(), Some(401));
    assert_eq!(ws_connect(server.port, "/?token=bad").err(), Some(401));
    // Without an upgrade, `/` is the demo page.
    let (status, body) = http(server.port, "GET", "/", &[], b"").unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("<html") || body.contains("<!doctype"),
        "{body}"
    );
}

/// A token without `exp`, signed with the test secret.
fn token_without_exp(user: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"userId": user}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn tokens_without_exp_follow_auth_require_exp() {
    let t = token_without_exp("no-exp");
    // The default: refused before the upgrade, with a message that names the claim.
    let strict = Server::builder().shards(1).spawn();
    let (status, body) = http(
        strict.port,
        "GET",
        &format!("/ws?token={t}"),
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
        ],
        b"",
    )
    .unwrap();
    assert_eq!(status, 401, "{body}");
    let message = serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        message, "token has no exp claim (auth.require_exp is on)",
        "{body}"
    );
    // Off: the same token is accepted.
    let lax = Server::builder()
        .env("CORELAY_AUTH_REQUIRE_EXP", "false")
        .spawn();
    let mut ws = ws_connect(lax.port, "/").unwrap();
    send_text(&mut ws, &json!({"type": "auth", "token": t}).to_string());
    let ok = recv_json(&mut ws);
    assert_eq!(ok["type"], "auth-ok", "{ok}");
    assert_eq!(ok["userId"], "no-exp", "{ok}");
}

#[test]
fn create_transport_takes_direction_type_or_producing_consuming() {
    let server = Server::builder().shards(1).spawn();
    let t = token("demo", Some("room-2"));
    let mut ws = ws_connect(server.port, &format!("/ws?token={t}")).unwrap();
    let mut request = |n: usize, kind: &str, data: serde_json::Value| {
        let id = format!("r{n}");
        send_text(
            &mut ws,
            &json!({"type": kind, "data": data, "requestId": id}).to_string(),
        );
        let r = recv_json(&mut ws);
        assert_eq!(r["requestId"], id.as_str(), "{r}");
        r
    };
    request(0, "join-room", json!({}));
    let shapes = [
        json!({"direction": "send"}),
        json!({"type": "recv"}),
        json!({"producing": true, "consuming": false}),
        json!({"producing": false, "consuming": true, "sctpCapabilities": null}),
    ];
    for (i, data) in shapes.into_iter().enumerate() {
        let r = request(i + 1, "create-transport", data.clone());
        assert!(r["data"]["id"].is_string(), "{data}: {r}");
        assert_eq!(r["data"]["iceParameters"]["iceLite"], true, "{data}: {r}");
    }
    let r = request(
        9,
        "create-transport",
        json!({"producing": true, "consuming": true}),
    );
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("both true"),
        "{r}"
    );
}

/// Sends Close(1000, "bye") and checks the server's side of the handshake: a Close frame
/// echoing 1000, then the end of the connection (no reset, no bare EOF before the echo).
fn close_cleanly(mut ws: Ws, what: &str) {
    use tungstenite::protocol::frame::coding::CloseCode;
    use tungstenite::protocol::CloseFrame;
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    loop {
        match ws.read() {
            // Texts the server had queued before it read our Close may come first.
            Ok(tungstenite::Message::Text(_)) => continue,
            Ok(tungstenite::Message::Close(Some(f))) => {
                assert_eq!(u16::from(f.code), 1000, "{what}: echoed code");
                break;
            }
            other => panic!("{what}: expected the server's Close(1000), got {other:?}"),
        }
    }
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("{what}: expected a closed connection after the handshake, got {other:?}"),
    }
}

fn p2p_connect(ws: &mut Ws, user: &str, room: &str) {
    send_text(
        ws,
        &json!({"Header": {"Event": "connect", "UserId": user, "RoomId": room}, "Payload": ""})
            .to_string(),
    );
    assert_eq!(recv_json(ws)["Header"]["Event"], "connect");
}

#[test]
fn every_websocket_endpoint_answers_the_clients_close() {
    let server = Server::builder().shards(2).spawn();
    let port = server.port;
    let t = token("closer", None);
    let scoped = token("closer", Some("close-room"));

    // Right after the upgrade, in every dialect.
    for path in [
        format!("/ws?token={scoped}"),
        format!("/?token={scoped}"),
        "/pubsub".to_string(),
        "/".to_string(),
        format!("/p2p?token={t}"),
        format!("/p2p/team?token={t}"),
        format!("/connect?token={t}&conversation=close-room"),
    ] {
        close_cleanly(ws_connect(port, &path).unwrap(), &path);
    }

    // In the middle of a session, after it moved to its room's shard.
    for room in ["close-a", "close-b", "close-c"] {
        let mut ws = ws_connect(port, &format!("/ws?token={t}")).unwrap();
        send_text(
            &mut ws,
            &json!({"type": "join-room", "data": {"roomId": room}, "requestId": "j"}).to_string(),
        );
        assert_eq!(recv_json(&mut ws)["type"], "response");
        close_cleanly(ws, &format!("/ws in {room}"));

        let mut ws = ws_connect(port, "/").unwrap();
        send_text(&mut ws, &json!({"type": "auth", "token": t}).to_string());
        assert_eq!(recv_json(&mut ws)["type"], "auth-ok");
        send_text(
            &mut ws,
            &json!({"type": "join", "roomName": room}).to_string(),
        );
        close_cleanly(ws, &format!("/ (pubsub) in {room}"));

        for path in ["/p2p", "/p2p/team"] {
            let mut ws = ws_connect(port, &format!("{path}?token={t}")).unwrap();
            p2p_connect(&mut ws, "closer", room);
            close_cleanly(ws, &format!("{path} in {room}"));
        }
    }
    assert_eq!(server.health()["status"], "ok");
}
