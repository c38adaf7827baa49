//! SockJS (protocol 0.3.3, what the npm `sockjs-client` 1.6 speaks) for the relay dialect
//! (PROTOCOLS.md section 5): the URL layout under a prefix, the frames, and [`SockJs`], an
//! adapter that runs any inner [`Dialect`] inside SockJS framing on a WebSocket.
//!
//! Pure, like every dialect. The HTTP transports (`xhr_streaming`, `xhr` polling,
//! `xhr_send`) use the same frames and [`feed`] from `shard/`, which keeps their sessions
//! alive across requests.

use std::collections::VecDeque;
use std::time::Duration;

use super::dialect::{CloseCode, Context, Dialect, Step};
use crate::auth::validate_id;
use crate::http::request::percent_decode;
use crate::sfu::Notice;

/// The open frame, the first thing a session sends.
pub const OPEN: &str = "o";
/// The heartbeat frame.
pub const HEARTBEAT: &str = "h";
/// A heartbeat goes out when nothing was sent to the client for this long (sockjs-node's
/// `heartbeat_delay`).
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(25);
/// Longest `{server}` or `{session}` path segment accepted.
pub const MAX_ID_LEN: usize = 128;
/// The prefix of the original server (sockjs-node), namespace "".
pub const ECHO_PREFIX: &str = "/echo";
/// The namespaced prefix: `/sockjs/{namespace}`.
pub const NAMESPACED_PREFIX: &str = "/sockjs/";

/// A transport of a framed session (`<prefix>/<server>/<session>/<transport>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Websocket,
    XhrStreaming,
    /// `xhr`: long polling.
    XhrPolling,
    XhrSend,
    EventSource,
}

impl Transport {
    fn parse(s: &str) -> Option<Transport> {
        Some(match s {
            "websocket" => Transport::Websocket,
            "xhr_streaming" => Transport::XhrStreaming,
            "xhr" => Transport::XhrPolling,
            "xhr_send" => Transport::XhrSend,
            "eventsource" => Transport::EventSource,
            _ => return None,
        })
    }

    /// How requests of this transport receive frames; `None` for those that do not.
    pub fn receiving(self) -> Option<Receiving> {
        match self {
            Transport::XhrStreaming => Some(Receiving::XhrStreaming),
            Transport::XhrPolling => Some(Receiving::XhrPolling),
            Transport::EventSource => Some(Receiving::EventSource),
            Transport::Websocket | Transport::XhrSend => None,
        }
    }
}

/// The bytes of `h` that open every `xhr_streaming` response (sockjs-node's prelude, for
/// browsers that show nothing of a response before its first 2 KiB).
pub const PRELUDE_BYTES: usize = 2048;

/// How a receiving HTTP transport writes frames on its response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receiving {
    /// `xhr_streaming`: one long response, each frame a line.
    XhrStreaming,
    /// `xhr`: one frame (a line) per response.
    XhrPolling,
    /// `eventsource`: one long `text/event-stream` response, each frame an event.
    EventSource,
}

impl Receiving {
    /// Whether one response carries many frames.
    pub fn is_stream(self) -> bool {
        self != Receiving::XhrPolling
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Receiving::EventSource => "text/event-stream; charset=UTF-8",
            _ => "application/javascript; charset=UTF-8",
        }
    }

    /// What opens a stream before its first frame.
    pub fn prelude(self) -> String {
        match self {
            Receiving::XhrStreaming => format!("{}\n", "h".repeat(PRELUDE_BYTES)),
            Receiving::EventSource => "\r\n".to_string(),
            Receiving::XhrPolling => String::new(),
        }
    }

    /// One frame as written on the response.
    pub fn frame(self, frame: &str) -> String {
        match self {
            Receiving::EventSource => format!("data: {frame}\r\n\r\n"),
            _ => format!("{frame}\n"),
        }
    }
}

/// What a path under a SockJS prefix names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `<prefix>` or `<prefix>/`: the greeting.
    Greeting,
    /// `<prefix>/info`.
    Info,
    /// `<prefix>/websocket`: a WebSocket without framing.
    RawWebsocket,
    /// `<prefix>/<server>/<session>/<transport>`.
    Session {
        session: String,
        transport: Transport,
    },
}

/// A SockJS path: the relay namespace of its prefix and what it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub namespace: String,
    pub target: Target,
}

