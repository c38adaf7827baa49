//! The control plane: one thread, off the shards, for everything that talks to other
//! services (today the permission service of `POST /join`; later Redis, NATS, webhooks).
//!
//! A shard never waits on the network for another service: it sends a [`Request`] over a
//! runtime-agnostic channel (async-channel) to the control thread, which runs a tokio
//! current-thread runtime with an HTTP client (reqwest, rustls on aws-lc-rs, the system's
//! CA store), and awaits the answer on a `futures` oneshot. Both ends of those channels
//! wake their task from any thread, so the futures of [`ControlHandle`] work inside
//! glommio (or any executor) and never block it. Every request is its own tokio task on
//! the control thread, so one slow service call does not hold up the others.
//!
//! A new integration is a new [`Request`] variant, its handler in `serve`, and a method
//! on [`ControlHandle`] that sends it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::oneshot;

use crate::config::Config;

/// How many requests may wait for the control thread before senders wait in turn.
const QUEUE: usize = 4096;
/// How much of a permission answer's body is read (to reuse the connection) at most.
const MAX_DRAIN_BYTES: usize = 64 * 1024;

/// Why a permission check refused a join. The message says which case it was; each one
/// is a 401 for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionDenied {
    /// The service answered, with a status outside 2xx.
    #[error("the permission service answered {status}")]
    Refused { status: u16 },
    /// No answer (status line and headers) within `permissions.timeout_ms`.
    #[error("the permission service gave no answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    /// Connection refused, DNS failure, TLS failure, a broken answer, ...
    #[error("the permission service is unreachable: {0}")]
    Unreachable(String),
    /// The control thread is gone (only while the process stops).
    #[error("the control plane is not running")]
    ControlPlaneDown,
}

/// What shards ask the control thread for. One variant per integration.
#[derive(Debug)]
pub enum Request {
    /// `GET {permissions.url}/user/{user_id}/conversation/{conversation_id}`: Ok on 2xx.
    CheckPermission {
        user_id: String,
        conversation_id: String,
        reply: oneshot::Sender<Result<(), PermissionDenied>>,
    },
}

/// The control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot start the control plane runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot build the HTTP client of the control plane: {0}")]
    Client(String),
    #[error("invalid permissions.url {0:?}")]
    Url(String),
    #[error("cannot spawn the control plane thread: {0}")]
    Thread(std::io::Error),
}

/// Who is in which conversation, for the one-shot dialect: user id -> conversation id.
///
/// Kept here, in memory shared by every shard, rather than on one shard: `POST /join` may
/// be accepted on any shard and the `/connect` WebSocket that follows on any other, so
/// the record must be readable from all of them. A `Mutex` is enough: it is taken briefly
/// by `/join` and `/connect` requests only, never on the media path, so there is no
/// contention worth a sharded map. It lives in this process only: with several server
/// processes, a client must `/connect` to the process it joined through (a later Redis
/// integration on the control thread can share it between processes).
type Conversations = Arc<Mutex<HashMap<String, String>>>;

/// A shard's way to the control plane: cheap to clone, `Send + Sync`, one per shard.
#[derive(Clone, Debug)]
pub struct ControlHandle {
    requests: async_channel::Sender<Request>,
    /// Whether a permission service is configured (`permissions.url`).
    permissions: bool,
    permission_timeout: Duration,
    conversations: Conversations,
}

