//! Panic isolation: what a shard does when handling one session's message or one room's
//! packet panics, and the test-only fault injection that proves it.
//!
//! - Every task a shard spawns for a client runs under [`spawn_guarded`]: a panic ends
//!   that task (its connection closes), never the shard's executor.
//! - A WebSocket or SockJS session catches a panic of its own handling: that session is
//!   closed with 1011 "internal error" and leaves its room; the others go on.
//! - The UDP driver catches a panic of the media engine: the room whose transport was
//!   being worked on is torn down (its peers are told, 1011 on their signaling sessions),
//!   and the driver goes on with the other rooms.
//!
//! Fault injection exists in debug builds only, and only with `CORELAY_FAULT_INJECTION=1`
//! in the environment: a message that contains [`SESSION_MARKER`] panics while its session
//! handles it, and a datagram for a transport whose room id contains [`ROOM_MARKER`] panics
//! in the engine. A release build has neither.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures::FutureExt;

use super::state::Shard;

/// A message that contains this panics while its session handles it (fault injection).
pub const SESSION_MARKER: &str = "corelay-fault:panic";
/// A datagram for a room whose id contains this panics in the engine (fault injection).
#[cfg_attr(not(debug_assertions), allow(dead_code))]
pub const ROOM_MARKER: &str = "corelay-fault-room";
/// What the sessions of a room torn down after a panic are told.
pub const ROOM_CLOSED: &str = "internal error: the room was closed";

/// Whether fault injection is on: a debug build with `CORELAY_FAULT_INJECTION=1`.
pub fn enabled() -> bool {
    #[cfg(debug_assertions)]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            let on = std::env::var("CORELAY_FAULT_INJECTION").is_ok_and(|v| v == "1");
            if on {
                tracing::warn!(
                    "fault injection is on (CORELAY_FAULT_INJECTION=1, debug build): \
                     for tests only"
                );
            }
            on
        })
    }
    #[cfg(not(debug_assertions))]
    {
        false
    }
}

/// Panics if fault injection is on and `text` asks for it.
pub fn on_message(text: &str) {
    if enabled() && text.contains(SESSION_MARKER) {
        panic!("fault injection: a message asked for a panic ({SESSION_MARKER})");
    }
}

/// Replaces the default panic hook: a panic is logged at error level (thread, where, what)
/// through the log, at once; with RUST_BACKTRACE set, its backtrace is captured there but
/// resolved and logged by a thread of its own, since resolving symbols can take seconds
/// and a shard must not stall on it while it contains the panic.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed").to_string();
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let what = message(info.payload());
        tracing::error!(thread = %thread, at = %at, "panic: {what}");
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            let _ = std::thread::Builder::new()
                .name("panic-backtrace".into())
                .spawn(move || {
                    tracing::error!(thread = %thread, at = %at, "backtrace of the panic:\n{backtrace}")
                });
        }
    }));
}

/// The text of a panic's payload.
pub fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".to_string()
    }
}

/// Spawns a task on this shard whose panic ends the task alone (logged), never the
/// shard's executor (glommio lets a task's panic unwind out of the executor).
pub fn spawn_guarded(shard: usize, what: &'static str, task: impl Future<Output = ()> + 'static) {
    glommio::spawn_local(async move {
        if let Err(payload) = AssertUnwindSafe(task).catch_unwind().await {
            tracing::error!(
                shard,
                task = what,
                panic = %message(payload.as_ref()),
                "a task panicked: it was ended, the shard goes on"
            );
        }
    })
    .detach();
}

/// After a caught panic: counts it and, when the engine was working on a transport,
/// tears down that transport's room (its peers are told [`ROOM_CLOSED`]). `site` says
/// where it was caught, for the log.
pub fn contain(shard: &Shard, site: &str, payload: &(dyn Any + Send)) {
    shard.counters.count_error("internal_panic");
    let text = message(payload);
    let room = std::panic::catch_unwind(AssertUnwindSafe(|| {
        shard.engine.borrow_mut().take_panicked_room()
    }))
    .ok()
    .flatten();
    let Some(room) = room else {
        tracing::error!(shard = shard.id, site, panic = %text, "caught a panic; the shard goes on");
        return;
    };
    let closed = std::panic::catch_unwind(AssertUnwindSafe(|| {
        shard
            .engine
            .borrow_mut()
            .close_room(Instant::now(), &room, ROOM_CLOSED)
    }));
    match closed {
        Ok(peers) => tracing::error!(
            shard = shard.id,
            site,
            room = %room,
            peers,
            panic = %text,
            "caught a panic in the media engine: the room was closed and its peers told; \
             the shard goes on"
        ),
        Err(again) => tracing::error!(
            shard = shard.id,
            site,
            room = %room,
            panic = %text,
            teardown_panic = %message(again.as_ref()),
            "caught a panic in the media engine, and closing its room panicked too; the \
             shard goes on"
        ),
    }
    if let Err(again) = std::panic::catch_unwind(AssertUnwindSafe(|| shard.after_engine_call())) {
        tracing::error!(shard = shard.id, panic = %message(again.as_ref()), "delivering the notices after a panic panicked");
    }
}
