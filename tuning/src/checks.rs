//! Host checks, I/O-free: the contents of the `/proc` and `/sys` files (and the io_uring probe's
//! outcome) in a [`HostFacts`], a list of [`Check`]s out, each with its status and the exact
//! command that fixes it. `host.rs` reads the files; the unit tests feed sample text.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

/// The engine's listen backlog per shard (`engine/src/limits.rs` `LISTEN_BACKLOG`); the kernel
/// caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u64 = 4096;
/// Open files below this: fail (a gateway holds a client and an upstream socket per request).
pub const NOFILE_FAIL_BELOW: u64 = 4096;
/// Open files below this: warn.
pub const NOFILE_OK_FROM: u64 = 65_536;
/// What the fixes raise the open-file limit to.
pub const NOFILE_WANT: u64 = 1_048_576;
/// Locked memory at or above this (bytes) is enough for io_uring on any kernel.
pub const MEMLOCK_OK_FROM: u64 = 64 << 20;
/// SYN backlog below this: warn.
pub const SYN_BACKLOG_OK_FROM: u64 = 4096;
/// Ephemeral ports below this many: warn.
pub const PORTS_OK_FROM: u64 = 16_384;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Short name: `io_uring`, `memlock`, `nofile`, ...
    pub name: &'static str,
    pub status: Status,
    /// What was found, in a sentence.
    pub detail: String,
    /// The command(s) that fix it; `None` when there is nothing to do.
    pub fix: Option<String>,
}

impl Check {
    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name,
            status,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// What building an io_uring ring gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UringProbe {
    /// A ring with COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN, as a shard builds it.
    Tuned,
    /// Only a plain ring; why the tuned one was refused.
    Plain(String),
    /// No ring at all.
    Blocked { errno: Option<i32>, message: String },
}

impl UringProbe {
    /// The driver the engine will run on: `io_uring` unless it is blocked.
    pub fn driver(&self) -> shardgate_tune::Driver {
        match self {
            UringProbe::Blocked { .. } => shardgate_tune::Driver::Epoll,
            _ => shardgate_tune::Driver::IoUring,
        }
    }
}

/// A network interface backed by a device (virtual ones, `lo` included, have none).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Nic {
    /// `eth0`.
    pub name: String,
    /// Names its interrupts may carry besides the interface's: the device's directory name
    /// (`virtio2`, `0000:3b:00.0`) and its parent's (the PCI address of a virtio device).
    pub ids: Vec<String>,
}

/// The host, as read from `/proc` and `/sys` (`None` or empty: the file was missing).
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub uring: Option<UringProbe>,
    /// `/proc/sys/kernel/io_uring_disabled`.
    pub uring_disabled: Option<String>,
    /// `/proc/sys/kernel/osrelease`.
    pub osrelease: Option<String>,
    /// `/proc/self/limits`.
    pub limits: Option<String>,
    /// `/proc/sys/net/core/somaxconn`.
    pub somaxconn: Option<String>,
    /// `/proc/sys/net/ipv4/tcp_max_syn_backlog`.
    pub syn_backlog: Option<String>,
    /// `/proc/sys/net/ipv4/tcp_migrate_req`.
    pub migrate_req: Option<String>,
    /// `/proc/sys/net/ipv4/ip_local_port_range`.
    pub port_range: Option<String>,
    /// `/sys/devices/system/cpu/online`.
    pub online: Option<String>,
    /// `/proc/self/status` (for `Cpus_allowed_list`).
    pub self_status: Option<String>,
    /// CPU id -> `/sys/devices/system/cpu/cpuN/topology/thread_siblings_list`.
    pub siblings: BTreeMap<usize, String>,
    /// NUMA node id -> `/sys/devices/system/node/nodeN/cpulist`.
    pub nodes: BTreeMap<usize, String>,
    /// CPU id -> `/sys/devices/system/cpu/cpuN/cpufreq/scaling_governor`.
    pub governors: BTreeMap<usize, String>,
    /// `/proc/cpuinfo` (only its `flags` matter: `hypervisor` means a VM).
    pub cpuinfo: Option<String>,
    /// `/proc/interrupts`.
    pub interrupts: Option<String>,
    /// Interfaces with a device under `/sys/class/net`.
    pub nics: Vec<Nic>,
    /// IRQ number -> `/proc/irq/N/effective_affinity_list` (else `smp_affinity_list`).
    pub irq_affinity: BTreeMap<u32, String>,
}

// ---------------------------------------------------------------- parsers

/// A kernel CPU list (`0-3,8,10-11`), sorted and without duplicates.
pub fn parse_cpulist(text: &str) -> Option<Vec<usize>> {
    let mut set = BTreeSet::new();
    let text = text.trim();
    if text.is_empty() {
        return Some(Vec::new());
    }
    for part in text.split(',') {
        let part = part.trim();
        // `0-7:2` (a stride) is valid in the kernel's syntax; support it too.
        let (range, stride) = match part.split_once(':') {
            Some((r, s)) => (r, s.parse::<usize>().ok().filter(|&s| s > 0)?),
            None => (part, 1),
        };
        match range.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                if a > b || b - a > 1 << 16 {
                    return None;
                }
                set.extend((a..=b).step_by(stride));
            }
            None => {
                set.insert(range.parse::<usize>().ok()?);
            }
        }
    }
    Some(set.into_iter().collect())
}

