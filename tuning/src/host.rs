//! The thin reader behind [`crate::checks`]: reads the `/proc` and `/sys` files into a
//! [`HostFacts`] and probes io_uring. Nothing here decides anything.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use crate::checks::{HostFacts, Nic, UringProbe};

/// Ring size of the probe (the engine's is 1024; the size does not change the answer).
const PROBE_ENTRIES: u32 = 64;

fn read(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// `prefixN` entries of a directory, by N.
fn numbered(dir: &str, prefix: &str) -> Vec<usize> {
    let mut out: Vec<usize> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix(prefix)?
                .parse::<usize>()
                .ok()
        })
        .collect();
    out.sort_unstable();
    out
}

/// Build a ring the way a shard does (fast set-up flags), then a plain one.
pub fn probe_uring() -> UringProbe {
    let tuned = io_uring::IoUring::<io_uring::squeue::Entry, io_uring::cqueue::Entry>::builder()
        .setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(PROBE_ENTRIES);
    let tuned_err = match tuned {
        Ok(_ring) => return UringProbe::Tuned,
        Err(e) => e,
    };
    match io_uring::IoUring::new(PROBE_ENTRIES) {
        Ok(_ring) => UringProbe::Plain(tuned_err.to_string()),
        Err(e) => UringProbe::Blocked {
            errno: e.raw_os_error(),
            message: e.to_string(),
        },
    }
}

/// Everything the checks need, read now.
pub fn read_facts() -> HostFacts {
    let cpu_dir = "/sys/devices/system/cpu";
    let cpus = numbered(cpu_dir, "cpu");
    let mut siblings = BTreeMap::new();
    let mut governors = BTreeMap::new();
    for &c in &cpus {
        if let Some(s) = read(format!("{cpu_dir}/cpu{c}/topology/thread_siblings_list")) {
            siblings.insert(c, s);
        }
        if let Some(g) = read(format!("{cpu_dir}/cpu{c}/cpufreq/scaling_governor")) {
            governors.insert(c, g);
        }
    }
    let mut nodes = BTreeMap::new();
    for n in numbered("/sys/devices/system/node", "node") {
        if let Some(l) = read(format!("/sys/devices/system/node/node{n}/cpulist")) {
            nodes.insert(n, l);
        }
    }
    let nics = read_nics();
    let interrupts = read("/proc/interrupts");
    let mut irq_affinity = BTreeMap::new();
    if let Some(text) = &interrupts {
        for row in crate::checks::parse_interrupts(text) {
            let aff = read(format!("/proc/irq/{}/effective_affinity_list", row.irq))
                .filter(|s| !s.trim().is_empty())
                .or_else(|| read(format!("/proc/irq/{}/smp_affinity_list", row.irq)));
            if let Some(a) = aff {
                irq_affinity.insert(row.irq, a);
            }
        }
    }
    HostFacts {
        uring: Some(probe_uring()),
        uring_disabled: read("/proc/sys/kernel/io_uring_disabled"),
        osrelease: read("/proc/sys/kernel/osrelease"),
        limits: read("/proc/self/limits"),
        somaxconn: read("/proc/sys/net/core/somaxconn"),
        syn_backlog: read("/proc/sys/net/ipv4/tcp_max_syn_backlog"),
        migrate_req: read(shardgate_tune::MIGRATE_REQ_PATH),
        port_range: read("/proc/sys/net/ipv4/ip_local_port_range"),
        online: read(format!("{cpu_dir}/online")),
        self_status: read("/proc/self/status"),
        siblings,
        nodes,
        governors,
        cpuinfo: read("/proc/cpuinfo"),
        interrupts,
        nics,
        irq_affinity,
    }
}

/// Interfaces with a `device` link (physical or virtio NICs), with the names their interrupts
/// may carry.
fn read_nics() -> Vec<Nic> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir("/sys/class/net") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(dev) = fs::canonicalize(e.path().join("device")) else {
            continue; // virtual: lo, bridges, veths, ifb
        };
        let mut ids = Vec::new();
        if let Some(n) = dev.file_name().and_then(|n| n.to_str()) {
            ids.push(n.to_owned());
        }
        // A virtio NIC's device is `virtioN` under its PCI function: its MSI-X vectors are
        // named after either.
        if let Some(n) = dev
            .parent()
            .and_then(Path::file_name)
            .and_then(|n| n.to_str())
            .filter(|n| n.contains(':'))
        {
            ids.push(n.to_owned());
        }
        out.push(Nic { name, ids });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `/proc/sys/kernel/hostname`, else `localhost`.
pub fn hostname() -> String {
    read("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}