/// Where a path points: `None` when it is under no SockJS prefix, `Err` (a reason for a
/// 404) when it is under one but names nothing served.
pub fn route(path: &str) -> Option<Result<Route, String>> {
    let (namespace, rest) = if let Some(rest) = path.strip_prefix(ECHO_PREFIX) {
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        (String::new(), rest)
    } else if let Some(tail) = path.strip_prefix(NAMESPACED_PREFIX) {
        let (ns, rest) = tail.find('/').map_or((tail, ""), |i| tail.split_at(i));
        // Clients may percent-encode the segment (encodeURIComponent turns ':' into %3A).
        let ns = percent_decode(ns);
        if let Err(m) = validate_id("namespace", &ns) {
            return Some(Err(m));
        }
        (ns, rest)
    } else {
        return None;
    };
    Some(target(rest).map(|target| Route { namespace, target }))
}

fn target(rest: &str) -> Result<Target, String> {
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    match segments.as_slice() {
        [] | [""] => Ok(Target::Greeting),
        ["info"] => Ok(Target::Info),
        ["websocket"] => Ok(Target::RawWebsocket),
        [server, session, transport] => {
            for (what, id) in [("server", server), ("session", session)] {
                if id.is_empty() || id.len() > MAX_ID_LEN || id.contains('.') {
                    return Err(format!(
                        "the SockJS {what} id must be 1-{MAX_ID_LEN} characters without '.'"
                    ));
                }
            }
            let transport = Transport::parse(transport).ok_or_else(|| {
                format!(
                    "SockJS transport {transport:?} is not served (served: websocket, \
                     xhr_streaming, xhr, xhr_send, eventsource)"
                )
            })?;
            Ok(Target::Session {
                session: session.to_string(),
                transport,
            })
        }
        _ => Err(format!("no SockJS endpoint at {rest:?}")),
    }
}

/// The `info` answer: `{"websocket", "cookie_needed", "origins", "entropy"}`.
pub fn info(entropy: u32) -> serde_json::Value {
    serde_json::json!({
        "websocket": true,
        "cookie_needed": false,
        "origins": ["*:*"],
        "entropy": entropy,
    })
}

/// The greeting sockjs-node answers on the bare prefix.
pub const GREETING: &str = "Welcome to SockJS!\n";

/// A message frame: `a` and the JSON array of the texts.
pub fn messages(texts: &[String]) -> String {
    format!(
        "a{}",
        serde_json::to_string(texts).expect("strings serialize")
    )
}

/// A close frame: `c[code,"reason"]`.
pub fn close(code: u16, reason: &str) -> String {
    format!(
        "c{}",
        serde_json::to_string(&(code, reason)).expect("serializes")
    )
}

/// The messages of one client frame (a WebSocket message or an `xhr_send` body): a JSON
/// array of strings, or a single JSON string. An empty frame carries none.
pub fn decode(frame: &str) -> Result<Vec<String>, String> {
    if frame.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: serde_json::Value = serde_json::from_str(frame)
        .map_err(|e| format!("broken SockJS framing: not JSON ({e})"))?;
    match value {
        serde_json::Value::String(s) => Ok(vec![s]),
        serde_json::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                serde_json::Value::String(s) => Ok(s),
                _ => Err(format!(
                    "broken SockJS framing: message {i} is not a JSON string"
                )),
            })
            .collect(),
        _ => Err("broken SockJS framing: expected a JSON array of strings".into()),
    }
}

/// How [`feed`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Every queued message was handled.
    Done,
    /// The message at the front of the queue belongs to the shard owning `key`.
    Relocate { key: String },
    /// The inner dialect closed the session; the rest of the queue was dropped.
    Close(CloseCode),
}

/// Hands queued client messages to `inner`, in order, collecting its replies in `out`,
/// until the queue is empty, a message must be handled on another shard (it stays at the
/// front of the queue, so nothing is lost or reordered when the session moves), or the
/// dialect closes.
pub fn feed(
    inner: &mut dyn Dialect,
    cx: &mut Context<'_>,
    inbox: &mut VecDeque<String>,
    out: &mut Vec<String>,
) -> Fed {
    while let Some(message) = inbox.pop_front() {
        match inner.on_text(cx, &message) {
            Step::Reply(replies) => out.extend(replies),
            Step::Relocate { key } => {
                inbox.push_front(message);
                return Fed::Relocate { key };
            }
            Step::Close(texts, code) => {
                out.extend(texts);
                inbox.clear();
                return Fed::Close(code);
            }
        }
    }
    Fed::Done
}

/// A WebSocket session in SockJS framing around an inner dialect: `o` on open, `h`
/// heartbeats, the inner dialect's texts as `a[...]`, `c[code,"reason"]` before closing;
/// the client sends JSON arrays of strings.
pub struct SockJs {
    inner: Box<dyn Dialect>,
    /// Messages of the current frame not handled yet (a relocation interrupted it).
    inbox: VecDeque<String>,
    /// Replies to the handled part of an interrupted frame.
    held: Vec<String>,
}

