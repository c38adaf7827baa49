//! `corelay tune-check`: compares this host's settings with what the configured server
//! needs and prints one line per setting with a status and the command that fixes it.
//!
//! The checks are pure functions over values already read ([`Facts`] and [`Wanted`]) so
//! that every rule is unit-tested; [`read_facts`] is the thin part that reads /proc, /sys,
//! getrlimit and `ethtool`. Only two things are FAIL (exit status 1), because the server
//! runs badly or not at all without them: a locked-memory limit below what glommio needs,
//! and socket buffer maxima below the configured UDP buffers (the kernel silently caps the
//! request, and bursts of media are dropped). Everything else is advice: warn.

use std::fmt;
use std::path::Path;

/// Open files we want per process: every WebSocket is one, plus sockets and rings.
pub const WANTED_NOFILE: u64 = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        })
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub status: Status,
    /// Stable label, e.g. `memlock` or `net.core.rmem_max`; tests and scripts grep it.
    pub name: &'static str,
    pub detail: String,
    /// The command (or unit setting) that fixes it; only for warn and FAIL.
    pub fix: Option<String>,
}

impl Line {
    fn ok(name: &'static str, detail: String) -> Line {
        Line {
            status: Status::Ok,
            name,
            detail,
            fix: None,
        }
    }
    fn bad(status: Status, name: &'static str, detail: String, fix: impl Into<String>) -> Line {
        Line {
            status,
            name,
            detail,
            fix: Some(fix.into()),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<4} {}: {}", self.status, self.name, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, " | fix: {fix}")?;
        }
        Ok(())
    }
}

/// A resource limit; `u64::MAX` (RLIM_INFINITY) means unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
}

/// A network interface as seen in /sys/class/net (and `ethtool -k` when installed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub rx_queues: usize,
    pub tx_queues: usize,
    /// `ethtool -k` output; `None` when ethtool is missing or failed.
    pub offloads: Option<Offloads>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offloads {
    pub gro: bool,
    pub gso: bool,
}

/// What the host says. `None` and empty lists mean "not visible".
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub memlock: Option<Limit>,
    pub nofile: Option<Limit>,
    pub rmem_max: Option<u64>,
    pub wmem_max: Option<u64>,
    /// (core, scaling_governor) for each core a shard would use.
    pub governors: Vec<(usize, Option<String>)>,
    /// (core, its hyperthread siblings including itself) for each shard core.
    pub siblings: Vec<(usize, Vec<usize>)>,
    pub irqbalance_running: bool,
    pub nics: Vec<Nic>,
    pub ethtool_installed: bool,
    /// net.ipv4.ip_local_port_range and ip_local_reserved_ports.
    pub ephemeral_ports: Option<(u16, u16)>,
    pub reserved_ports: Vec<(u16, u16)>,
}

/// What the configured server asks of the host.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub shards: usize,
    /// The core of each shard, in shard order.
    pub cores: Vec<usize>,
    pub memlock: u64,
    pub recv_buffer: u64,
    pub send_buffer: u64,
    /// udp.port_base; 0 means any free port (nothing to reserve or open).
    pub port_base: u16,
}

/// Every check, in report order.
pub fn check(f: &Facts, w: &Wanted) -> Vec<Line> {
    vec![
        memlock(f.memlock, w),
        nofile(f.nofile),
        socket_max(
            "net.core.rmem_max",
            "udp.recv_buffer",
            f.rmem_max,
            w.recv_buffer,
        ),
        socket_max(
            "net.core.wmem_max",
            "udp.send_buffer",
            f.wmem_max,
            w.send_buffer,
        ),
        udp_ports(f.ephemeral_ports, &f.reserved_ports, w),
        governor(&f.governors),
        smt(&f.siblings),
        irqbalance(f.irqbalance_running, &w.cores),
        nic_queues(&f.nics, w.shards),
        nic_offloads(&f.nics, f.ethtool_installed),
    ]
}

/// Exit status of `tune-check`: 1 when any line failed.
pub fn exit_code(lines: &[Line]) -> u8 {
    u8::from(lines.iter().any(|l| l.status == Status::Fail))
}

