//! Reading one request head (and body) from a stream, with size limits.

use futures::{AsyncRead, AsyncReadExt};

/// Limits on a request head; over them the client gets 431.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    pub max_bytes: usize,
    pub max_headers: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            max_bytes: 16 * 1024,
            max_headers: 64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("connection closed")]
    Closed,
    #[error("request head too large")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A parsed request head. Bytes read past the head stay in the caller's buffer.
#[derive(Debug, Clone)]
pub struct Head {
    pub method: String,
    /// The path without the query string, percent-decoding not applied.
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    /// The head as received, for handing the request to another shard.
    pub raw: Vec<u8>,
}

impl Head {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a header holds a token in its comma-separated list (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// Bearer token from `Authorization`, else `?token=`.
    pub fn token(&self) -> Option<&str> {
        self.header("authorization")
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
            })
            .or_else(|| self.query("token"))
    }

    pub fn content_length(&self) -> Result<usize, HeadError> {
        match self.header("content-length") {
            None => Ok(0),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| HeadError::Malformed("bad Content-Length".into())),
        }
    }

    /// Whether the client wants the connection kept open after this request.
    pub fn keep_alive(&self) -> bool {
        !self.header_has_token("connection", "close")
    }
}

/// Reads until a complete head is in `buf`, parses it, and removes it from `buf`; what
/// follows the head (a body, pipelined bytes) stays in `buf`.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: HeadLimits,
) -> Result<Head, HeadError> {
    let mut chunk = [0u8; 4096];
    loop {
        if !buf.is_empty() {
            if let Some((mut head, len)) = parse(buf, limits)? {
                head.raw = buf.drain(..len).collect();
                return Ok(head);
            }
        }
        if buf.len() >= limits.max_bytes {
            return Err(HeadError::TooLarge);
        }
        let want = chunk.len().min(limits.max_bytes - buf.len());
        let n = stream.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse(buf: &[u8], limits: HeadLimits) -> Result<Option<(Head, usize)>, HeadError> {
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Partial) => Ok(None),
        Ok(httparse::Status::Complete(len)) => {
            if len > limits.max_bytes {
                return Err(HeadError::TooLarge);
            }
            let target = req.path.unwrap_or("/");
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, parse_query(q)),
                None => (target, Vec::new()),
            };
            let headers = req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            Ok(Some((
                Head {
                    method: req.method.unwrap_or("").to_string(),
                    path: path.to_string(),
                    query,
                    headers,
                    raw: Vec::new(),
                },
                len,
            )))
        }
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` and `+` in a query component; invalid escapes stay as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads a body of `len` bytes, starting with what `buf` already holds.
pub async fn read_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    len: usize,
) -> Result<Vec<u8>, HeadError> {
    let mut chunk = [0u8; 8192];
    while buf.len() < len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let rest = buf.split_off(len);
    Ok(std::mem::replace(buf, rest))
}

/// Longest chunk-size line or trailer section accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

impl Head {
    /// Whether the body comes chunked (`Transfer-Encoding: chunked`).
    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
    }
}

/// Reads a chunked body (RFC 9112 section 7.1) of at most `limit` bytes, starting with what
/// `buf` already holds; bytes after the body stay in `buf`. Over the limit: `TooLarge`.
pub async fn read_chunked_body<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<Vec<u8>, HeadError> {
    let mut body = Vec::new();
    loop {
        let line = take_line(stream, buf).await?;
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| HeadError::Malformed(format!("bad chunk size {size:?}")))?;
        if size == 0 {
            // Trailer fields, up to the empty line.
            while !take_line(stream, buf).await?.is_empty() {}
            return Ok(body);
        }
        if body.len().saturating_add(size) > limit {
            return Err(HeadError::TooLarge);
        }
        fill(stream, buf, size + 2).await?;
        if &buf[size..size + 2] != b"\r\n" {
            return Err(HeadError::Malformed(
                "chunk data not followed by CRLF".into(),
            ));
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// Reads until `buf` holds at least `len` bytes.
async fn fill<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    len: usize,
) -> Result<(), HeadError> {
    let mut chunk = [0u8; 8192];
    while buf.len() < len {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(())
}

/// Takes one CRLF-terminated line off the front of `buf`, reading as needed.
async fn take_line<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> Result<String, HeadError> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 2);
            return Ok(line);
        }
        if buf.len() > MAX_CHUNK_LINE {
            return Err(HeadError::Malformed("chunk line too long".into()));
        }
        let want = buf.len() + 1;
        fill(stream, buf, want).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        futures::executor::block_on(f)
    }

    #[test]
    fn parses_head_and_keeps_the_rest() {
        let mut src = futures::io::Cursor::new(
            b"GET /p2p/ns?token=a%2Bb&x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\nEXTRA"
                .to_vec(),
        );
        let mut buf = Vec::new();
        let head = run(read_head(&mut src, &mut buf, HeadLimits::default())).unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.path, "/p2p/ns");
        assert_eq!(head.query("token"), Some("a+b"));
        assert_eq!(head.header("UPGRADE"), Some("websocket"));
        assert_eq!(buf, b"EXTRA");
    }

    #[test]
    fn oversized_head_and_too_many_headers_are_refused() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 20_000));
        let mut src = futures::io::Cursor::new(big);
        let r = run(read_head(&mut src, &mut Vec::new(), HeadLimits::default()));
        assert!(matches!(r, Err(HeadError::TooLarge)));

        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..70 {
            many.extend(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        let mut src = futures::io::Cursor::new(many);
        let r = run(read_head(&mut src, &mut Vec::new(), HeadLimits::default()));
        assert!(matches!(r, Err(HeadError::TooLarge)));
    }

    #[test]
    fn bearer_token_wins_over_query() {
        let mut src = futures::io::Cursor::new(
            b"POST /x?token=q HTTP/1.1\r\nAuthorization: Bearer hdr\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
        );
        let mut buf = Vec::new();
        let head = run(read_head(&mut src, &mut buf, HeadLimits::default())).unwrap();
        assert_eq!(head.token(), Some("hdr"));
        let body = run(read_body(
            &mut src,
            &mut buf,
            head.content_length().unwrap(),
        ))
        .unwrap();
        assert_eq!(body, b"abc");
    }

    #[test]
    fn chunked_bodies_are_decoded_and_bounded() {
        let mut src =
            futures::io::Cursor::new(b"o\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT".to_vec());
        let mut buf = b"5\r\nhell".to_vec();
        let body = run(read_chunked_body(&mut src, &mut buf, 100)).unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(buf, b"NEXT");
        let mut src = futures::io::Cursor::new(b"ff\r\n".to_vec());
        let r = run(read_chunked_body(&mut src, &mut Vec::new(), 100));
        assert!(matches!(r, Err(HeadError::TooLarge)));
        let mut src = futures::io::Cursor::new(b"zz\r\n".to_vec());
        let r = run(read_chunked_body(&mut src, &mut Vec::new(), 100));
        assert!(matches!(r, Err(HeadError::Malformed(_))));
    }

    #[test]
    fn percent_decoding_tolerates_bad_escapes() {
        assert_eq!(percent_decode("a%20b%zz%"), "a b%zz%");
    }
}
