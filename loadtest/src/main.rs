//! corelay-load: synthetic publishers and subscribers, real WebRTC endpoints (str0m: ICE,
//! DTLS, SRTP), against corelay's mediasoup-client dialect. One worker thread per core,
//! each owning its peers and their sockets in one epoll loop. See loadtest/README.md.

mod cli;
mod media;
mod net;
mod report;
mod signal;
mod whip;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde_json::json;

use cli::Args;
use worker::{new_hist, Plan, Role, RunConfig, Shared, Tokens, Worker, WorkerLive, PUB_PENDING};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args = Args::parse();
    if let Err(msg) = args.validate() {
        eprintln!("corelay-load: {msg}");
        std::process::exit(2);
    }
    let target = match cli::parse_url(&args.url) {
        Ok(t) => t,
        Err(msg) => {
            eprintln!("corelay-load: --url {msg}");
            std::process::exit(2);
        }
    };
    std::process::exit(run(args, target));
}

fn run_id() -> u32 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let x = (nanos as u64) ^ ((std::process::id() as u64) << 32);
    // splitmix64 finalizer
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as u32
}

/// Everyone to start, in join order: publishers (room by room) then subscribers
/// (interleaved over rooms), or the other way round.
fn plans(args: &Args) -> Vec<Plan> {
    let mut pubs = Vec::new();
    for room in 0..args.rooms {
        pubs.extend(std::iter::repeat_n(
            (room, Role::Video),
            args.video_publishers,
        ));
        pubs.extend(std::iter::repeat_n(
            (room, Role::Audio),
            args.audio_publishers,
        ));
    }
    let mut subs = Vec::new();
    for _ in 0..args.subscribers {
        subs.extend((0..args.rooms).map(|room| (room, Role::Subscriber)));
    }
    let order: Vec<(usize, Role)> = if args.subscribers_first {
        subs.into_iter().chain(pubs).collect()
    } else {
        pubs.into_iter().chain(subs).collect()
    };
    order
        .into_iter()
        .enumerate()
        .map(|(k, (room, role))| Plan {
            id: k as u32,
            room,
            role,
            start: if args.ramp > 0.0 {
                Duration::from_secs_f64(k as f64 / args.ramp)
            } else {
                Duration::ZERO
            },
        })
        .collect()
}