pub fn memlock(limit: Option<Limit>, w: &Wanted) -> Line {
    const FIX: &str = "LimitMEMLOCK=infinity in the systemd unit, or `ulimit -l unlimited` (as root) before starting corelay";
    let Some(l) = limit else {
        return Line::bad(
            Status::Warn,
            "memlock",
            "not visible (getrlimit failed)".into(),
            FIX,
        );
    };
    // corelay raises its soft limit to the hard one at start, so the hard one decides.
    let detail = format!(
        "soft {}, hard {}; {} shard(s) need {}",
        bytes(l.soft),
        bytes(l.hard),
        w.shards,
        bytes(w.memlock)
    );
    if l.hard >= w.memlock {
        Line::ok("memlock", detail)
    } else {
        Line::bad(Status::Fail, "memlock", detail, FIX)
    }
}

pub fn nofile(limit: Option<Limit>) -> Line {
    const FIX: &str =
        "LimitNOFILE=1048576 in the systemd unit, or `ulimit -n 1048576` before starting corelay";
    match limit {
        None => Line::bad(
            Status::Warn,
            "nofile",
            "not visible (getrlimit failed)".into(),
            FIX,
        ),
        // corelay does not raise this one itself: the soft limit is what it gets.
        Some(l) if l.soft >= WANTED_NOFILE => Line::ok(
            "nofile",
            format!("soft {}, hard {}", count(l.soft), count(l.hard)),
        ),
        Some(l) => Line::bad(
            Status::Warn,
            "nofile",
            format!(
                "soft {} < {WANTED_NOFILE}: each WebSocket takes one descriptor",
                count(l.soft)
            ),
            FIX,
        ),
    }
}

/// net.core.rmem_max / wmem_max against the configured buffer: the kernel caps a
/// SO_RCVBUF/SO_SNDBUF request at the maximum without an error.
pub fn socket_max(sysctl: &'static str, key: &str, have: Option<u64>, want: u64) -> Line {
    let fix = format!(
        "sysctl -w {sysctl}={want}; to persist: install -m 0644 tuning/99-corelay.conf /etc/sysctl.d/ && sysctl --system"
    );
    match have {
        None => Line::bad(
            Status::Warn,
            sysctl,
            format!("not visible (cannot read /proc/sys); {key} is {want}"),
            fix,
        ),
        Some(h) if h >= want => Line::ok(sysctl, format!("{h} >= {key} {want}")),
        Some(h) => Line::bad(
            Status::Fail,
            sysctl,
            format!("{h} < {key} {want}: the kernel grants only {h}, bursts will be dropped"),
            fix,
        ),
    }
}

/// The shards' UDP ports should not be handed out as ephemeral ports to other programs
/// (or the port is taken when corelay restarts).
pub fn udp_ports(ephemeral: Option<(u16, u16)>, reserved: &[(u16, u16)], w: &Wanted) -> Line {
    if w.port_base == 0 {
        return Line::ok(
            "udp ports",
            "udp.port_base = 0: any free port per shard (nothing to reserve)".into(),
        );
    }
    let last = w
        .port_base
        .saturating_add(w.shards.saturating_sub(1) as u16);
    let range = format!("{}-{last}", w.port_base);
    let fix = format!(
        "sysctl -w net.ipv4.ip_local_reserved_ports={range} (tuning/99-corelay.conf); open UDP {range} in the firewall"
    );
    let Some((lo, hi)) = ephemeral else {
        return Line::bad(
            Status::Warn,
            "udp ports",
            format!("UDP {range}; ephemeral range not visible"),
            fix,
        );
    };
    let overlaps = w.port_base <= hi && last >= lo;
    let covered =
        (w.port_base..=last).all(|p| reserved.iter().any(|(a, b)| (*a..=*b).contains(&p)));
    if !overlaps || covered {
        Line::ok(
            "udp ports",
            format!("UDP {range} (open it in the firewall); not handed out as ephemeral ports"),
        )
    } else {
        Line::bad(
            Status::Warn,
            "udp ports",
            format!("UDP {range} lies in the ephemeral range {lo}-{hi} and is not reserved: another program may take a shard's port"),
            fix,
        )
    }
}

