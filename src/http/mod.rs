//! A small HTTP/1.1 layer over any async byte stream: request heads (httparse), bodies by
//! Content-Length or chunked, responses, and the WebSocket upgrade.

pub mod api_docs;
pub mod request;
pub mod response;
pub mod tls;
pub mod ws;

pub use request::{read_body, read_chunked_body, read_head, Head, HeadError, HeadLimits};
pub use response::Response;