impl SockJs {
    pub fn new(inner: Box<dyn Dialect>) -> SockJs {
        SockJs {
            inner,
            inbox: VecDeque::new(),
            held: Vec::new(),
        }
    }

    fn framed(texts: Vec<String>) -> Vec<String> {
        if texts.is_empty() {
            Vec::new()
        } else {
            vec![messages(&texts)]
        }
    }
}

impl Dialect for SockJs {
    fn name(&self) -> &'static str {
        "sockjs"
    }

    fn on_text(&mut self, cx: &mut Context<'_>, text: &str) -> Step {
        // A frame interrupted by a relocation comes again: carry on with what is left.
        if self.inbox.is_empty() {
            match decode(text) {
                Ok(messages) => self.inbox.extend(messages),
                Err(reason) => return Step::Reply(vec![self.error_text(&reason)]),
            }
        }
        let mut out = std::mem::take(&mut self.held);
        match feed(self.inner.as_mut(), cx, &mut self.inbox, &mut out) {
            Fed::Done => Step::Reply(Self::framed(out)),
            Fed::Relocate { key } => {
                self.held = out;
                Step::Relocate { key }
            }
            Fed::Close(code) => Step::Close(Self::framed(out), code),
        }
    }

    fn error_text(&self, reason: &str) -> String {
        messages(&[self.inner.error_text(reason)])
    }

    fn on_close(&mut self, cx: &mut Context<'_>) {
        self.inner.on_close(cx);
    }

    fn notice(&mut self, notice: &Notice) -> Option<String> {
        self.inner.notice(notice).map(|t| messages(&[t]))
    }

    fn replaced_text(&self, reason: &str) -> String {
        messages(&[self.inner.replaced_text(reason)])
    }

    fn opening(&self) -> Option<String> {
        Some(OPEN.to_string())
    }

    fn heartbeat(&self) -> Option<(Duration, String)> {
        Some((HEARTBEAT_EVERY, HEARTBEAT.to_string()))
    }

    fn delivery(&self, text: &str) -> String {
        messages(&[text.to_string()])
    }

    fn closing(&self, code: u16, reason: &str) -> Option<String> {
        let reason = match (reason, code) {
            ("", 1000) => "Normal closure",
            ("", 1008) => "Policy violation",
            ("", _) => "Connection closed",
            (r, _) => r,
        };
        Some(close(code, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Authenticator;
    use crate::sfu::Engine;
    use crate::signal::p2p::{self, Rooms};

    fn session(path: &str, transport: Transport) -> Option<Result<Route, String>> {
        Some(Ok(Route {
            namespace: String::new(),
            target: Target::Session {
                session: path.into(),
                transport,
            },
        }))
    }

    #[test]
    fn paths_under_both_prefixes() {
        let r = |target| {
            Some(Ok(Route {
                namespace: String::new(),
                target,
            }))
        };
        assert_eq!(route("/echo"), r(Target::Greeting));
        assert_eq!(route("/echo/"), r(Target::Greeting));
        assert_eq!(route("/echo/info"), r(Target::Info));
        assert_eq!(route("/echo/websocket"), r(Target::RawWebsocket));
        assert_eq!(
            route("/echo/123/abc/websocket"),
            session("abc", Transport::Websocket)
        );
        assert_eq!(
            route("/echo/1/s/xhr_streaming"),
            session("s", Transport::XhrStreaming)
        );
        assert_eq!(route("/echo/1/s/xhr"), session("s", Transport::XhrPolling));
        assert_eq!(
            route("/echo/1/s/xhr_send"),
            session("s", Transport::XhrSend)
        );
        assert_eq!(route("/echoes"), None);
        assert_eq!(route("/p2p"), None);
        assert_eq!(
            route("/echo/1/s/eventsource"),
            session("s", Transport::EventSource)
        );
        assert!(matches!(route("/echo/1/s/htmlfile"), Some(Err(m)) if m.contains("not served")));
        assert!(matches!(route("/echo/1/a.b/xhr"), Some(Err(_))));
        assert!(matches!(route("/echo/1/s"), Some(Err(_))));
        let ns = route("/sockjs/team%3A1/info").unwrap().unwrap();
        assert_eq!(ns.namespace, "team:1");
        assert_eq!(ns.target, Target::Info);
        assert_eq!(
            route("/sockjs/ns").unwrap().unwrap().target,
            Target::Greeting
        );
        assert!(matches!(route("/sockjs/bad%20ns/info"), Some(Err(_))));
        assert!(matches!(route("/sockjs/"), Some(Err(_))));
    }

    #[test]
    fn frames_and_client_messages() {
        assert_eq!(messages(&["x\"y".into(), "z".into()]), r#"a["x\"y","z"]"#);
        assert_eq!(close(3000, "Go away!"), r#"c[3000,"Go away!"]"#);
        assert_eq!(decode(r#"["a","b"]"#).unwrap(), vec!["a", "b"]);
        assert_eq!(decode(r#""one""#).unwrap(), vec!["one"]);
        assert_eq!(decode("").unwrap(), Vec::<String>::new());
        assert!(decode("[\"a\"").unwrap_err().contains("not JSON"));
        assert!(decode("[1]").unwrap_err().contains("message 0"));
        assert!(decode("{}").is_err());
        assert_eq!(Receiving::EventSource.frame("o"), "data: o\r\n\r\n");
        assert_eq!(Receiving::XhrPolling.frame("h"), "h\n");
        assert_eq!(Receiving::XhrStreaming.prelude().len(), PRELUDE_BYTES + 1);
        let i = info(7);
        assert_eq!(i["websocket"], true);
        assert_eq!(i["cookie_needed"], false);
        assert_eq!(i["origins"][0], "*:*");
        assert_eq!(i["entropy"], 7);
    }

    fn pkt(event: &str, user: &str, room: &str) -> String {
        p2p::packet(event, user, room, "")
    }

    /// Runs `f` with a context whose shard owns only keys for which `owns` says so.
    fn with_cx<R>(
        rooms: &mut Rooms,
        owns: &dyn Fn(&str) -> bool,
        f: impl FnOnce(&mut Context<'_>) -> R,
    ) -> (R, Vec<p2p::Delivery>) {
        let mut engine = Engine::new(0, "127.0.0.1:1".parse().unwrap()).unwrap();
        let auth = Authenticator::new(b"secret-secret-secret");
        let mut cx = Context::new(
            std::time::Instant::now(),
            1,
            0,
            &mut engine,
            rooms,
            &auth,
            owns,
        );
        let r = f(&mut cx);
        (r, cx.deliveries)
    }

    fn relay(user: &str) -> SockJs {
        SockJs::new(Box::new(p2p::Session {
            namespace: String::new(),
            token_user: Some(user.into()),
            token_room: None,
            joined: None,
        }))
    }

    #[test]
    fn adapter_frames_replies_and_errors() {
        let mut s = relay("alice");
        assert_eq!(s.opening().as_deref(), Some("o"));
        assert_eq!(s.heartbeat(), Some((HEARTBEAT_EVERY, "h".to_string())));
        assert_eq!(s.delivery("{}"), r#"a["{}"]"#);
        assert_eq!(s.closing(1001, "bye").unwrap(), r#"c[1001,"bye"]"#);
        let mut rooms = Rooms::default();
        let frame = serde_json::to_string(&[pkt("ping", "alice", "r")]).unwrap();
        let (step, _) = with_cx(&mut rooms, &|_| true, |cx| s.on_text(cx, &frame));
        let Step::Reply(replies) = step else {
            panic!("{step:?}")
        };
        assert_eq!(replies.len(), 1);
        assert!(replies[0].starts_with("a[") && replies[0].contains("before connect"));
        let (step, _) = with_cx(&mut rooms, &|_| true, |cx| s.on_text(cx, "[1"));
        let Step::Reply(replies) = step else {
            panic!("{step:?}")
        };
        let inner: Vec<String> = serde_json::from_str(&replies[0][1..]).unwrap();
        assert!(inner[0].contains("broken SockJS framing"), "{inner:?}");
    }

    #[test]
    fn a_frame_interrupted_by_a_relocation_resumes_in_order() {
        let mut s = relay("alice");
        let mut rooms = Rooms::default();
        // An error reply, then connect (owned elsewhere), then ping.
        let frame = serde_json::to_string(&[
            pkt("broadcast", "alice", "r"),
            pkt("connect", "alice", "r"),
            pkt("ping", "alice", "r"),
        ])
        .unwrap();
        let (step, d) = with_cx(&mut rooms, &|_| false, |cx| s.on_text(cx, &frame));
        assert_eq!(
            step,
            Step::Relocate {
                key: "p2p:/r".into()
            }
        );
        assert!(d.is_empty());
        // On the owner, the same frame again: connect and ping, after the held error.
        let (step, d) = with_cx(&mut rooms, &|_| true, |cx| s.on_text(cx, &frame));
        let Step::Reply(replies) = step else {
            panic!("{step:?}")
        };
        let texts: Vec<String> = serde_json::from_str(&replies[0][1..]).unwrap();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(texts[0].contains("before connect"));
        assert!(texts[1].contains("\"Event\":\"ping\""));
        assert_eq!(d.len(), 1, "the connect packet to alice herself");
    }
}