pub fn governor(governors: &[(usize, Option<String>)]) -> Line {
    let visible: Vec<_> = governors
        .iter()
        .filter_map(|(c, g)| g.as_ref().map(|g| (*c, g.as_str())))
        .collect();
    if visible.is_empty() {
        // Virtual machines and some fixed-frequency hosts have no cpufreq in /sys.
        return Line::ok(
            "cpu governor",
            "not visible (no cpufreq: virtual machine or fixed frequency; check the host)".into(),
        );
    }
    let slow: Vec<_> = visible
        .iter()
        .filter(|(_, g)| *g != "performance")
        .collect();
    if slow.is_empty() {
        Line::ok("cpu governor", "performance on every shard core".into())
    } else {
        let list: Vec<_> = slow.iter().map(|(c, g)| format!("cpu{c}={g}")).collect();
        Line::bad(
            Status::Warn,
            "cpu governor",
            format!("not performance: {} (latency spikes while clocks ramp up)", list.join(", ")),
            "cpupower frequency-set -g performance (Debian package linux-cpupower), or echo performance | tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor",
        )
    }
}

/// Two shards on hyperthreads of one physical core share its execution units and
/// caches: each gets far less than a core.
pub fn smt(siblings: &[(usize, Vec<usize>)]) -> Line {
    if siblings.is_empty() {
        return Line::ok("smt", "not visible (no topology in /sys)".into());
    }
    let cores: Vec<usize> = siblings.iter().map(|(c, _)| *c).collect();
    let mut shared = Vec::new();
    for (i, (core, sibs)) in siblings.iter().enumerate() {
        for other in &cores[i + 1..] {
            if other != core && sibs.contains(other) {
                shared.push(format!("{core}+{other}"));
            }
        }
    }
    if shared.is_empty() {
        Line::ok(
            "smt",
            format!(
                "no two shards share a physical core (cores {})",
                cpu_list(&cores)
            ),
        )
    } else {
        Line::bad(
            Status::Warn,
            "smt",
            format!("shards on sibling hyperthreads: {}", shared.join(", ")),
            "one shard per physical core: CPUAffinity= (systemd) or taskset -c with one thread per core and --shards to match, or echo off > /sys/devices/system/cpu/smt/control",
        )
    }
}

pub fn irqbalance(running: bool, cores: &[usize]) -> Line {
    if running {
        Line::bad(
            Status::Warn,
            "irqbalance",
            "running: it may move NIC interrupts onto shard cores".into(),
            format!(
                "IRQBALANCE_BANNED_CPULIST={} in /etc/default/irqbalance (when shards leave cores free), or systemctl disable --now irqbalance and pin NIC IRQs (tuning/README.md)",
                cpu_list(cores)
            ),
        )
    } else {
        Line::ok(
            "irqbalance",
            "not running (pin NIC interrupts away from shard cores by hand, tuning/README.md)"
                .into(),
        )
    }
}

pub fn nic_queues(nics: &[Nic], shards: usize) -> Line {
    if nics.is_empty() {
        return Line::bad(
            Status::Warn,
            "nic queues",
            "not visible (no network interface besides lo in /sys/class/net)".into(),
            "check on the host: ls /sys/class/net/*/queues",
        );
    }
    let list: Vec<_> = nics
        .iter()
        .map(|n| format!("{} {} rx/{} tx", n.name, n.rx_queues, n.tx_queues))
        .collect();
    let few: Vec<_> = nics
        .iter()
        .filter(|n| n.rx_queues < shards)
        .map(|n| n.name.as_str())
        .collect();
    if few.is_empty() {
        Line::ok(
            "nic queues",
            format!("{} for {shards} shard(s)", list.join(", ")),
        )
    } else {
        Line::bad(
            Status::Warn,
            "nic queues",
            format!(
                "{} for {shards} shard(s): fewer rx queues than shards puts receive work on few cores",
                list.join(", ")
            ),
            format!(
                "ethtool -L {} combined {shards} (if the NIC supports it), else enable RPS: echo <cpu mask> > /sys/class/net/{}/queues/rx-0/rps_cpus",
                few[0], few[0]
            ),
        )
    }
}

