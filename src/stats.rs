//! Per-shard counters. Each shard owns its own (plain `Cell`s: no atomics, no sharing);
//! endpoints collect [`ShardSnapshot`]s from every shard over the mesh and merge them.

use std::cell::Cell;

use serde::Serialize;

/// Counters of one shard, touched only by that shard's thread.
#[derive(Default, Debug)]
pub struct ShardCounters {
    /// Signaling sessions (WebSocket connections) currently served by this shard.
    pub connections: Cell<u64>,
    pub relocated_in: Cell<u64>,
    pub relocated_out: Cell<u64>,
    /// UDP datagrams that belonged to no transport, counted and dropped.
    pub datagrams_dropped: Cell<u64>,
    /// Signaling errors answered, by error code.
    pub errors: std::cell::RefCell<std::collections::BTreeMap<&'static str, u64>>,
}

impl ShardCounters {
    pub fn add(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get() + n);
    }

    pub fn sub(cell: &Cell<u64>, n: u64) {
        cell.set(cell.get().saturating_sub(n));
    }

    pub fn count_error(&self, code: &'static str) {
        *self.errors.borrow_mut().entry(code).or_default() += 1;
    }
}

type Histogram = hdrhistogram::Histogram<u64>;

fn histogram(max: u64) -> Histogram {
    Histogram::new_with_bounds(1, max, 3).expect("static bounds are valid")
}

/// The latency histograms of one shard. Buckets are sized up front, so recording never
/// allocates; values beyond the range are clamped to it.
pub struct Latencies {
    /// UDP receive to send of forwarded packets, microseconds (1 us to 10 s).
    pub forward_us: Histogram,
    /// `join-room` to the peer's first media packet, milliseconds (1 ms to 10 min).
    pub join_ms: Histogram,
    /// Handling time of signaling requests, microseconds.
    pub request_us: Histogram,
    /// How late the shard's media timer fired, microseconds.
    pub loop_lag_us: Histogram,
    /// Start of the current interval (see `?reset=true`).
    pub since: std::time::SystemTime,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            forward_us: histogram(10_000_000),
            join_ms: histogram(600_000),
            request_us: histogram(10_000_000),
            loop_lag_us: histogram(10_000_000),
            since: std::time::SystemTime::now(),
        }
    }
}

fn record(h: &mut Histogram, value: u64, count: u64) {
    let v = value.clamp(h.low(), h.high());
    let _ = h.record_n(v, count);
}

impl Latencies {
    pub fn record_forward(&mut self, micros: u64, packets: u64) {
        record(&mut self.forward_us, micros, packets);
    }
    pub fn record_join(&mut self, millis: u64) {
        record(&mut self.join_ms, millis, 1);
    }
    pub fn record_request(&mut self, micros: u64) {
        record(&mut self.request_us, micros, 1);
    }
    pub fn record_loop_lag(&mut self, micros: u64) {
        record(&mut self.loop_lag_us, micros, 1);
    }

    /// A copy to send to another shard (allocates; only on a query).
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            histograms: [
                ("forwardUs", self.forward_us.clone()),
                ("joinMs", self.join_ms.clone()),
                ("requestUs", self.request_us.clone()),
                ("loopLagUs", self.loop_lag_us.clone()),
            ],
            since: self.since,
        }
    }

    /// Starts a new interval.
    pub fn reset(&mut self) {
        *self = Latencies::default();
    }
}

/// A shard's histograms by name, as `/latency` and `/metrics` report them.
#[derive(Clone)]
pub struct LatencySnapshot {
    pub histograms: [(&'static str, Histogram); 4],
    pub since: std::time::SystemTime,
}

impl LatencySnapshot {
    /// Adds another shard's histograms into these.
    pub fn merge(&mut self, other: &LatencySnapshot) {
        for ((_, mine), (_, theirs)) in self.histograms.iter_mut().zip(other.histograms.iter()) {
            let _ = mine.add(theirs);
        }
        self.since = self.since.min(other.since);
    }

    /// `{count, min, p50, p90, p99, p99.9, max}` per histogram.
    pub fn summary(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (name, h) in &self.histograms {
            let q = |p: f64| {
                if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(p)
                }
            };
            out.insert(
                name.to_string(),
                serde_json::json!({
                    "count": h.len(),
                    "min": if h.is_empty() { 0 } else { h.min() },
                    "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99.9": q(0.999),
                    "max": if h.is_empty() { 0 } else { h.max() },
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}

/// A shard's figures at one moment, as `/health` shows them.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardSnapshot {
    pub id: usize,
    pub core: usize,
    pub udp_port: u16,
    pub rooms: u64,
    pub connections: u64,
    pub relocated_in: u64,
    pub relocated_out: u64,
    pub datagrams_dropped: u64,
    /// Transports released because they did not connect within
    /// `limits.connect_timeout_ms`.
    pub connect_timeouts: u64,
    /// STUN requests naming a transport's ufrag whose MESSAGE-INTEGRITY failed.
    pub stun_forged: u64,
    /// Datagrams from sources not bound to a transport beyond
    /// `limits.unbound_packets_per_s`.
    pub unbound_dropped: u64,
    /// Good STUN requests from a new address of a transport that has
    /// `limits.sources_per_transport` addresses bound already.
    pub sources_refused: u64,
    /// Client addresses bound to transports.
    pub bound_sources: u64,
    pub transports: u64,
    pub producers: u64,
    pub consumers: u64,
    /// RTP packets received from publishers.
    pub packets_in: u64,
    /// RTP packets forwarded to subscribers.
    pub packets_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Signaling errors answered, by error code.
    pub errors: std::collections::BTreeMap<String, u64>,
}
