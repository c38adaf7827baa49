//! How requests reach a SockJS HTTP session (see `sockjs_session`): the process-wide
//! directory of which shard has each session, and a session's handle, its commands and the
//! receiving request it is handed. Plain types, so the shard's state can hold them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use futures::channel::{mpsc, oneshot};

use super::conn::Conn;
use crate::signal::sockjs::Receiving;

/// Which shard has each session, for the whole process. Written when a session starts,
/// moves (before it arrives, so requests may beat it there: they wait [`ARRIVAL_WAIT`]) and
/// ends. Only SockJS HTTP requests look here, never media.
#[derive(Default)]
pub struct Directory {
    map: Mutex<HashMap<String, usize>>,
}

impl Directory {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<usize> {
        self.lock().get(id).copied()
    }

    /// Takes `id` for `shard` unless another shard has it; `Err` names that shard.
    pub(super) fn claim(&self, id: &str, shard: usize) -> Result<(), usize> {
        let mut map = self.lock();
        match map.get(id) {
            Some(&other) if other != shard => Err(other),
            _ => {
                map.insert(id.to_string(), shard);
                Ok(())
            }
        }
    }

    pub(super) fn set(&self, id: &str, shard: usize) {
        self.lock().insert(id.to_string(), shard);
    }

    pub(super) fn release(&self, id: &str, shard: usize) {
        let mut map = self.lock();
        if map.get(id) == Some(&shard) {
            map.remove(id);
        }
    }
}

/// A shard's way to reach one of its sessions.
#[derive(Clone)]
pub struct Handle {
    pub(super) cmds: mpsc::UnboundedSender<Cmd>,
    /// The token's user the session belongs to (`None`: anonymous).
    pub user: Option<String>,
}

/// What a request asks of a session.
pub enum Cmd {
    /// `xhr_send`: client messages, in order. `done` fires once they are queued; dropped
    /// unanswered, the session is gone.
    Send {
        messages: Vec<String>,
        done: oneshot::Sender<()>,
    },
    /// A receiving request hands its connection over.
    Receive(Box<Receiver>),
}

/// A receiving request (`xhr_streaming`, `xhr` or `eventsource`), with its connection.
pub struct Receiver {
    pub conn: Conn,
    /// Bytes read after the request.
    pub leftover: Vec<u8>,
    pub peer: Option<SocketAddr>,
    pub kind: Receiving,
    pub keep_alive: bool,
    /// Headers of the answer (content type, caching, CORS).
    pub headers: Vec<(String, String)>,
    /// The request as received, to hand it to another shard.
    pub raw: Vec<u8>,
}

impl Handle {
    /// Queues a command; a closed session hands it back.
    pub fn send(&self, cmd: Cmd) -> Result<(), Cmd> {
        self.cmds.unbounded_send(cmd).map_err(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_claims_moves_and_releases() {
        let d = Directory::default();
        assert_eq!(d.claim("s", 0), Ok(()));
        assert_eq!(d.claim("s", 1), Err(0), "another shard has it");
        assert_eq!(d.claim("s", 0), Ok(()), "a stale entry of our own");
        d.set("s", 1);
        assert_eq!(d.get("s"), Some(1));
        d.release("s", 0);
        assert_eq!(
            d.get("s"),
            Some(1),
            "only the shard that has it releases it"
        );
        d.release("s", 1);
        assert_eq!(d.get("s"), None);
    }
}