pub fn nic_offloads(nics: &[Nic], ethtool_installed: bool) -> Line {
    if !ethtool_installed {
        return Line::bad(
            Status::Warn,
            "nic offloads",
            "GRO/GSO not visible (ethtool not installed)".into(),
            "apt-get install ethtool, then run tune-check again",
        );
    }
    let seen: Vec<_> = nics
        .iter()
        .filter_map(|n| n.offloads.map(|o| (n.name.as_str(), o)))
        .collect();
    if seen.is_empty() {
        return Line::bad(
            Status::Warn,
            "nic offloads",
            "GRO/GSO not visible (ethtool -k answered nothing)".into(),
            "ethtool -k <interface>",
        );
    }
    let onoff = |b: bool| if b { "on" } else { "off" };
    let list: Vec<_> = seen
        .iter()
        .map(|(n, o)| format!("{n} gro {} gso {}", onoff(o.gro), onoff(o.gso)))
        .collect();
    match seen.iter().find(|(_, o)| !(o.gro && o.gso)) {
        None => Line::ok("nic offloads", list.join(", ")),
        Some((name, _)) => Line::bad(
            Status::Warn,
            "nic offloads",
            format!(
                "{}: batching UDP in the kernel saves per-packet cost",
                list.join(", ")
            ),
            format!("ethtool -K {name} gro on gso on"),
        ),
    }
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                    out.extend(a..=b);
                }
            }
            None => out.extend(part.trim().parse::<usize>().ok()),
        }
    }
    out
}

/// Parses ranges such as `32768\t60999` or `40000-40255,50000`.
pub fn parse_port_ranges(s: &str) -> Vec<(u16, u16)> {
    s.split([',', '\n'])
        .filter_map(|part| {
            let part = part.trim();
            if part.is_empty() {
                return None;
            }
            let (a, b) = part.split_once(['-', '\t', ' ']).unwrap_or((part, part));
            Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .collect()
}

/// Reads GRO and GSO from `ethtool -k` output.
pub fn parse_ethtool_k(text: &str) -> Option<Offloads> {
    let flag = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().starts_with("on"))
    };
    Some(Offloads {
        gro: flag("generic-receive-offload")?,
        gso: flag("generic-segmentation-offload")?,
    })
}

/// Renders a cpu list compactly: `0-3,8`.
pub fn cpu_list(cores: &[usize]) -> String {
    let mut sorted = cores.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        parts.push(if sorted[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", sorted[i])
        });
        i += 1;
    }
    parts.join(",")
}

fn bytes(n: u64) -> String {
    match n {
        u64::MAX => "unlimited".into(),
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

fn count(n: u64) -> String {
    if n == u64::MAX {
        "unlimited".into()
    } else {
        n.to_string()
    }
}

// ---- the thin reader ----------------------------------------------------------------

/// Reads what the checks need from this host, for the given shard cores.
pub fn read_facts(cores: &[usize]) -> Facts {
    let ethtool_installed = find_in_path("ethtool");
    let sys_cpu =
        |c: usize, rest: &str| read_trim(format!("/sys/devices/system/cpu/cpu{c}/{rest}"));
    Facts {
        memlock: rlimit(libc::RLIMIT_MEMLOCK),
        nofile: rlimit(libc::RLIMIT_NOFILE),
        rmem_max: read_trim("/proc/sys/net/core/rmem_max").and_then(|s| s.parse().ok()),
        wmem_max: read_trim("/proc/sys/net/core/wmem_max").and_then(|s| s.parse().ok()),
        governors: cores
            .iter()
            .map(|&c| (c, sys_cpu(c, "cpufreq/scaling_governor")))
            .collect(),
        siblings: cores
            .iter()
            .filter_map(|&c| {
                sys_cpu(c, "topology/thread_siblings_list").map(|s| (c, parse_cpu_list(&s)))
            })
            .collect(),
        irqbalance_running: process_running("irqbalance"),
        nics: read_nics(ethtool_installed),
        ethtool_installed,
        ephemeral_ports: read_trim("/proc/sys/net/ipv4/ip_local_port_range")
            .and_then(|s| parse_port_ranges(&s).first().copied()),
        reserved_ports: read_trim("/proc/sys/net/ipv4/ip_local_reserved_ports")
            .map(|s| parse_port_ranges(&s))
            .unwrap_or_default(),
    }
}

fn read_trim(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Option<Limit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the local struct only.
    (unsafe { libc::getrlimit(resource, &mut lim) } == 0).then_some(Limit {
        soft: lim.rlim_cur,
        hard: lim.rlim_max,
    })
}

fn process_running(comm: &str) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| read_trim(e.path().join("comm")).as_deref() == Some(comm))
}

fn find_in_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| d.join(program).is_file())
}