fn run(args: Args, target: cli::Target) -> i32 {
    media::epoch();
    let run_id = run_id();
    let prefix = args
        .room_prefix
        .clone()
        .unwrap_or_else(|| format!("load-{run_id:08x}"));
    let rooms: Vec<String> = (0..args.rooms).map(|r| format!("{prefix}-{r}")).collect();
    if let Some(bad) = rooms
        .iter()
        .find(|r| corelay::auth::validate_id("roomId", r).is_err())
    {
        eprintln!("corelay-load: room name {bad:?}: use 1-128 characters of [A-Za-z0-9_.:-]");
        return 2;
    }
    let plans = plans(&args);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores).min(plans.len()).max(1);
    let tokens = match (&args.token, &args.secret) {
        (Some(t), _) => Tokens::Fixed(t.clone()),
        (None, Some(s)) => Tokens::Mint(s.clone()),
        (None, None) => unreachable!("validated"),
    };
    let frame_bytes = (args.video_bitrate / 8 / u64::from(args.fps)) as usize;
    let frame_sizes = media::frame_packet_sizes(frame_bytes);
    eprintln!(
        "corelay-load: {} room(s) x ({} video + {} audio publishers, {} subscribers) = {} peers \
         on {} thread(s) -> {} for {:?} (+{:?} drain); video {} bit/s at {} fps = {} packets/frame; \
         rooms {prefix}-*",
        args.rooms,
        args.video_publishers,
        args.audio_publishers,
        args.subscribers,
        plans.len(),
        threads,
        match (&args.whip, &args.whep) {
            (None, None) => args.url.clone(),
            (p, v) => format!(
                "publishers {}, subscribers {}",
                p.as_deref().map_or_else(|| format!("{}/ws", args.url), |u| format!("WHIP {u}")),
                v.as_deref().map_or_else(|| format!("{}/ws", args.url), |u| format!("WHEP {u}")),
            ),
        },
        args.duration,
        args.drain,
        args.video_bitrate,
        args.fps,
        frame_sizes.len(),
    );
    if let Some(last) = plans.last() {
        if last.start >= args.duration {
            eprintln!(
                "corelay-load: warning: at --ramp {} the last join would be at {:?}, after \
                 --duration {:?}; later peers will not start",
                args.ramp, last.start, args.duration
            );
        }
    }

    let endpoint = |url: &Option<String>| {
        url.as_deref()
            .map(|u| Arc::new(whip::HttpTarget::parse(u).expect("validated")))
    };
    let mut room_publishers = vec![Vec::new(); args.rooms];
    for p in plans.iter().filter(|p| p.role != Role::Subscriber) {
        room_publishers[p.room].push((p.id, p.role));
    }
    let t0 = Instant::now();
    let cfg = Arc::new(RunConfig {
        whip: endpoint(&args.whip),
        whep: endpoint(&args.whep),
        room_publishers,
        target,
        rooms: rooms.clone(),
        tokens,
        t0,
        media_end: t0 + args.duration,
        hard_end: t0 + args.duration + args.drain,
        frame_sizes,
        frame_interval: Duration::from_secs_f64(1.0 / f64::from(args.fps)),
        fps: args.fps,
        keyframe_interval: args.keyframe_interval,
        connect_timeout: args.connect_timeout,
        run_id,
    });
    let shared = Arc::new(Shared {
        live: (0..threads).map(|_| WorkerLive::default()).collect(),
        sent: (0..plans.len()).map(|_| AtomicU64::new(0)).collect(),
        producers: Mutex::new(Default::default()),
        pub_state: (0..plans.len())
            .map(|_| std::sync::atomic::AtomicU8::new(PUB_PENDING))
            .collect(),
    });
    let mut handles = Vec::new();
    for w in 0..threads {
        let mine: Vec<Plan> = plans
            .iter()
            .filter(|p| p.id as usize % threads == w)
            .cloned()
            .collect();
        let (cfg, shared) = (cfg.clone(), shared.clone());
        let worker = match Worker::new(w, mine, cfg, shared) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("corelay-load: worker {w}: {e}");
                return 2;
            }
        };
        let h = std::thread::Builder::new()
            .name(format!("load-{w}"))
            .spawn(move || worker.run())
            .expect("spawn a worker thread");
        handles.push(h);
    }

    progress(&args, &cfg, &shared, &handles, plans.len());

    let mut results = Vec::new();
    for h in handles {
        match h.join() {
            Ok(r) => results.push(r),
            Err(_) => {
                eprintln!("corelay-load: a worker panicked");
                return 2;
            }
        }
    }
    let secs = args.duration.as_secs_f64();
    let (room_figs, total) = report::summarize(&rooms, &plans, results);
    print!("{}", report::table(&room_figs, &total, secs));

    let mut status = 0;
    if total.peers_connected == 0 {
        eprintln!("corelay-load: no peer completed ICE and DTLS (see errors)");
        status = 1;
    }
    if let Some(max) = args.max_loss {
        if total.loss_percent() > max {
            eprintln!(
                "corelay-load: loss {:.3}% exceeds --max-loss {max}%",
                total.loss_percent()
            );
            status = 1;
        }
        if total.tracks_missing() > 0 {
            eprintln!(
                "corelay-load: {} of {} tracks never reached their subscriber",
                total.tracks_missing(),
                total.tracks_expected
            );
            status = 1;
        }
    }
    if let Some(path) = &args.json {
        let doc = json!({
            "version": 1,
            "runId": format!("{run_id:08x}"),
            "config": {
                "url": args.url,
                "whip": args.whip,
                "whep": args.whep,
                "threads": threads,
                "rooms": args.rooms,
                "videoPublishers": args.video_publishers,
                "audioPublishers": args.audio_publishers,
                "subscribers": args.subscribers,
                "durationS": secs,
                "drainS": args.drain.as_secs_f64(),
                "rampPerS": args.ramp,
                "subscribersFirst": args.subscribers_first,
                "videoBitrate": args.video_bitrate,
                "fps": args.fps,
                "keyframeIntervalS": args.keyframe_interval.as_secs_f64(),
                "maxLoss": args.max_loss,
            },
            "exitStatus": status,
            "totals": report::figures_json(&total, secs, false),
            "rooms": room_figs.iter().map(|f| report::figures_json(f, secs, true)).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).expect("JSON of plain values");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("corelay-load: --json {}: {e}", path.display());
            return 2;
        }
    }
    status
}

/// One line per second on stderr until every worker has finished.
fn progress(
    args: &Args,
    cfg: &RunConfig,
    shared: &Shared,
    handles: &[std::thread::JoinHandle<worker::WorkerResult>],
    peers: usize,
) {
    let (mut last_out, mut last_in) = (0u64, 0u64);
    let mut tick = 1u32;
    loop {
        let at = cfg.t0 + Duration::from_secs(u64::from(tick));
        while Instant::now() < at && !handles.iter().all(|h| h.is_finished()) {
            let left = at.saturating_duration_since(Instant::now());
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        if handles.iter().all(|h| h.is_finished()) {
            return;
        }
        let load = |f: fn(&WorkerLive) -> &AtomicU64| -> u64 {
            shared
                .live
                .iter()
                .map(|l| f(l).load(Ordering::Relaxed))
                .sum()
        };
        let out = load(|l| &l.packets_out);
        let inn = load(|l| &l.packets_in);
        let connected = load(|l| &l.connected);
        let span = load(|l| &l.span);
        let unique = load(|l| &l.unique);
        let errors = load(|l| &l.errors);
        let mut lat = new_hist();
        for l in &shared.live {
            if let Some(h) = l.latency.lock().expect("live latency").take() {
                let _ = lat.add(&h);
            }
        }
        let loss = if span == 0 {
            0.0
        } else {
            span.saturating_sub(unique) as f64 * 100.0 / span as f64
        };
        if !args.quiet {
            eprintln!(
                "[{tick:>4}s] peers {connected}/{peers} connected | out {} pkt/s | in {} pkt/s | \
                 loss {loss:.2}% | p99 {:.2} ms | errors {errors}",
                out - last_out,
                inn - last_in,
                lat.value_at_quantile(0.99) as f64 / 1000.0,
            );
        }
        (last_out, last_in) = (out, inn);
        tick += 1;
    }
}
