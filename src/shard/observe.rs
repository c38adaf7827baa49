//! What operators read: `/health`, `/latency` and `/metrics`, gathered from every shard
//! over the mesh.

use std::fmt::Write as _;
use std::rc::Rc;

use std::time::Duration;

use futures::future::{select, Either, FusedFuture, FutureExt};

use super::mesh::{Answer, MeshMsg, Query};
use super::state::Shard;
use crate::http::api_docs::{HealthBody, HealthStatus, ShardHealth, ShardSilent};
use crate::http::{Head, Response};
use crate::stats::{LatencySnapshot, ShardSnapshot};

pub async fn health(shard: &Rc<Shard>) -> Response {
    let stats: Vec<Option<ShardSnapshot>> =
        collect(shard, Query::Snapshot, shard.config.health_timeout)
            .await
            .into_iter()
            .map(|a| match a {
                Some(Answer::Snapshot(s)) => Some(s),
                _ => None,
            })
            .collect();
    let degraded = stats.iter().any(Option::is_none);
    let body = HealthBody {
        status: if degraded {
            HealthStatus::Degraded
        } else {
            HealthStatus::Ok
        },
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: shard.started.elapsed().as_secs(),
        shards: stats
            .into_iter()
            .enumerate()
            .map(|(id, s)| match s {
                Some(s) => ShardHealth::Answered(s),
                None => ShardHealth::Silent(ShardSilent {
                    id,
                    error: "no answer within the deadline".into(),
                }),
            })
            .collect(),
    };
    let body = serde_json::to_value(&body).expect("health serializes");
    Response::json(if degraded { 503 } else { 200 }, &body)
}

async fn latencies(shard: &Rc<Shard>, reset: bool) -> Vec<Option<LatencySnapshot>> {
    collect(shard, Query::Latency { reset }, shard.config.health_timeout)
        .await
        .into_iter()
        .map(|a| match a {
            Some(Answer::Latency(l)) => Some(*l),
            _ => None,
        })
        .collect()
}

fn merged(per_shard: &[Option<LatencySnapshot>]) -> Option<LatencySnapshot> {
    let mut all = per_shard.iter().flatten();
    let mut merged = all.next()?.clone();
    for s in all {
        merged.merge(s);
    }
    Some(merged)
}