/// Interfaces that are up (or of unknown state, as many virtual ones report), without lo.
fn read_nics(ethtool_installed: bool) -> Vec<Nic> {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let mut nics: Vec<Nic> = dir
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let state = read_trim(e.path().join("operstate")).unwrap_or_default();
            if name == "lo" || state == "down" {
                return None;
            }
            let (mut rx, mut tx) = (0, 0);
            if let Ok(q) = std::fs::read_dir(e.path().join("queues")) {
                for q in q.flatten() {
                    let q = q.file_name().to_string_lossy().into_owned();
                    rx += usize::from(q.starts_with("rx-"));
                    tx += usize::from(q.starts_with("tx-"));
                }
            }
            let offloads = if ethtool_installed {
                std::process::Command::new("ethtool")
                    .args(["-k", &name])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .and_then(|o| parse_ethtool_k(&String::from_utf8_lossy(&o.stdout)))
            } else {
                None
            };
            Some(Nic {
                name,
                rx_queues: rx,
                tx_queues: tx,
                offloads,
            })
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> Wanted {
        Wanted {
            shards: 2,
            cores: vec![0, 1],
            memlock: 1 << 20,
            recv_buffer: 4 << 20,
            send_buffer: 4 << 20,
            port_base: 40000,
        }
    }

    fn good_facts() -> Facts {
        Facts {
            memlock: Some(Limit {
                soft: u64::MAX,
                hard: u64::MAX,
            }),
            nofile: Some(Limit {
                soft: 1 << 20,
                hard: 1 << 20,
            }),
            rmem_max: Some(16 << 20),
            wmem_max: Some(16 << 20),
            governors: vec![
                (0, Some("performance".into())),
                (1, Some("performance".into())),
            ],
            siblings: vec![(0, vec![0, 2]), (1, vec![1, 3])],
            irqbalance_running: false,
            nics: vec![Nic {
                name: "eth0".into(),
                rx_queues: 4,
                tx_queues: 4,
                offloads: Some(Offloads {
                    gro: true,
                    gso: true,
                }),
            }],
            ethtool_installed: true,
            ephemeral_ports: Some((32768, 60999)),
            reserved_ports: vec![(40000, 40255)],
        }
    }

    #[test]
    fn a_tuned_host_is_all_ok_and_exits_0() {
        let lines = check(&good_facts(), &wanted());
        assert_eq!(lines.len(), 10);
        for l in &lines {
            assert_eq!(l.status, Status::Ok, "{l}");
            assert!(l.fix.is_none());
        }
        assert_eq!(exit_code(&lines), 0);
    }

    #[test]
    fn memlock_below_need_fails_and_names_the_fix() {
        let l = memlock(
            Some(Limit {
                soft: 64 << 10,
                hard: 512 << 10,
            }),
            &wanted(),
        );
        assert_eq!(l.status, Status::Fail);
        assert!(l.detail.contains("hard 512 KiB"), "{l}");
        assert!(l.detail.contains("need 1 MiB"), "{l}");
        assert!(l.to_string().contains("LimitMEMLOCK=infinity"), "{l}");
        assert_eq!(exit_code(&[l]), 1);
    }

    #[test]
    fn a_low_soft_memlock_is_fine_when_the_hard_limit_suffices() {
        let l = memlock(
            Some(Limit {
                soft: 64 << 10,
                hard: 8 << 20,
            }),
            &wanted(),
        );
        assert_eq!(l.status, Status::Ok, "corelay raises soft to hard itself");
    }

    #[test]
    fn socket_maxima_below_the_config_fail() {
        let l = socket_max(
            "net.core.rmem_max",
            "udp.recv_buffer",
            Some(212_992),
            4 << 20,
        );
        assert_eq!(l.status, Status::Fail);
        assert!(
            l.to_string()
                .contains("sysctl -w net.core.rmem_max=4194304"),
            "{l}"
        );
        let l = socket_max(
            "net.core.wmem_max",
            "udp.send_buffer",
            Some(4 << 20),
            4 << 20,
        );
        assert_eq!(l.status, Status::Ok, "equal is enough");
        let l = socket_max("net.core.wmem_max", "udp.send_buffer", None, 4 << 20);
        assert_eq!(l.status, Status::Warn);
    }

    #[test]
    fn only_memlock_and_socket_maxima_fail() {
        let unlimited = Limit {
            soft: u64::MAX,
            hard: u64::MAX,
        };
        // The two important settings fine, everything else unseen or bad: warnings only.
        let f = Facts {
            memlock: Some(unlimited),
            rmem_max: Some(u64::MAX),
            wmem_max: Some(u64::MAX),
            nofile: Some(Limit {
                soft: 1024,
                hard: 4096,
            }),
            irqbalance_running: true,
            governors: vec![(0, Some("powersave".into()))],
            siblings: vec![(0, vec![0, 1]), (1, vec![0, 1])],
            ..Facts::default()
        };
        let lines = check(&f, &wanted());
        assert!(lines.iter().all(|l| l.status != Status::Fail), "{lines:?}");
        assert!(lines.iter().filter(|l| l.status == Status::Warn).count() >= 5);
        assert!(lines
            .iter()
            .filter(|l| l.status != Status::Ok)
            .all(|l| l.fix.is_some()));
        assert_eq!(exit_code(&lines), 0);
    }

    #[test]
    fn governor_smt_and_irqbalance_warn_with_fixes() {
        let l = governor(&[
            (0, Some("performance".into())),
            (1, Some("schedutil".into())),
        ]);
        assert_eq!(l.status, Status::Warn);
        assert!(l.detail.contains("cpu1=schedutil"), "{l}");
        assert_eq!(
            governor(&[(0, None)]).status,
            Status::Ok,
            "VMs have no cpufreq"
        );
        assert!(governor(&[(0, None)]).detail.contains("not visible"));

        let l = smt(&[(0, vec![0, 1]), (1, vec![0, 1])]);
        assert_eq!(l.status, Status::Warn);
        assert!(l.detail.contains("0+1"), "{l}");
        assert_eq!(smt(&[(0, vec![0])]).status, Status::Ok);

        let l = irqbalance(true, &[2, 3, 4]);
        assert_eq!(l.status, Status::Warn);
        assert!(
            l.to_string().contains("IRQBALANCE_BANNED_CPULIST=2-4"),
            "{l}"
        );
    }

    #[test]
    fn nic_lines_say_not_visible_without_data() {
        let l = nic_queues(&[], 2);
        assert!(l.detail.contains("not visible"), "{l}");
        let l = nic_offloads(&[], false);
        assert!(l.detail.contains("not visible"), "{l}");
        assert!(l.to_string().contains("apt-get install ethtool"), "{l}");
        let one = Nic {
            name: "eth0".into(),
            rx_queues: 1,
            tx_queues: 1,
            offloads: Some(Offloads {
                gro: false,
                gso: true,
            }),
        };
        let l = nic_queues(std::slice::from_ref(&one), 4);
        assert_eq!(l.status, Status::Warn);
        assert!(l.to_string().contains("ethtool -L eth0 combined 4"), "{l}");
        let l = nic_offloads(&[one], true);
        assert_eq!(l.status, Status::Warn);
        assert!(
            l.to_string().contains("ethtool -K eth0 gro on gso on"),
            "{l}"
        );
    }

    #[test]
    fn udp_ports_in_the_ephemeral_range_need_a_reservation() {
        let w = wanted();
        let l = udp_ports(Some((32768, 60999)), &[], &w);
        assert_eq!(l.status, Status::Warn);
        assert!(
            l.to_string()
                .contains("ip_local_reserved_ports=40000-40001"),
            "{l}"
        );
        assert_eq!(udp_ports(Some((32768, 39999)), &[], &w).status, Status::Ok);
        assert_eq!(
            udp_ports(Some((32768, 60999)), &[(40000, 40000)], &w).status,
            Status::Warn,
            "one of two ports reserved"
        );
        let any = Wanted { port_base: 0, ..w };
        assert_eq!(udp_ports(None, &[], &any).status, Status::Ok);
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
        assert_eq!(cpu_list(&[3, 0, 1, 2, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(parse_port_ranges("32768\t60999"), vec![(32768, 60999)]);
        assert_eq!(
            parse_port_ranges("40000-40255,50000"),
            vec![(40000, 40255), (50000, 50000)]
        );
        let k = "Features for eth0:\nrx-checksumming: on\ngeneric-segmentation-offload: on\ngeneric-receive-offload: off [fixed]\n";
        assert_eq!(
            parse_ethtool_k(k),
            Some(Offloads {
                gro: false,
                gso: true
            })
        );
        assert_eq!(parse_ethtool_k("nothing"), None);
        assert_eq!(bytes(u64::MAX), "unlimited");
        assert_eq!(bytes(8 << 20), "8 MiB");
    }
}