/// A CPU list written back compactly: `0-3,8`.
pub fn format_cpulist(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if end == start {
            let _ = write!(out, "{start}");
        } else {
            let _ = write!(out, "{start}-{end}");
        }
        i += 1;
    }
    out
}

/// A CPU list in the given order, comma-separated (`taskset -c` keeps no order; this is for
/// people and for the shard order).
pub fn join_cpus(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A limit from `/proc/self/limits`: (soft, hard), `None` meaning unlimited.
pub type Limit = (Option<u64>, Option<u64>);

/// The row of `/proc/self/limits` whose name starts with `name` (`Max open files`).
pub fn parse_limit(limits: &str, name: &str) -> Option<Limit> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    let mut it = line[name.len()..].split_whitespace();
    let value = |s: &str| -> Option<Option<u64>> {
        if s == "unlimited" {
            Some(None)
        } else {
            s.parse().ok().map(Some)
        }
    };
    let soft = value(it.next()?)?;
    let hard = value(it.next()?)?;
    Some((soft, hard))
}

fn parse_u64(text: Option<&String>) -> Option<u64> {
    text?.trim().parse().ok()
}

/// `5.15.0-91-generic` -> (5, 15).
pub fn kernel_version(osrelease: &str) -> Option<(u32, u32)> {
    let mut it = osrelease.trim().split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// The CPUs this process may run on (`Cpus_allowed_list` of `/proc/self/status`).
pub fn allowed_cpus(facts: &HostFacts) -> Option<Vec<usize>> {
    let status = facts.self_status.as_ref()?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    parse_cpulist(line).filter(|c| !c.is_empty())
}

/// The CPUs online (`/sys/devices/system/cpu/online`).
pub fn online_cpus(facts: &HostFacts) -> Option<Vec<usize>> {
    parse_cpulist(facts.online.as_ref()?).filter(|c| !c.is_empty())
}

/// The CPUs to tune for: the allowed set, else the online set, else CPU 0.
pub fn usable_cpus(facts: &HostFacts) -> Vec<usize> {
    allowed_cpus(facts)
        .or_else(|| online_cpus(facts))
        .unwrap_or_else(|| vec![0])
}

/// Each CPU's SMT siblings (itself included), for the CPUs whose topology was read.
pub fn sibling_sets(facts: &HostFacts) -> BTreeMap<usize, Vec<usize>> {
    facts
        .siblings
        .iter()
        .filter_map(|(&cpu, text)| {
            let mut s = parse_cpulist(text)?;
            if !s.contains(&cpu) {
                s.push(cpu);
                s.sort_unstable();
            }
            Some((cpu, s))
        })
        .collect()
}

/// One `/proc/interrupts` row with a numeric IRQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IrqRow {
    pub irq: u32,
    /// (CPU id, count) for every CPU column.
    pub counts: Vec<(usize, u64)>,
    /// The rest of the line: chip, hardware IRQ, type, device names.
    pub description: String,
}

/// The numeric rows of `/proc/interrupts` (its header names the CPU columns).
pub fn parse_interrupts(text: &str) -> Vec<IrqRow> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let cols: Vec<usize> = header
        .split_whitespace()
        .filter_map(|c| c.strip_prefix("CPU")?.parse().ok())
        .collect();
    let mut rows = Vec::new();
    for line in lines {
        let Some((irq, rest)) = line.split_once(':') else {
            continue;
        };
        let Ok(irq) = irq.trim().parse::<u32>() else {
            continue;
        };
        let mut rest = rest.trim_start();
        let mut counts = Vec::with_capacity(cols.len());
        for &cpu in &cols {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            let Ok(n) = rest[..end].parse::<u64>() else {
                break;
            };
            counts.push((cpu, n));
            rest = rest[end..].trim_start();
        }
        rows.push(IrqRow {
            irq,
            counts,
            description: rest.trim_end().to_owned(),
        });
    }
    rows
}

/// Whether `id` occurs in `text` as a whole name: not preceded or followed by a letter or digit
/// (`virtio2` matches `virtio2-input.0`, not `virtio21-input.0`).
fn contains_name(text: &str, id: &str) -> bool {
    if id.is_empty() {
        return false;
    }
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(pos) = text[from..].find(id) {
        let start = from + pos;
        let end = start + id.len();
        let before = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after = end == bytes.len() || !bytes[end].is_ascii_alphanumeric();
        if before && after {
            return true;
        }
        from = start + 1;
    }
    false
}

