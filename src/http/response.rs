//! Responses: status, headers, body; written with Content-Length.

use futures::{AsyncWrite, AsyncWriteExt};

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// A HEAD answer: the same head, Content-Length included, but no body.
    pub omit_body: bool,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response {
            omit_body: false,
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Response::new(status)
            .header("Content-Type", "application/json")
            .body(value.to_string().into_bytes())
    }

    /// The answer to a token that does not admit the caller, the same on every endpoint:
    /// 403 for a valid token scoped to another room, 400 for a malformed id in it, 401
    /// for a missing, invalid or expired token.
    pub fn auth_error(e: &crate::auth::AuthError) -> Self {
        use crate::auth::AuthError;
        match e {
            AuthError::WrongRoom { .. } => Response::error(403, "forbidden", &e.to_string()),
            AuthError::BadId(_) => Response::error(400, "bad_request", &e.to_string()),
            _ => Response::error(401, "unauthorized", &e.to_string()),
        }
    }

    /// 405 with the `Allow` header naming what the endpoint takes.
    pub fn method_not_allowed(allow: &str) -> Self {
        Response::error(405, "method_not_allowed", &format!("use {allow}")).header("Allow", allow)
    }

    /// The JSON error body every endpoint uses: `{"error": {"code", "message"}}`.
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        let body = super::api_docs::ErrorBody::new(code, message);
        Response::json(
            status,
            &serde_json::to_value(&body).expect("error body serializes"),
        )
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn body(mut self, body: Vec<u8>) -> Self {
        self.body = body;
        self
    }

    pub fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        out.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        let mut bytes = out.into_bytes();
        if !self.omit_body {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }

    /// The head of a streamed answer (`Transfer-Encoding: chunked`): this response's status
    /// and headers; its body, if any, is not sent. Send [`chunk`]s, then [`LAST_CHUNK`].
    pub fn chunked_head(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("Transfer-Encoding: chunked\r\n");
        out.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        out.into_bytes()
    }

    pub async fn write_to<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        keep_alive: bool,
    ) -> std::io::Result<()> {
        stream.write_all(&self.to_bytes(keep_alive)).await?;
        stream.flush().await
    }
}

/// One chunk of a chunked body (never empty: an empty chunk ends the body).
pub fn chunk(data: &[u8]) -> Vec<u8> {
    debug_assert!(!data.is_empty());
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// The end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        411 => "Length Required",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