impl ControlHandle {
    /// Asks the permission service whether `user_id` may join `conversation_id`.
    ///
    /// Without `permissions.url` every join is allowed at once, without leaving the
    /// calling thread. Otherwise the control thread makes the call and the future
    /// resolves when it answers: within `permissions.timeout_ms` (plus scheduling). The
    /// future owns what it needs (it borrows nothing) and is runtime-agnostic.
    pub fn check_permission(
        &self,
        user_id: &str,
        conversation_id: &str,
    ) -> impl Future<Output = Result<(), PermissionDenied>> + 'static {
        let send = self.permissions.then(|| {
            let (reply, answer) = oneshot::channel();
            let request = Request::CheckPermission {
                user_id: user_id.to_string(),
                conversation_id: conversation_id.to_string(),
                reply,
            };
            (self.requests.clone(), request, answer)
        });
        async move {
            let Some((requests, request, answer)) = send else {
                return Ok(());
            };
            requests
                .send(request)
                .await
                .map_err(|_| PermissionDenied::ControlPlaneDown)?;
            answer
                .await
                .unwrap_or(Err(PermissionDenied::ControlPlaneDown))
        }
    }

    /// Whether `permissions.url` is configured (else every join is allowed).
    pub fn permissions_configured(&self) -> bool {
        self.permissions
    }

    /// `permissions.timeout_ms`.
    pub fn permission_timeout(&self) -> Duration {
        self.permission_timeout
    }

    /// Records `conversation_id` as the user's current conversation (moving it out of its
    /// previous one) and returns the previous one, if any. Visible from every shard at
    /// once.
    pub fn set_conversation(&self, user_id: &str, conversation_id: &str) -> Option<String> {
        self.lock()
            .insert(user_id.to_string(), conversation_id.to_string())
    }

    /// The user's current conversation, as the last successful `POST /join` set it.
    pub fn current_conversation(&self, user_id: &str) -> Option<String> {
        self.lock().get(user_id).cloned()
    }

    /// Forgets the user's current conversation; returns what it was.
    pub fn clear_conversation(&self, user_id: &str) -> Option<String> {
        self.lock().remove(user_id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // A panic while holding the lock cannot leave the map half-written (single
        // insert/get/remove calls), so a poisoned lock is still good to use.
        self.conversations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Starts the control thread. It runs until every [`ControlHandle`] is dropped (the
/// shards and the caller); requests still in flight then end with
/// [`PermissionDenied::ControlPlaneDown`].
pub fn start(
    config: &Config,
) -> Result<(ControlHandle, std::thread::JoinHandle<()>), ControlError> {
    start_with(
        config.permissions_url.as_deref(),
        config.permissions_timeout,
    )
}

/// [`start`] with the two settings it reads.
pub fn start_with(
    permissions_url: Option<&str>,
    permission_timeout: Duration,
) -> Result<(ControlHandle, std::thread::JoinHandle<()>), ControlError> {
    let base = permissions_url
        .map(|u| {
            crate::config::permissions_base(u)
                .and_then(|n| url::Url::parse(&n).ok())
                .ok_or_else(|| ControlError::Url(u.to_string()))
        })
        .transpose()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("corelay-control")
        .build()
        .map_err(ControlError::Runtime)?;
    let client = {
        let _in_runtime = runtime.enter();
        reqwest::Client::builder()
            // Any answer but 2xx refuses: a redirect is not followed.
            .redirect(reqwest::redirect::Policy::none())
            // The permission service is an internal service: connect to it directly,
            // whatever HTTP_PROXY says.
            .no_proxy()
            .connect_timeout(permission_timeout)
            .user_agent(concat!("corelay/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ControlError::Client(e.to_string()))?
    };
    let (tx, rx) = async_channel::bounded(QUEUE);
    let state = Arc::new(ControlState {
        client,
        permissions: base,
        permission_timeout,
    });
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || runtime.block_on(serve(state, rx)))
        .map_err(ControlError::Thread)?;
    let handle = ControlHandle {
        requests: tx,
        permissions: permissions_url.is_some(),
        permission_timeout,
        conversations: Conversations::default(),
    };
    Ok((handle, thread))
}

/// What the control thread's tasks share.
struct ControlState {
    client: reqwest::Client,
    permissions: Option<url::Url>,
    permission_timeout: Duration,
}

/// The control thread's loop: one task per request.
async fn serve(state: Arc<ControlState>, requests: async_channel::Receiver<Request>) {
    tracing::debug!(
        permissions = state.permissions.as_ref().map(|u| u.as_str()),
        "control plane running"
    );
    while let Ok(request) = requests.recv().await {
        match request {
            Request::CheckPermission {
                user_id,
                conversation_id,
                reply,
            } => {
                let state = state.clone();
                tokio::spawn(async move {
                    let (answer, response) =
                        match check_permission(&state, &user_id, &conversation_id).await {
                            Ok(response) => (Ok(()), response),
                            Err(denied) => (Err(denied), None),
                        };
                    let _ = reply.send(answer);
                    // Read (a bounded part of) the body afterwards, off the client's
                    // path, so the connection can serve the next check.
                    if let Some(response) = response {
                        drain(response, state.permission_timeout).await;
                    }
                });
            }
        }
    }
    tracing::debug!("control plane stopped");
}

/// A successful check keeps its response so that the body can be drained.
type Verdict = Result<Option<reqwest::Response>, PermissionDenied>;

/// The URL of one check: `{base}/user/{user}/conversation/{conversation}`, each id one
/// percent-encoded path segment.
pub fn permission_url(base: &url::Url, user_id: &str, conversation_id: &str) -> url::Url {
    let mut url = base.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend(["user", user_id, "conversation", conversation_id]);
    }
    url
}

async fn check_permission(state: &ControlState, user_id: &str, conversation_id: &str) -> Verdict {
    let Some(base) = &state.permissions else {
        return Ok(None);
    };
    let url = permission_url(base, user_id, conversation_id);
    let timeout = state.permission_timeout;
    let sent = tokio::time::timeout(timeout, state.client.get(url).send()).await;
    let verdict = match sent {
        Err(_) => Err(PermissionDenied::Timeout(timeout)),
        Ok(Err(e)) if e.is_timeout() => Err(PermissionDenied::Timeout(timeout)),
        Ok(Err(e)) => Err(PermissionDenied::Unreachable(error_chain(&e))),
        Ok(Ok(response)) if response.status().is_success() => Ok(Some(response)),
        Ok(Ok(response)) => Err(PermissionDenied::Refused {
            status: response.status().as_u16(),
        }),
    };
    match &verdict {
        Ok(_) => tracing::debug!(
            user = user_id,
            conversation = conversation_id,
            "join allowed"
        ),
        Err(PermissionDenied::Refused { status }) => tracing::info!(
            user = user_id,
            conversation = conversation_id,
            status,
            "join refused by the permission service"
        ),
        Err(e) => tracing::warn!(
            user = user_id,
            conversation = conversation_id,
            "join refused: {e}"
        ),
    }
    verdict
}

/// reqwest's error with its causes ("error sending request: ...: Connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

async fn drain(mut response: reqwest::Response, limit: Duration) {
    let _ = tokio::time::timeout(limit, async {
        let mut read = 0;
        while let Ok(Some(chunk)) = response.chunk().await {
            read += chunk.len();
            if read > MAX_DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A permission service on loopback answering `status` (or nothing, for 0) to every
    /// request; returns its base URL and the paths it was asked for.
    fn service(status: u16) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(16) {
                let Ok(mut stream) = stream else { return };
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let n = stream.read(&mut buf).unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                    log.lock().unwrap().push(path);
                    if status == 0 {
                        std::thread::sleep(Duration::from_secs(5));
                        return;
                    }
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    );
                });
            }
        });
        (base, seen)
    }

    fn check(
        handle: &ControlHandle,
        user: &str,
        conversation: &str,
    ) -> Result<(), PermissionDenied> {
        // Not a tokio runtime: the handle's futures work on any executor.
        futures::executor::block_on(handle.check_permission(user, conversation))
    }

    #[test]
    fn without_a_url_every_join_is_allowed() {
        let (handle, _) = start_with(None, Duration::from_millis(100)).unwrap();
        assert!(!handle.permissions_configured());
        assert_eq!(check(&handle, "u", "c"), Ok(()));
    }

    #[test]
    fn answers_of_the_service_decide() {
        let (base, seen) = service(200);
        let (handle, _) = start_with(Some(&base), Duration::from_millis(2000)).unwrap();
        assert_eq!(check(&handle, "alice", "c-1"), Ok(()));
        assert_eq!(
            seen.lock().unwrap().as_slice(),
            ["/user/alice/conversation/c-1"]
        );

        let (base, _) = service(403);
        let (handle, _) = start_with(Some(&base), Duration::from_millis(2000)).unwrap();
        assert_eq!(
            check(&handle, "alice", "c-1"),
            Err(PermissionDenied::Refused { status: 403 })
        );
        let (base, _) = service(302);
        let (handle, _) = start_with(Some(&base), Duration::from_millis(2000)).unwrap();
        assert_eq!(
            check(&handle, "alice", "c-1"),
            Err(PermissionDenied::Refused { status: 302 }),
            "redirects are not followed"
        );
    }

    #[test]
    fn silence_and_a_closed_port_refuse_in_time() {
        let (base, _) = service(0);
        let (handle, _) = start_with(Some(&base), Duration::from_millis(300)).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            check(&handle, "alice", "c-1"),
            Err(PermissionDenied::Timeout(Duration::from_millis(300)))
        );
        assert!(started.elapsed() < Duration::from_millis(1300));

        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (handle, _) = start_with(
            Some(&format!("http://127.0.0.1:{port}")),
            Duration::from_millis(300),
        )
        .unwrap();
        match check(&handle, "alice", "c-1") {
            Err(PermissionDenied::Unreachable(m)) => assert!(m.contains("refused"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn https_is_spoken_and_the_certificate_verified() {
        use futures_rustls::rustls;
        // A TLS permission service whose self-signed certificate no CA vouches for: the
        // client speaks TLS to it and refuses the certificate.
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        let config = crate::http::tls::server_config(&cert, &key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut buf = [0u8; 64];
            // The client's alert ends the handshake.
            tls.read(&mut buf).map_err(|e| e.to_string())
        });
        let base = format!("https://localhost:{port}");
        let (handle, _) = start_with(Some(&base), Duration::from_millis(2000)).unwrap();
        match check(&handle, "alice", "c-1") {
            Err(PermissionDenied::Unreachable(m)) => {
                assert!(m.to_lowercase().contains("certificate"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        let server_saw = server.join().unwrap().unwrap_err();
        assert!(server_saw.contains("UnknownCA"), "{server_saw}");
    }

    #[test]
    fn check_urls_keep_the_base_path_and_encode_ids() {
        let url = |base: &str, u: &str, c: &str| {
            permission_url(&url::Url::parse(base).unwrap(), u, c).to_string()
        };
        assert_eq!(
            url("http://p:8080", "a", "b"),
            "http://p:8080/user/a/conversation/b"
        );
        assert_eq!(
            url("https://p/api/", "a", "b"),
            "https://p/api/user/a/conversation/b"
        );
        assert_eq!(
            url("http://p/api", "a/b", "c d"),
            "http://p/api/user/a%2Fb/conversation/c%20d"
        );
    }

    #[test]
    fn the_current_conversation_is_shared_by_every_clone() {
        let (handle, _) = start_with(None, Duration::from_millis(100)).unwrap();
        let other = handle.clone();
        assert_eq!(handle.set_conversation("alice", "c1"), None);
        let seen = std::thread::spawn(move || other.current_conversation("alice"))
            .join()
            .unwrap();
        assert_eq!(seen.as_deref(), Some("c1"));
        assert_eq!(
            handle.set_conversation("alice", "c2").as_deref(),
            Some("c1")
        );
        assert_eq!(handle.current_conversation("alice").as_deref(), Some("c2"));
        assert_eq!(handle.current_conversation("bob"), None);
        assert_eq!(handle.clear_conversation("alice").as_deref(), Some("c2"));
        assert_eq!(handle.current_conversation("alice"), None);
    }

    #[test]
    fn the_thread_ends_with_the_last_handle() {
        let (handle, thread) = start_with(None, Duration::from_millis(100)).unwrap();
        drop(handle);
        thread.join().unwrap();
    }
}
