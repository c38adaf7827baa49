//! The one-shot SDP dialect (`GET /connect`), in two forms fixed by the first message:
//! raw (the SDP offer in, the answer out, then the server closes the socket) and framed
//! (`offer::<sdp>` in, `answer::<sdp>` out, `ice::<candidate>` trickled in, the socket
//! open until the client closes it). Either way the peer connection outlives the socket.
//! The conversation is the user's current one (`POST /join`), else the token's room, else
//! `?conversation=`; the request is served on the conversation's shard (the runtime
//! decides that from the request, before this translator sees a message).

use super::dialect::{CloseCode, Context, Dialect, Step};

/// Who connects to which conversation.
#[derive(Debug, Clone)]
pub struct Target {
    pub user_id: String,
    pub user_name: String,
    pub conversation: String,
}

/// Which of the two message forms a `/connect` client speaks; fixed by its first message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The first message is the SDP offer itself (`v=0...`, as Beep's README shows): the
    /// answer goes back as is, then the server closes the socket (1000).
    Raw,
    /// `<type>::<payload>` messages, as Beep's server really speaks: `offer::<sdp>` in,
    /// `answer::<sdp>` out, then `ice::<candidate>` trickled in; the socket stays open
    /// until the client closes it.
    Framed,
}

/// What one `/connect` text message is.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// An SDP offer, and the form it came in.
    Offer(&'a str, Form),
    /// A trickled remote candidate (`ice::...`): the text after the first `::`.
    Ice(&'a str),
    /// `<type>::...` with any other type.
    Other(&'a str),
}

/// Classifies a message: `v=...` is a raw offer; `<type>::<rest>` is framed, keeping
/// everything after the first `::` (an SDP may contain `::` itself, e.g. in IPv6
/// addresses); anything else is handed on as a raw offer, for the SDP parser to refuse.
pub fn classify(text: &str) -> Message<'_> {
    if text.trim_start().starts_with("v=") {
        return Message::Offer(text, Form::Raw);
    }
    match text.split_once("::") {
        Some(("offer", sdp)) => Message::Offer(sdp, Form::Framed),
        Some(("ice", candidate)) => Message::Ice(candidate),
        Some((kind, _)) => Message::Other(kind),
        None => Message::Offer(text, Form::Raw),
    }
}

/// The candidate of an `ice::` message: a `candidate:...` line, or the JSON of an
/// `RTCIceCandidateInit` (`{"candidate": "candidate:...", ...}`) as browsers hand it out.
pub fn candidate_line(payload: &str) -> Result<String, String> {
    let payload = payload.trim();
    if !payload.starts_with('{') {
        return Ok(payload.to_string());
    }
    let init: serde_json::Value = serde_json::from_str(payload)
        .map_err(|e| format!("ice:: carries neither a candidate line nor JSON: {e}"))?;
    match init.get("candidate") {
        Some(serde_json::Value::String(c)) => Ok(c.clone()),
        Some(serde_json::Value::Null) | None => Ok(String::new()), // end of candidates
        Some(other) => Err(format!(
            "ice:: JSON candidate must be a string, not {other}"
        )),
    }
}

pub struct ConnectDialect {
    target: Target,
    /// Set once the offer is answered: its form, and the transport it made.
    answered: Option<(Form, String)>,
}

impl ConnectDialect {
    pub fn new(target: Target) -> Self {
        ConnectDialect {
            target,
            answered: None,
        }
    }

    fn offer(&mut self, cx: &mut Context<'_>, sdp: &str, form: Form) -> Step {
        let (now, conn) = (cx.now, cx.conn);
        let t = &self.target;
        let engine = &mut *cx.engine;
        let result = engine
            .join(now, conn, &t.conversation, &t.user_id, &t.user_name, None)
            .and_then(|_| {
                // The peer connection outlives the socket: the peer ends with it.
                engine.set_one_shot(conn);
                engine.connect_offer(now, conn, sdp)
            })
            .inspect_err(|_| engine.leave(now, conn));
        match result {
            Ok((transport, answer)) => {
                tracing::info!(shard = cx.shard, conversation = %t.conversation, user = %t.user_id, ?form, "one-shot peer connected");
                self.answered = Some((form, transport));
                match form {
                    // The peer connection lives on after the socket closes.
                    Form::Raw => Step::Close(vec![answer], CloseCode::Normal),
                    // The socket stays open for trickled candidates until the client
                    // closes it (and the peer connection lives on after that, too).
                    Form::Framed => Step::Reply(vec![format!("answer::{answer}")]),
                }
            }
            Err(e) => Step::Close(vec![error_json(&e.to_string())], CloseCode::Policy),
        }
    }

    fn ice(&self, cx: &mut Context<'_>, transport: &str, payload: &str) -> Step {
        let line = match candidate_line(payload) {
            Ok(l) => l,
            Err(m) => return Step::Reply(vec![error_json(&m)]),
        };
        match cx
            .engine
            .add_ice_candidate(cx.now, cx.conn, transport, &line)
        {
            Ok(()) => Step::Reply(Vec::new()),
            Err(e) => Step::Reply(vec![error_json(&e.to_string())]),
        }
    }
}

fn error_json(message: &str) -> String {
    serde_json::json!({"type": "error", "message": message}).to_string()
}

impl Dialect for ConnectDialect {
    fn name(&self) -> &'static str {
        "connect"
    }

    fn on_text(&mut self, cx: &mut Context<'_>, text: &str) -> Step {
        let message = classify(text);
        match (&self.answered, message) {
            (None, Message::Offer(sdp, form)) => self.offer(cx, sdp, form),
            (None, Message::Ice(_) | Message::Other(_)) => Step::Close(
                vec![error_json(
                    "the first message must be the offer: offer::<sdp>, or the SDP itself (v=0...)",
                )],
                CloseCode::Policy,
            ),
            (Some((Form::Framed, transport)), Message::Ice(payload)) => {
                let transport = transport.clone();
                self.ice(cx, &transport, payload)
            }
            (Some((Form::Framed, _)), Message::Offer(..)) => {
                Step::Reply(vec![error_json("one offer per connection")])
            }
            (Some((Form::Framed, _)), Message::Other(kind)) => Step::Reply(vec![error_json(
                &format!("unknown message type {kind:?}: after the offer, send ice::<candidate>"),
            )]),
            // A raw client's socket is closed after the answer; nothing more is read.
            (Some((Form::Raw, _)), _) => Step::Close(
                vec![error_json("one offer per connection")],
                CloseCode::Policy,
            ),
        }
    }

    fn error_text(&self, reason: &str) -> String {
        error_json(reason)
    }

    /// Nothing to release, in either form: the media session outlives the signaling
    /// socket (as on the original server, which never closes its peer connections) and
    /// ends with ICE consent.
    fn on_close(&mut self, _cx: &mut Context<'_>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_framed_offers_are_told_apart() {
        let sdp = "v=0\r\no=- 1 2 IN IP6 ::1\r\n";
        assert_eq!(classify(sdp), Message::Offer(sdp, Form::Raw));
        assert_eq!(
            classify(&format!("  {sdp}")),
            Message::Offer(&format!("  {sdp}")[..], Form::Raw)
        );
        // Everything after the first `::` is the SDP, `::` inside it included.
        let framed = format!("offer::{sdp}");
        assert_eq!(classify(&framed), Message::Offer(sdp, Form::Framed));
        assert_eq!(
            classify("ice::candidate:1 1 udp 2113937151 ::1 5000 typ host"),
            Message::Ice("candidate:1 1 udp 2113937151 ::1 5000 typ host")
        );
        assert_eq!(classify("answer::v=0"), Message::Other("answer"));
        assert_eq!(classify("hello"), Message::Offer("hello", Form::Raw));
    }

    #[test]
    fn candidates_come_as_lines_or_as_json() {
        assert_eq!(
            candidate_line(" candidate:1 1 udp 1 10.0.0.1 5000 typ host ").unwrap(),
            "candidate:1 1 udp 1 10.0.0.1 5000 typ host"
        );
        assert_eq!(
            candidate_line(r#"{"candidate":"candidate:1 1 udp 1 10.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}"#)
                .unwrap(),
            "candidate:1 1 udp 1 10.0.0.1 5000 typ host"
        );
        assert_eq!(candidate_line(r#"{"candidate": ""}"#).unwrap(), "");
        assert_eq!(candidate_line("").unwrap(), "");
        assert!(candidate_line("{oops").is_err());
        assert!(candidate_line(r#"{"candidate": 5}"#).is_err());
    }
}