/// A NIC's interrupts and the CPUs that serve them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NicIrqs {
    pub nic: String,
    pub irqs: Vec<u32>,
    /// CPUs that have taken at least one of these interrupts, or may take them (affinity).
    pub cpus: Vec<usize>,
}

/// The interrupts of each NIC (matched by name in `/proc/interrupts`) and their CPUs.
pub fn nic_irqs(facts: &HostFacts) -> Vec<NicIrqs> {
    let rows = facts
        .interrupts
        .as_deref()
        .map(parse_interrupts)
        .unwrap_or_default();
    let mut out = Vec::new();
    for nic in &facts.nics {
        let mut irqs = Vec::new();
        let mut cpus = BTreeSet::new();
        for row in &rows {
            let mine = std::iter::once(&nic.name)
                .chain(&nic.ids)
                .any(|id| contains_name(&row.description, id));
            // A vector that never fired (a virtio device's config interrupt) serves nothing.
            if !mine || row.counts.iter().all(|(_, n)| *n == 0) {
                continue;
            }
            irqs.push(row.irq);
            cpus.extend(row.counts.iter().filter(|(_, n)| *n > 0).map(|(c, _)| *c));
            if let Some(aff) = facts
                .irq_affinity
                .get(&row.irq)
                .and_then(|t| parse_cpulist(t))
            {
                cpus.extend(aff);
            }
        }
        if !irqs.is_empty() {
            out.push(NicIrqs {
                nic: nic.name.clone(),
                irqs,
                cpus: cpus.into_iter().collect(),
            });
        }
    }
    out
}

/// Every CPU that serves some NIC's interrupts.
pub fn irq_cpus(facts: &HostFacts) -> BTreeSet<usize> {
    nic_irqs(facts).into_iter().flat_map(|n| n.cpus).collect()
}

fn is_vm(facts: &HostFacts) -> bool {
    facts.cpuinfo.as_deref().is_some_and(|c| {
        c.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "hypervisor"))
    })
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

