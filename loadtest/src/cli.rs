//! Command-line flags.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Synthetic WebRTC publishers and subscribers (str0m: ICE, DTLS, SRTP) against corelay's
/// mediasoup-client dialect, one worker thread per core.
#[derive(Parser, Debug, Clone)]
#[command(name = "corelay-load", version)]
pub struct Args {
    /// Server base URL (http://host:port); signaling goes to ws://host:port/ws?token=...
    #[arg(long, default_value = "http://127.0.0.1:3001")]
    pub url: String,

    /// HS256 secret to mint one token per peer (room-scoped, user ids pubN / subN).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Use this token for every peer instead of minting (its room scope must fit);
    /// wins over --secret.
    #[arg(long)]
    pub token: Option<String>,

    /// Worker threads, each owning its peers and sockets (default: available cores).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Number of rooms.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,

    /// Video publishers per room.
    #[arg(long, default_value_t = 1)]
    pub video_publishers: usize,

    /// Audio publishers per room.
    #[arg(long, default_value_t = 1)]
    pub audio_publishers: usize,

    /// Subscribers per room; each consumes every track of its room.
    #[arg(long, default_value_t = 5)]
    pub subscribers: usize,

    /// How long publishers send, counted from the start (joins included), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// After the publishers stop, how long subscribers still receive (in-flight packets).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub drain: Duration,

    /// Joins per second over all peers (0: everyone at once). Publishers join first.
    #[arg(long, default_value_t = 0.0)]
    pub ramp: f64,

    /// Join subscribers before publishers (they then learn tracks from new-producer).
    #[arg(long)]
    pub subscribers_first: bool,

    /// Video bitrate per publisher, bits/s (suffixes k, M: 500k, 2.5M).
    #[arg(long, default_value = "1M", value_parser = parse_bitrate)]
    pub video_bitrate: u64,

    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,

    /// Time between periodic keyframes (keyframe requests add more).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub keyframe_interval: Duration,

    /// A peer that has not completed ICE and DTLS within this time counts as failed.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Room names are PREFIX-0, PREFIX-1, ... (default: load-<run id>).
    #[arg(long)]
    pub room_prefix: Option<String>,

    /// Write the figures and merged histograms as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Exit with status 1 when the loss exceeds this percentage (or a track is missing).
    #[arg(long)]
    pub max_loss: Option<f64>,

    /// No per-second progress line.
    #[arg(long)]
    pub quiet: bool,

    /// Publish over WHIP instead of /ws: the endpoint prefix, e.g.
    /// http://127.0.0.1:3001/whip; each publisher POSTs its offer to PREFIX/<room>.
    #[arg(long, value_name = "URL")]
    pub whip: Option<String>,

    /// Subscribe over WHEP instead of /ws: the endpoint prefix, e.g.
    /// http://127.0.0.1:3001/whep; each subscriber POSTs one offer (a recvonly section per
    /// publisher of its room) to PREFIX/<room>.
    #[arg(long, value_name = "URL")]
    pub whep: Option<String>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 10s, 500ms, 2m)"))
}

pub fn parse_bitrate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1e3),
        Some((i, 'm' | 'M')) => (&t[..i], 1e6),
        Some((i, 'g' | 'G')) => (&t[..i], 1e9),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a bitrate (e.g. 1M, 500k, 250000)"))?;
    let bits = v * mult;
    if !(1000.0..=1e10).contains(&bits) {
        return Err(format!("{s}: bitrate must be between 1k and 10G"));
    }
    Ok(bits as u64)
}

/// Where signaling goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// host:port as written, for the WebSocket URL.
    pub authority: String,
}

/// `http://host:port` (or ws://) to an address; TLS is not supported.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if let Some(r) = url.strip_prefix("ws://") {
        r
    } else if url.starts_with("https://") || url.starts_with("wss://") {
        return Err(format!("{url}: TLS is not supported yet; use http://"));
    } else {
        return Err(format!("{url}: expected http://host:port"));
    };
    let authority = rest.split('/').next().unwrap_or("").to_string();
    if authority.is_empty() {
        return Err(format!("{url}: no host"));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.clone()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    Ok(Target {
        addr,
        authority: with_port,
    })
}

impl Args {
    /// Checks what clap cannot; `Err` is a message for exit status 2.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, v) in [("--whip", &self.whip), ("--whep", &self.whep)] {
            if let Some(url) = v {
                crate::whip::HttpTarget::parse(url).map_err(|e| format!("{flag} {e}"))?;
            }
        }
        if self.whep.is_some() && self.subscribers_first {
            return Err(
                "--subscribers-first does not go with --whep: a WHEP session \
                 covers what is published when it starts (no renegotiation)"
                    .into(),
            );
        }
        if self.secret.is_none() && self.token.is_none() {
            return Err("give --secret (or JWT_SECRET) to mint tokens, or --token".into());
        }
        if self.rooms == 0 {
            return Err("--rooms must be at least 1".into());
        }
        if self.video_publishers + self.audio_publishers + self.subscribers == 0 {
            return Err("nothing to do: no publishers and no subscribers".into());
        }
        if self.fps == 0 || self.fps > 240 {
            return Err("--fps must be 1..=240".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be above 0".into());
        }
        if !(self.ramp >= 0.0 && self.ramp.is_finite()) {
            return Err("--ramp must be >= 0".into());
        }
        if self.threads == Some(0) {
            return Err("--threads must be at least 1".into());
        }
        if let Some(l) = self.max_loss {
            if !(0.0..=100.0).contains(&l) {
                return Err("--max-loss is a percentage, 0..=100".into());
            }
        }
        if self.keyframe_interval.is_zero() {
            return Err("--keyframe-interval must be above 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrates_and_urls() {
        assert_eq!(parse_bitrate("1M").unwrap(), 1_000_000);
        assert_eq!(parse_bitrate("2.5M").unwrap(), 2_500_000);
        assert_eq!(parse_bitrate("500k").unwrap(), 500_000);
        assert_eq!(parse_bitrate("64000").unwrap(), 64_000);
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_bitrate("10").is_err());
        let t = parse_url("http://127.0.0.1:3001").unwrap();
        assert_eq!(t.addr, "127.0.0.1:3001".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.1:3001");
        assert_eq!(parse_url("ws://127.0.0.1:9/x").unwrap().addr.port(), 9);
        assert!(parse_url("https://x:1").unwrap_err().contains("TLS"));
        assert!(parse_url("127.0.0.1:3001").is_err());
    }
}