/// Whether a request may reset `/latency`: it sends `Authorization: Bearer` with the
/// configured `server.admin_token`. `Err` is the answer otherwise (nothing is reset).
fn check_admin(shard: &Shard, head: &Head) -> Result<(), Response> {
    let Some(want) = shard.config.admin_token.as_deref() else {
        return Err(Response::error(
            403,
            "forbidden",
            "resetting /latency is disabled: set server.admin_token (CORELAY_ADMIN_TOKEN) \
             on the server and send it as Authorization: Bearer",
        ));
    };
    let given = head.header("authorization").and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
    });
    match given {
        None => Err(Response::error(
            401,
            "unauthorized",
            "resetting /latency needs the admin token (server.admin_token) as \
             Authorization: Bearer",
        )
        .header("WWW-Authenticate", "Bearer")),
        Some(given) if constant_time_eq(given.as_bytes(), want.as_bytes()) => Ok(()),
        Some(_) => Err(Response::error(
            403,
            "forbidden",
            "wrong admin token (server.admin_token)",
        )),
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /latency[?format=hdr][&reset=true]`: per-shard and merged histograms. A reset
/// needs the admin token (`server.admin_token`).
pub async fn latency(shard: &Rc<Shard>, head: &Head) -> Response {
    let reset = match head.query("reset") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Response::error(
                400,
                "bad_request",
                &format!("reset must be true or false, not {other:?}"),
            )
        }
    };
    if reset {
        if let Err(refused) = check_admin(shard, head) {
            return refused;
        }
    }
    let per_shard = latencies(shard, reset).await;
    let Some(total) = merged(&per_shard) else {
        return Response::error(503, "unavailable", "no shard answered");
    };
    match head.query("format") {
        Some("hdr") => hdr_log(&per_shard, &total),
        None | Some("json") => {
            let shards: Vec<serde_json::Value> = per_shard
                .iter()
                .enumerate()
                .map(|(id, s)| match s {
                    Some(s) => {
                        let mut v = s.summary();
                        v["id"] = id.into();
                        v
                    }
                    None => serde_json::json!({"id": id, "error": "no answer within the deadline"}),
                })
                .collect();
            let since = total
                .since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            Response::json(
                200,
                &serde_json::json!({"intervalStart": since, "merged": total.summary(), "shards": shards}),
            )
        }
        Some(other) => Response::error(
            400,
            "bad_request",
            &format!("format must be json or hdr, not {other:?}"),
        ),
    }
}

/// The HdrHistogram interval-log format (V2 compressed histograms, base64), one line per
/// histogram, tagged `<name>` (merged) and `<name>.shard<N>`; readable by HistogramLogProcessor
/// and other standard tools.
fn hdr_log(per_shard: &[Option<LatencySnapshot>], total: &LatencySnapshot) -> Response {
    use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
    use hdrhistogram::serialization::V2DeflateSerializer;
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    let start = total.since;
    let elapsed = std::time::SystemTime::now()
        .duration_since(start)
        .unwrap_or_default();
    {
        let mut log = match IntervalLogWriterBuilder::new()
            .add_comment(
                "corelay latency histograms (forwardUs, requestUs, loopLagUs in us; joinMs in ms)",
            )
            .with_start_time(start)
            .begin_log_with(&mut out, &mut serializer)
        {
            Ok(log) => log,
            Err(e) => return Response::error(500, "internal", &e.to_string()),
        };
        let mut entries: Vec<(String, &hdrhistogram::Histogram<u64>)> = total
            .histograms
            .iter()
            .map(|(n, h)| (n.to_string(), h))
            .collect();
        for (i, s) in per_shard.iter().enumerate() {
            if let Some(s) = s {
                entries.extend(
                    s.histograms
                        .iter()
                        .map(|(n, h)| (format!("{n}.shard{i}"), h)),
                );
            }
        }
        for (name, h) in entries {
            let tag = Tag::new(&name);
            if let Err(e) = log.write_histogram(h, std::time::Duration::ZERO, elapsed, tag) {
                return Response::error(500, "internal", &format!("{e}"));
            }
        }
    }
    Response::new(200)
        .header("Content-Type", "text/plain; charset=utf-8")
        .body(out)
}

/// `GET /metrics`: Prometheus text format, every series labelled with its shard.
pub async fn metrics(shard: &Rc<Shard>) -> Response {
    let snapshots: Vec<Option<ShardSnapshot>> =
        collect(shard, Query::Snapshot, shard.config.health_timeout)
            .await
            .into_iter()
            .map(|a| match a {
                Some(Answer::Snapshot(s)) => Some(s),
                _ => None,
            })
            .collect();
    let lat = latencies(shard, false).await;
    let mut out = String::new();
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&ShardSnapshot) -> u64,
    );
    let counters: [Series; 19] = [
        (
            "corelay_connections",
            "gauge",
            "WebSocket sessions served",
            |s| s.connections,
        ),
        ("corelay_rooms", "gauge", "Rooms (media and relay)", |s| {
            s.rooms
        }),
        ("corelay_transports", "gauge", "WebRTC transports", |s| {
            s.transports
        }),
        ("corelay_producers", "gauge", "Producers", |s| s.producers),
        ("corelay_consumers", "gauge", "Consumers", |s| s.consumers),
        (
            "corelay_rtp_packets_received_total",
            "counter",
            "RTP packets received from publishers",
            |s| s.packets_in,
        ),
        (
            "corelay_rtp_packets_forwarded_total",
            "counter",
            "RTP packets sent to subscribers",
            |s| s.packets_out,
        ),
        (
            "corelay_rtp_bytes_received_total",
            "counter",
            "RTP payload bytes received",
            |s| s.bytes_in,
        ),
        (
            "corelay_udp_bytes_sent_total",
            "counter",
            "UDP bytes sent",
            |s| s.bytes_out,
        ),
        (
            "corelay_datagrams_dropped_total",
            "counter",
            "UDP datagrams dropped (no transport or unparsable)",
            |s| s.datagrams_dropped,
        ),
        (
            "corelay_transports_connect_timeout_total",
            "counter",
            "Transports released because ICE and DTLS were not up within limits.connect_timeout_ms",
            |s| s.connect_timeouts,
        ),
        (
            "corelay_stun_forged_dropped_total",
            "counter",
            "STUN requests naming a transport whose MESSAGE-INTEGRITY failed (dropped, nothing bound)",
            |s| s.stun_forged,
        ),
        (
            "corelay_udp_unbound_dropped_total",
            "counter",
            "Datagrams from sources not bound to a transport dropped over limits.unbound_packets_per_s",
            |s| s.unbound_dropped,
        ),
        (
            "corelay_stun_sources_refused_total",
            "counter",
            "Good STUN requests from a new address dropped: the transport has limits.sources_per_transport bound",
            |s| s.sources_refused,
        ),
        (
            "corelay_bound_sources",
            "gauge",
            "Client addresses bound to transports",
            |s| s.bound_sources,
        ),
        (
            "corelay_relocations_in_total",
            "counter",
            "Connections adopted from other shards",
            |s| s.relocated_in,
        ),
        (
            "corelay_relocations_out_total",
            "counter",
            "Connections handed to other shards",
            |s| s.relocated_out,
        ),
        ("corelay_udp_port", "gauge", "The shard's UDP port", |s| {
            s.udp_port as u64
        }),
        (
            "corelay_shard_core",
            "gauge",
            "The CPU core the shard is pinned to",
            |s| s.core as u64,
        ),
    ];
    for (name, kind, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for s in snapshots.iter().flatten() {
            let _ = writeln!(out, "{name}{{shard=\"{}\"}} {}", s.id, get(s));
        }
    }
    let _ = writeln!(out, "# HELP corelay_signaling_errors_total Signaling error responses by code\n# TYPE corelay_signaling_errors_total counter");
    for s in snapshots.iter().flatten() {
        for (code, n) in &s.errors {
            let _ = writeln!(
                out,
                "corelay_signaling_errors_total{{shard=\"{}\",code=\"{code}\"}} {n}",
                s.id
            );
        }
    }
    let _ = writeln!(out, "# HELP corelay_shard_up 1 when the shard answered within the deadline\n# TYPE corelay_shard_up gauge");
    for (id, s) in snapshots.iter().enumerate() {
        let _ = writeln!(
            out,
            "corelay_shard_up{{shard=\"{id}\"}} {}",
            s.is_some() as u8
        );
    }
    for (name, unit) in [
        ("forwardUs", "forward_latency_microseconds"),
        ("joinMs", "join_milliseconds"),
        ("requestUs", "request_microseconds"),
        ("loopLagUs", "loop_lag_microseconds"),
    ] {
        let metric = format!("corelay_{unit}");
        let _ = writeln!(
            out,
            "# HELP {metric} {name} histogram of the shard, as a summary\n# TYPE {metric} summary"
        );
        for (id, l) in lat.iter().enumerate() {
            let Some(l) = l else { continue };
            let Some((_, h)) = l.histograms.iter().find(|(n, _)| *n == name) else {
                continue;
            };
            for q in [0.5, 0.9, 0.99, 0.999] {
                let v = if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(q)
                };
                let _ = writeln!(out, "{metric}{{shard=\"{id}\",quantile=\"{q}\"}} {v}");
            }
            let sum: f64 = h.mean() * h.len() as f64;
            let _ = writeln!(out, "{metric}_sum{{shard=\"{id}\"}} {sum:.0}");
            let _ = writeln!(out, "{metric}_count{{shard=\"{id}\"}} {}", h.len());
        }
    }
    Response::new(200)
        .header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        .body(out.into_bytes())
}

/// Answers a query about this shard.
pub fn answer(shard: &Shard, query: Query) -> Answer {
    match query {
        Query::Snapshot => Answer::Snapshot(shard.snapshot()),
        Query::Latency { reset } => {
            let mut l = shard.latencies.borrow_mut();
            let snap = l.snapshot();
            if reset {
                l.reset();
            }
            Answer::Latency(Box::new(snap))
        }
    }
}

/// Every shard's answer, in shard order; `None` for a shard that did not answer in time.
pub async fn collect(shard: &Rc<Shard>, query: Query, deadline: Duration) -> Vec<Option<Answer>> {
    let mut waits = Vec::with_capacity(shard.shards);
    for peer in 0..shard.shards {
        if peer == shard.id {
            waits.push(None);
            continue;
        }
        let id = shard.next_id();
        let (tx, rx) = futures::channel::oneshot::channel();
        shard.pending_stats.borrow_mut().insert(id, tx);
        let sent = shard
            .mesh
            .try_send_to(
                peer,
                MeshMsg::Query {
                    from: shard.id,
                    id,
                    query,
                },
            )
            .is_ok();
        waits.push(sent.then_some((id, rx)));
    }
    let timer = glommio::timer::sleep(deadline).fuse();
    futures::pin_mut!(timer);
    let mut out = Vec::with_capacity(shard.shards);
    for (peer, wait) in waits.into_iter().enumerate() {
        if peer == shard.id {
            out.push(Some(answer(shard, query)));
            continue;
        }
        let Some((id, mut rx)) = wait else {
            out.push(None);
            continue;
        };
        let answer = if timer.is_terminated() {
            rx.try_recv().ok().flatten()
        } else {
            match select(rx, timer.as_mut()).await {
                Either::Left((Ok(stats), _)) => Some(stats),
                _ => None,
            }
        };
        if answer.is_none() {
            shard.pending_stats.borrow_mut().remove(&id);
        }
        out.push(answer);
    }
    out
}
