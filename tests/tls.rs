//! HTTPS and WSS on the HTTP port when a certificate is configured.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use corelay_testkit::*;
use futures_rustls::rustls::{self, pki_types};
use serde_json::{json, Value};

struct Pki {
    _dir: tempfile::TempDir,
    cert_path: String,
    key_path: String,
    cert_der: pki_types::CertificateDer<'static>,
}

fn make_cert() -> Pki {
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, ck.cert.pem()).unwrap();
    std::fs::write(&key_path, ck.key_pair.serialize_pem()).unwrap();
    Pki {
        cert_der: ck.cert.der().clone(),
        cert_path: cert_path.display().to_string(),
        key_path: key_path.display().to_string(),
        _dir: dir,
    }
}

fn client_config(pki: &Pki) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.cert_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn tls_stream(port: u16, pki: &Pki) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(client_config(pki), name).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn start_tls_server(pki: &Pki) -> Server {
    // A TLS port refuses the plain-HTTP /health check: wait for the TCP port instead.
    Server::builder()
        .shards(2)
        .args(["--tls-cert", &pki.cert_path, "--tls-key", &pki.key_path])
        .ready(Ready::Tcp)
        .spawn()
}

fn https_health(port: u16, pki: &Pki) -> Value {
    let mut s = tls_stream(port, pki);
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    serde_json::from_str(out.split_once("\r\n\r\n").unwrap().1).unwrap()
}

#[test]
fn health_over_https_and_relay_over_wss() {
    let pki = make_cert();
    let server = start_tls_server(&pki);

    let body = https_health(server.port, &pki);
    assert_eq!(body["shards"].as_array().unwrap().len(), 2);

    // WSS relay clients join one room until at least one was accepted on the shard that
    // does not own the room and moved there with its TLS state (bounded: 1 in 2 moves).
    let mut clients = Vec::new();
    for i in 0..40 {
        let relocated: u64 = https_health(server.port, &pki)["shards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["relocatedIn"].as_u64().unwrap())
            .sum();
        if i >= 6 && relocated > 0 {
            break;
        }
        let user = format!("tls-u{i}");
        let url = format!(
            "wss://localhost:{}/p2p?token={}",
            server.port,
            token(&user, None)
        );
        let (mut ws, _) = tungstenite::client(url.as_str(), tls_stream(server.port, &pki)).unwrap();
        let connect = json!({"Header": {"Event": "connect", "UserId": user, "RoomId": "secure"}, "Payload": ""});
        ws.send(tungstenite::Message::text(connect.to_string()))
            .unwrap();
        let own: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
        assert_eq!(own["Payload"], if i == 0 { "true" } else { "false" });
        for other in clients.iter_mut() {
            let got: Value = serde_json::from_str(
                tungstenite::WebSocket::read(other)
                    .unwrap()
                    .to_text()
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(got["Header"]["UserId"], user.as_str());
        }
        clients.push(ws);
    }
    let relocated: u64 = https_health(server.port, &pki)["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["relocatedIn"].as_u64().unwrap())
        .sum();
    assert!(relocated > 0, "no WSS session moved between shards");
    let last = clients.len() - 1;
    let hello = json!({"Header": {"Event": "broadcast", "UserId": format!("tls-u{last}"), "RoomId": "secure"}, "Payload": "hi"});
    clients[last]
        .send(tungstenite::Message::text(hello.to_string()))
        .unwrap();
    for ws in clients.iter_mut().take(last) {
        let got: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
        assert_eq!(got["Payload"], "hi");
    }
    // The close handshake over TLS, on sessions that moved and sessions that did not: the
    // client's Close is echoed, then the server ends TLS (close_notify) and TCP.
    for (i, mut ws) in clients.into_iter().enumerate() {
        ws.close(Some(tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        }))
        .unwrap();
        loop {
            match ws.read() {
                Ok(tungstenite::Message::Text(_)) => continue, // others' disconnects
                Ok(tungstenite::Message::Close(Some(f))) => {
                    assert_eq!(u16::from(f.code), 1000, "client {i}");
                    break;
                }
                other => panic!("client {i}: expected Close(1000), got {other:?}"),
            }
        }
        match ws.read() {
            Err(tungstenite::Error::ConnectionClosed) => {}
            other => panic!("client {i}: expected a clean end after the echo, got {other:?}"),
        }
    }
}

#[test]
fn plain_http_to_the_tls_port_fails_cleanly() {
    let pki = make_cert();
    let server = start_tls_server(&pki);
    let (status, body) = http(server.port, "GET", "/health", &[], b"").unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("https"), "{body}");
}

#[test]
fn a_bad_certificate_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("cert.pem");
    std::fs::write(&cert, "not a certificate").unwrap();
    let out = Server::builder()
        .args([
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .output();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS certificate"), "{err}");
}