fn show_limit(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

/// The sysctl fix line: set now, and persist it.
fn sysctl_fix(key: &str, value: &str) -> String {
    format!(
        "sysctl -w {key}={value} && echo '{key} = {value}' >> /etc/sysctl.d/90-shardgate.conf",
        value = if value.contains(' ') {
            format!("\"{value}\"")
        } else {
            value.to_owned()
        }
    )
}

// ---------------------------------------------------------------- checks

/// Every check, in a fixed order.
pub fn run_all(facts: &HostFacts) -> Vec<Check> {
    vec![
        check_io_uring(facts),
        check_memlock(facts),
        check_nofile(facts),
        check_somaxconn(facts),
        check_syn_backlog(facts),
        check_migrate_req(facts),
        check_port_range(facts),
        check_cpus(facts),
        check_smt(facts),
        check_numa(facts),
        check_governor(facts),
        check_nic_irqs(facts),
    ]
}

pub fn check_io_uring(facts: &HostFacts) -> Check {
    let kernel = facts
        .osrelease
        .as_deref()
        .map_or_else(|| "kernel ?".to_owned(), |k| format!("kernel {}", k.trim()));
    let disabled = parse_u64(facts.uring_disabled.as_ref()).unwrap_or(0);
    match &facts.uring {
        None => Check::new("io_uring", Status::Warn, "not probed"),
        Some(UringProbe::Tuned) => Check::new(
            "io_uring",
            Status::Ok,
            format!(
                "available with COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN ({kernel}); the \
                 shards run on io_uring"
            ),
        ),
        Some(UringProbe::Plain(why)) => Check::new(
            "io_uring",
            Status::Warn,
            format!(
                "available, but the kernel refuses the fast set-up flags ({why}; {kernel}): the \
                 shards run a plain ring, which costs about a third more CPU per request \
                 (docs/decisions/0002)"
            ),
        )
        .fix("upgrade to a kernel >= 6.1"),
        Some(UringProbe::Blocked { errno, message }) => {
            let c = Check::new(
                "io_uring",
                Status::Warn,
                format!(
                    "blocked ({message}; {kernel}): the engine will use epoll (monoio's legacy \
                     driver), which works but costs more CPU per request"
                ),
            );
            if disabled == 2 {
                c.fix(sysctl_fix("kernel.io_uring_disabled", "0"))
            } else if disabled == 1 {
                c.fix(format!(
                    "{}   (or allow one group: sysctl -w kernel.io_uring_group=GID and run the \
                     engine in that group)",
                    sysctl_fix("kernel.io_uring_disabled", "0")
                ))
            } else {
                match errno {
                    // EPERM: a seccomp filter (Docker's default profile) or an LSM.
                    Some(1) => c.fix(
                        "a container's seccomp profile blocks io_uring_setup: run it with \
                         `docker run --security-opt seccomp=unconfined ...` (or a profile that \
                         allows io_uring_setup, io_uring_enter and io_uring_register)",
                    ),
                    // ENOSYS: no io_uring in this kernel.
                    Some(38) => c.fix(
                        "upgrade to a kernel built with CONFIG_IO_URING (>= 6.1 for the fast \
                         set-up)",
                    ),
                    // ENOMEM: rings counted against RLIMIT_MEMLOCK (kernels before 5.12).
                    Some(12) => c.fix(
                        "ulimit -l unlimited   (systemd: LimitMEMLOCK=infinity), or a kernel \
                         >= 5.12",
                    ),
                    _ => c,
                }
            }
        }
    }
}

pub fn check_memlock(facts: &HostFacts) -> Check {
    let Some((soft, hard)) = facts
        .limits
        .as_deref()
        .and_then(|l| parse_limit(l, "Max locked memory"))
    else {
        return Check::new("memlock", Status::Warn, "cannot read /proc/self/limits");
    };
    let modern = facts
        .osrelease
        .as_deref()
        .and_then(kernel_version)
        .is_some_and(|v| v >= (5, 12));
    let shown = soft.map_or_else(|| "unlimited".to_owned(), mib);
    match soft {
        None => Check::new("memlock", Status::Ok, "locked memory: unlimited"),
        Some(n) if n >= MEMLOCK_OK_FROM => {
            Check::new("memlock", Status::Ok, format!("locked memory: {shown}"))
        }
        Some(_) if modern => Check::new(
            "memlock",
            Status::Ok,
            format!(
                "locked memory: {shown}; enough: since kernel 5.12 io_uring rings are charged \
                 to the memory cgroup, not to this limit"
            ),
        ),
        Some(_) => {
            let raise = if hard.is_none() {
                "ulimit -l unlimited".to_owned()
            } else {
                format!(
                    "ulimit -l unlimited   (the hard limit is {}: raise it in \
                     /etc/security/limits.conf, `* - memlock unlimited`)",
                    show_limit(hard.map(|h| h >> 10)) + " KiB"
                )
            };
            Check::new(
                "memlock",
                Status::Warn,
                format!(
                    "locked memory: {shown}; before kernel 5.12 every io_uring ring is charged \
                     to it, so many shards may fail to build their rings (and fall back to epoll)"
                ),
            )
            .fix(format!("{raise}   (systemd: LimitMEMLOCK=infinity)"))
        }
    }
}

pub fn check_nofile(facts: &HostFacts) -> Check {
    let Some((soft, hard)) = facts
        .limits
        .as_deref()
        .and_then(|l| parse_limit(l, "Max open files"))
    else {
        return Check::new("nofile", Status::Warn, "cannot read /proc/self/limits");
    };
    let soft_n = soft.unwrap_or(u64::MAX);
    let hard_n = hard.unwrap_or(u64::MAX);
    let fix = if soft_n < hard_n.min(NOFILE_WANT) {
        let want = hard_n.min(NOFILE_WANT);
        let more = if hard_n < NOFILE_WANT {
            format!(
                "; the hard limit ({hard_n}) is raised by root: `* - nofile {NOFILE_WANT}` in \
                 /etc/security/limits.conf"
            )
        } else {
            String::new()
        };
        format!("ulimit -n {want}   (systemd: LimitNOFILE={NOFILE_WANT}{more})")
    } else {
        format!(
            "ulimit -Hn {NOFILE_WANT} && ulimit -n {NOFILE_WANT}   (as root: the hard limit is \
             {hard_n}; for good: `* - nofile {NOFILE_WANT}` in /etc/security/limits.conf, or \
             LimitNOFILE={NOFILE_WANT} in the systemd unit)"
        )
    };
    let detail = format!(
        "open files: {} (hard {}); each proxied request holds a client and an upstream socket",
        show_limit(soft),
        show_limit(hard)
    );
    if soft_n >= NOFILE_OK_FROM {
        Check::new("nofile", Status::Ok, detail)
    } else if soft_n >= NOFILE_FAIL_BELOW {
        Check::new("nofile", Status::Warn, detail).fix(fix)
    } else {
        Check::new(
            "nofile",
            Status::Fail,
            format!("{detail}: a few thousand clients exhaust it"),
        )
        .fix(fix)
    }
}

pub fn check_somaxconn(facts: &HostFacts) -> Check {
    match parse_u64(facts.somaxconn.as_ref()) {
        None => Check::new(
            "somaxconn",
            Status::Warn,
            "cannot read /proc/sys/net/core/somaxconn",
        ),
        Some(n) if n >= LISTEN_BACKLOG => Check::new(
            "somaxconn",
            Status::Ok,
            format!(
                "net.core.somaxconn = {n}: each shard's accept backlog of {LISTEN_BACKLOG} fits"
            ),
        ),
        Some(n) => Check::new(
            "somaxconn",
            Status::Warn,
            format!(
                "net.core.somaxconn = {n}: caps each shard's accept backlog ({LISTEN_BACKLOG}); \
                 bursts of new connections past it are dropped"
            ),
        )
        .fix(sysctl_fix(
            "net.core.somaxconn",
            &LISTEN_BACKLOG.to_string(),
        )),
    }
}

pub fn check_syn_backlog(facts: &HostFacts) -> Check {
    match parse_u64(facts.syn_backlog.as_ref()) {
        None => Check::new(
            "tcp_max_syn_backlog",
            Status::Warn,
            "cannot read /proc/sys/net/ipv4/tcp_max_syn_backlog",
        ),
        Some(n) if n >= SYN_BACKLOG_OK_FROM => Check::new(
            "tcp_max_syn_backlog",
            Status::Ok,
            format!("net.ipv4.tcp_max_syn_backlog = {n}"),
        ),
        Some(n) => Check::new(
            "tcp_max_syn_backlog",
            Status::Warn,
            format!(
                "net.ipv4.tcp_max_syn_backlog = {n}: half-open connections past it fall back to \
                 SYN cookies or are dropped in a connection burst"
            ),
        )
        .fix(sysctl_fix("net.ipv4.tcp_max_syn_backlog", "8192")),
    }
}

/// Whether an upgrade by a second instance on the same port keeps the connections queued in
/// the first one's listeners (`net.ipv4.tcp_migrate_req`).
pub fn check_migrate_req(facts: &HostFacts) -> Check {
    match shardgate_tune::migrate_req_advice(facts.migrate_req.as_deref()) {
        None => Check::new(
            "tcp_migrate_req",
            Status::Ok,
            "net.ipv4.tcp_migrate_req = 1",
        ),
        Some(why) => {
            let c = Check::new("tcp_migrate_req", Status::Warn, why);
            if facts.migrate_req.is_some() {
                c.fix(sysctl_fix("net.ipv4.tcp_migrate_req", "1"))
            } else {
                c
            }
        }
    }
}

pub fn check_port_range(facts: &HostFacts) -> Check {
    let range = facts.port_range.as_deref().and_then(|t| {
        let mut it = t.split_whitespace().map(|v| v.parse::<u64>().ok());
        Some((it.next()??, it.next()??))
    });
    match range {
        None => Check::new(
            "ephemeral_ports",
            Status::Warn,
            "cannot read /proc/sys/net/ipv4/ip_local_port_range",
        ),
        Some((lo, hi)) => {
            let n = (hi + 1).saturating_sub(lo);
            let detail = format!(
                "net.ipv4.ip_local_port_range = {lo} {hi}: {n} ports, so at most {n} connections \
                 (open or in TIME_WAIT) from this host to each upstream address"
            );
            if n >= PORTS_OK_FROM {
                Check::new("ephemeral_ports", Status::Ok, detail)
            } else {
                Check::new("ephemeral_ports", Status::Warn, detail)
                    .fix(sysctl_fix("net.ipv4.ip_local_port_range", "1024 65535"))
            }
        }
    }
}

pub fn check_cpus(facts: &HostFacts) -> Check {
    let online = online_cpus(facts);
    let allowed = allowed_cpus(facts);
    match (online, allowed) {
        (Some(on), Some(al)) if al.len() < on.len() => Check::new(
            "cpus",
            Status::Warn,
            format!(
                "{} CPUs online ({}), this process may use {} ({}): the sweep and \
                 `cores = \"auto\"` see only those (taskset, a cpuset or systemd CPUAffinity)",
                on.len(),
                format_cpulist(&on),
                al.len(),
                format_cpulist(&al)
            ),
        )
        .fix("run shardgate-tune (and the engine) without the CPU restriction to tune for the whole machine"),
        (Some(on), _) => Check::new(
            "cpus",
            Status::Ok,
            format!("{} CPUs online ({})", on.len(), format_cpulist(&on)),
        ),
        (None, Some(al)) => Check::new(
            "cpus",
            Status::Ok,
            format!("{} CPUs usable ({})", al.len(), format_cpulist(&al)),
        ),
        (None, None) => Check::new(
            "cpus",
            Status::Warn,
            "cannot read /sys/devices/system/cpu/online or /proc/self/status; assuming 1 CPU",
        ),
    }
}

pub fn check_smt(facts: &HostFacts) -> Check {
    let sets = sibling_sets(facts);
    if sets.is_empty() {
        return Check::new(
            "smt",
            Status::Ok,
            "no CPU topology in /sys (thread_siblings_list): SMT unknown",
        );
    }
    let groups: BTreeSet<Vec<usize>> = sets.values().cloned().collect();
    let shared: Vec<&Vec<usize>> = groups.iter().filter(|g| g.len() > 1).collect();
    if shared.is_empty() {
        return Check::new(
            "smt",
            Status::Ok,
            format!("no SMT siblings: {} physical cores", groups.len()),
        );
    }
    let threads = shared.iter().map(|g| g.len()).max().unwrap_or(2);
    let example: Vec<String> = shared
        .iter()
        .take(3)
        .map(|g| format!("{{{}}}", join_cpus(g)))
        .collect();
    Check::new(
        "smt",
        Status::Ok,
        format!(
            "SMT on: {} physical cores with up to {threads} threads each (siblings {}{}); the \
             sweep also tries one thread per core",
            groups.len(),
            example.join(" "),
            if shared.len() > 3 { " ..." } else { "" }
        ),
    )
}

pub fn check_numa(facts: &HostFacts) -> Check {
    let nodes: Vec<(usize, Vec<usize>)> = facts
        .nodes
        .iter()
        .filter_map(|(&n, t)| Some((n, parse_cpulist(t)?)))
        .filter(|(_, c)| !c.is_empty())
        .collect();
    match nodes.len() {
        0 => Check::new(
            "numa",
            Status::Ok,
            "no NUMA information in /sys/devices/system/node: one node assumed",
        ),
        1 => Check::new("numa", Status::Ok, "one NUMA node"),
        n => {
            let list: Vec<String> = nodes
                .iter()
                .map(|(id, c)| format!("node{id}: {}", format_cpulist(c)))
                .collect();
            let first = &nodes[0];
            Check::new(
                "numa",
                Status::Warn,
                format!(
                    "{n} NUMA nodes ({}): shards spread over nodes pay for remote memory; keep \
                     them on the node of the NIC (/sys/class/net/IFACE/device/numa_node)",
                    list.join(", ")
                ),
            )
            .fix(format!(
                "taskset -c {} shardgate-tune ...   (sweep one node's CPUs; the tuning file then \
                 names only those)",
                format_cpulist(&first.1)
            ))
        }
    }
}

pub fn check_governor(facts: &HostFacts) -> Check {
    if facts.governors.is_empty() {
        let why = if is_vm(facts) {
            "a VM (the CPU flags say hypervisor): the host sets the frequency"
        } else {
            "no frequency driver loaded, or a VM: the firmware or the host sets the frequency"
        };
        return Check::new(
            "cpu_governor",
            Status::Ok,
            format!("no cpufreq in /sys/devices/system/cpu/cpu*/cpufreq: {why}"),
        );
    }
    let mut by: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (&cpu, g) in &facts.governors {
        by.entry(g.trim().to_owned()).or_default().push(cpu);
    }
    let summary: Vec<String> = by
        .iter()
        .map(|(g, c)| format!("{g} on CPUs {}", format_cpulist(c)))
        .collect();
    if by.keys().all(|g| g == "performance") {
        Check::new(
            "cpu_governor",
            Status::Ok,
            format!("governor: {}", summary.join("; ")),
        )
    } else {
        Check::new(
            "cpu_governor",
            Status::Warn,
            format!(
                "governor: {}: frequency ramps add latency and make the sweep noisy",
                summary.join("; ")
            ),
        )
        .fix(
            "cpupower frequency-set -g performance   (or: echo performance | tee \
             /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor)",
        )
    }
}

pub fn check_nic_irqs(facts: &HostFacts) -> Check {
    if facts.nics.is_empty() {
        return Check::new(
            "nic_irqs",
            Status::Ok,
            "no network interface with a device under /sys/class/net (loopback only)",
        );
    }
    let found = nic_irqs(facts);
    if found.is_empty() {
        let names: Vec<&str> = facts.nics.iter().map(|n| n.name.as_str()).collect();
        return Check::new(
            "nic_irqs",
            Status::Ok,
            format!(
                "no interrupts named after {} in /proc/interrupts (a virtual NIC that polls, or \
                 names its queues differently): cannot tell which cores they use",
                names.join(", ")
            ),
        );
    }
    let usable = usable_cpus(facts);
    let all_irq: BTreeSet<usize> = found.iter().flat_map(|n| n.cpus.iter().copied()).collect();
    let desc: Vec<String> = found
        .iter()
        .map(|n| {
            format!(
                "{}: IRQ {} on CPUs {}",
                n.nic,
                n.irqs
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                format_cpulist(&n.cpus)
            )
        })
        .collect();
    let irq_list = found
        .iter()
        .flat_map(|n| n.irqs.iter().map(u32::to_string))
        .collect::<Vec<_>>()
        .join(" ");
    let spare = usable.first().copied().unwrap_or(0);
    if usable.len() > 1 && usable.iter().all(|c| all_irq.contains(c)) {
        Check::new(
            "nic_irqs",
            Status::Warn,
            format!(
                "{}: every core takes NIC interrupts, so every shard shares its core with them",
                desc.join("; ")
            ),
        )
        .fix(format!(
            "systemctl disable --now irqbalance; for i in {irq_list}; do echo {spare} > \
             /proc/irq/$i/smp_affinity_list; done   (then prefer a core set that leaves CPU \
             {spare} to them)"
        ))
    } else {
        Check::new(
            "nic_irqs",
            Status::Ok,
            format!(
                "{}; a core set that leaves CPUs {} free keeps shards and NIC interrupts apart",
                desc.join("; "),
                format_cpulist(&all_irq.iter().copied().collect::<Vec<_>>())
            ),
        )
    }
}

/// The CPUs of `cores` that also serve NIC interrupts.
pub fn shared_with_irqs(facts: &HostFacts, cores: &[usize]) -> Vec<usize> {
    let irq = irq_cpus(facts);
    cores.iter().copied().filter(|c| irq.contains(c)).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max open files            1024                 524288               files     
Max locked memory         8388608              8388608              bytes     
Max address space         unlimited            unlimited            bytes     
";

    const INTERRUPTS: &str = "\
           CPU0       CPU1       
 24:          1          0  IO-APIC   5-edge      ACPI:Ged
 28:          0          0 PCI-MSIX-0000:00:01.0   0-edge      virtio0-config
 36:          0     675551 PCI-MSIX-0000:00:02.0   1-edge      virtio1-req.0
 38:          0       8140 PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0
 39:       5572          0 PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0
 41:       9164          0 PCI-MSIX-0000:00:04.0   1-edge      virtio21-rx
NMI:          0          0   Non-maskable interrupts
LOC:    3236791    3493050   Local timer interrupts
ERR:          0
";

    fn vm() -> HostFacts {
        HostFacts {
            uring: Some(UringProbe::Tuned),
            uring_disabled: Some("0\n".into()),
            osrelease: Some("6.1.0-18-amd64\n".into()),
            limits: Some(LIMITS.into()),
            somaxconn: Some("4096\n".into()),
            syn_backlog: Some("2048\n".into()),
            migrate_req: None,
            port_range: Some("32768\t60999\n".into()),
            online: Some("0-1\n".into()),
            self_status: Some("Name:\tx\nCpus_allowed_list:\t0-1\nMems_allowed:\t1\n".into()),
            siblings: BTreeMap::from([(0, "0\n".into()), (1, "1\n".into())]),
            nodes: BTreeMap::from([(0, "0-1\n".into())]),
            governors: BTreeMap::new(),
            cpuinfo: Some("processor\t: 0\nflags\t\t: fpu vme hypervisor lahf_lm\n".into()),
            interrupts: Some(INTERRUPTS.into()),
            nics: vec![Nic {
                name: "eth0".into(),
                ids: vec!["virtio2".into(), "0000:00:03.0".into()],
            }],
            irq_affinity: BTreeMap::from([(38, "1\n".into()), (39, "0\n".into())]),
        }
    }

    fn find(checks: &[Check], name: &str) -> Check {
        checks.iter().find(|c| c.name == name).unwrap().clone()
    }

    #[test]
    fn cpulists() {
        assert_eq!(
            parse_cpulist("0-3,8,10-11\n"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpulist("0-7:2"), Some(vec![0, 2, 4, 6]));
        assert_eq!(parse_cpulist(""), Some(vec![]));
        assert_eq!(parse_cpulist("3-1"), None);
        assert_eq!(parse_cpulist("x"), None);
        assert_eq!(format_cpulist(&[3, 0, 1, 2, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(format_cpulist(&[5]), "5");
        assert_eq!(join_cpus(&[2, 0]), "2,0");
    }

    #[test]
    fn limits_and_kernel() {
        assert_eq!(
            parse_limit(LIMITS, "Max open files"),
            Some((Some(1024), Some(524_288)))
        );
        assert_eq!(parse_limit(LIMITS, "Max cpu time"), Some((None, None)));
        assert_eq!(parse_limit(LIMITS, "Max nothing"), None);
        assert_eq!(kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0"), Some((5, 4)));
    }

    #[test]
    fn a_small_vm() {
        let f = vm();
        let c = run_all(&f);
        assert_eq!(c.len(), 12);
        // tcp_migrate_req unread: warned, no fix to give.
        let migrate = find(&c, "tcp_migrate_req");
        assert_eq!(migrate.status, Status::Warn);
        assert!(migrate.fix.is_none());
        let mut on = vm();
        on.migrate_req = Some("1\n".into());
        assert_eq!(check_migrate_req(&on).status, Status::Ok);
        on.migrate_req = Some("0\n".into());
        let off = check_migrate_req(&on);
        assert_eq!(off.status, Status::Warn);
        assert!(off
            .fix
            .unwrap()
            .starts_with("sysctl -w net.ipv4.tcp_migrate_req=1"));
        assert_eq!(find(&c, "io_uring").status, Status::Ok);
        // 8 MiB on a 6.1 kernel is enough.
        assert_eq!(find(&c, "memlock").status, Status::Ok);
        let nofile = find(&c, "nofile");
        assert_eq!(nofile.status, Status::Fail);
        assert!(nofile
            .fix
            .as_deref()
            .unwrap()
            .starts_with("ulimit -n 524288"));
        assert_eq!(find(&c, "somaxconn").status, Status::Ok);
        let syn = find(&c, "tcp_max_syn_backlog");
        assert_eq!(syn.status, Status::Warn);
        assert!(syn
            .fix
            .unwrap()
            .starts_with("sysctl -w net.ipv4.tcp_max_syn_backlog=8192"));
        let ports = find(&c, "ephemeral_ports");
        assert_eq!(ports.status, Status::Ok);
        assert!(ports.detail.contains("28232 ports"), "{}", ports.detail);
        assert!(find(&c, "cpus").detail.starts_with("2 CPUs online (0-1)"));
        assert!(find(&c, "smt").detail.contains("no SMT"));
        assert_eq!(find(&c, "numa").detail, "one NUMA node");
        let gov = find(&c, "cpu_governor");
        assert_eq!(gov.status, Status::Ok);
        assert!(gov.detail.contains("a VM"), "{}", gov.detail);
        // virtio2's queues, not virtio21's, and the affinity is read.
        let nic = nic_irqs(&f);
        assert_eq!(
            nic,
            vec![NicIrqs {
                nic: "eth0".into(),
                irqs: vec![38, 39],
                cpus: vec![0, 1]
            }]
        );
        let irq = find(&c, "nic_irqs");
        assert_eq!(irq.status, Status::Warn);
        assert!(irq.fix.unwrap().contains("for i in 38 39; do echo 0 >"));
        assert_eq!(shared_with_irqs(&f, &[1]), vec![1]);
    }

    #[test]
    fn nic_irqs_on_one_core_are_ok() {
        let mut f = vm();
        f.interrupts = Some(INTERRUPTS.replace("8140", "0"));
        f.irq_affinity = BTreeMap::from([(38, "0".into()), (39, "0".into())]);
        let c = check_nic_irqs(&f);
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert_eq!(irq_cpus(&f), BTreeSet::from([0]));
        f.nics.clear();
        assert!(check_nic_irqs(&f).detail.contains("loopback only"));
    }

    #[test]
    fn uring_blocked_says_epoll_and_how_to_fix() {
        let mut f = vm();
        f.uring = Some(UringProbe::Blocked {
            errno: Some(1),
            message: "Operation not permitted (os error 1)".into(),
        });
        let c = check_io_uring(&f);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("will use epoll"));
        assert!(c.fix.unwrap().contains("seccomp=unconfined"));
        assert_eq!(
            f.uring.as_ref().unwrap().driver(),
            shardgate_tune::Driver::Epoll
        );
        f.uring_disabled = Some("2".into());
        assert!(check_io_uring(&f)
            .fix
            .unwrap()
            .starts_with("sysctl -w kernel.io_uring_disabled=0"));
        f.uring = Some(UringProbe::Plain("EINVAL".into()));
        assert!(check_io_uring(&f).fix.unwrap().contains("6.1"));
    }

    #[test]
    fn memlock_on_old_kernels() {
        let mut f = vm();
        f.osrelease = Some("5.4.0-150-generic".into());
        let c = check_memlock(&f);
        assert_eq!(c.status, Status::Warn);
        assert!(c.detail.contains("8 MiB"), "{}", c.detail);
        assert!(c.fix.unwrap().contains("LimitMEMLOCK=infinity"));
        f.limits = Some(LIMITS.replace("8388608              8388608", "unlimited unlimited"));
        assert_eq!(check_memlock(&f).status, Status::Ok);
    }

    #[test]
    fn smt_numa_governor_and_restricted_cpus() {
        let mut f = vm();
        f.online = Some("0-3".into());
        f.self_status = Some("Cpus_allowed_list:\t0-1\n".into());
        f.siblings = BTreeMap::from([
            (0, "0,2".into()),
            (1, "1,3".into()),
            (2, "0,2".into()),
            (3, "1,3".into()),
        ]);
        f.nodes = BTreeMap::from([(0, "0-1".into()), (1, "2-3".into())]);
        f.governors = BTreeMap::from([(0, "powersave\n".into()), (1, "performance\n".into())]);
        let cpus = check_cpus(&f);
        assert_eq!(cpus.status, Status::Warn);
        assert!(cpus.detail.contains("may use 2 (0-1)"), "{}", cpus.detail);
        assert_eq!(usable_cpus(&f), vec![0, 1]);
        let smt = check_smt(&f);
        assert!(
            smt.detail.starts_with("SMT on: 2 physical cores"),
            "{}",
            smt.detail
        );
        let numa = check_numa(&f);
        assert_eq!(numa.status, Status::Warn);
        assert!(numa
            .fix
            .unwrap()
            .starts_with("taskset -c 0-1 shardgate-tune"));
        let g = check_governor(&f);
        assert_eq!(g.status, Status::Warn);
        assert!(g.detail.contains("powersave on CPUs 0"), "{}", g.detail);
        f.governors = BTreeMap::from([(0, "performance".into())]);
        assert_eq!(check_governor(&f).status, Status::Ok);
    }

    #[test]
    fn missing_files_warn_instead_of_failing() {
        let f = HostFacts::default();
        let c = run_all(&f);
        assert_eq!(c.len(), 12);
        assert!(c.iter().all(|c| c.status != Status::Fail), "{c:#?}");
        assert_eq!(usable_cpus(&f), vec![0]);
    }
}
