//! Reading `/proc`: CPU ticks and RSS of a process tree, per-CPU busy and steal ticks.
//!
//! The parsers are pure (text in, numbers out) and unit-tested; the readers around them only
//! open the files. Ticks are clock ticks (`getconf CLK_TCK`, 100 on Linux).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use anyhow::{anyhow, bail, Context};

/// utime and stime of one process (fields 14 and 15 of `/proc/PID/stat`), and the times of its
/// waited-for children (fields 16 and 17), in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcTicks {
    /// Parent process id (field 4).
    pub ppid: u32,
    /// State letter (field 3): `R`, `S`, `Z`, ...
    pub state: char,
    /// utime + stime of the process itself (all its threads).
    pub own: u64,
    /// cutime + cstime: children this process has waited for.
    pub children: u64,
}

/// Parse one `/proc/PID/stat` line. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so fields are counted from the *last* `)`.
pub fn parse_pid_stat(line: &str) -> anyhow::Result<ProcTicks> {
    let close = line
        .rfind(')')
        .ok_or_else(|| anyhow!("no ')' after the comm field"))?;
    // Fields from 3 (state) on: field n is at index n - 3.
    let fields: Vec<&str> = line[close + 1..].split_whitespace().collect();
    if fields.len() < 15 {
        bail!("only {} fields after the comm field", fields.len());
    }
    let num = |i: usize| -> anyhow::Result<u64> {
        fields[i]
            .parse::<u64>()
            .with_context(|| format!("field {} = {:?}", i + 3, fields[i]))
    };
    let state = fields[0].chars().next().unwrap_or('?');
    let ppid = u32::try_from(num(1)?).context("ppid out of range")?;
    Ok(ProcTicks {
        ppid,
        state,
        own: num(11)? + num(12)?,
        children: num(13)? + num(14)?,
    })
}

/// `VmRSS` in KiB from the text of `/proc/PID/status` (0 when absent, e.g. a zombie).
pub fn parse_vmrss_kib(status: &str) -> anyhow::Result<u64> {
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            let v = rest
                .split_whitespace()
                .next()
                .ok_or_else(|| anyhow!("empty VmRSS line"))?;
            return v.parse().with_context(|| format!("VmRSS value {v:?}"));
        }
    }
    Ok(0)
}

/// One `cpuN` line of `/proc/stat`, in ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTicks {
    /// user + nice + system + irq + softirq: time the CPU ran something (guest time is inside user).
    pub busy: u64,
    /// Time the hypervisor ran something else while this vCPU wanted to run.
    pub steal: u64,
}

/// The `cpuN` lines of `/proc/stat`, by CPU number.
pub fn parse_proc_stat(text: &str) -> anyhow::Result<BTreeMap<usize, CpuTicks>> {
    let mut cpus = BTreeMap::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(name) = it.next() else { continue };
        let Some(num) = name.strip_prefix("cpu") else {
            continue;
        };
        if num.is_empty() {
            continue; // the "cpu" total line
        }
        let cpu: usize = num
            .parse()
            .with_context(|| format!("/proc/stat line {name:?}"))?;
        let v: Vec<u64> = it
            .map(|f| f.parse::<u64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("/proc/stat line {name:?}"))?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]
        if v.len() < 8 {
            bail!(
                "/proc/stat line {name:?} has {} values, want at least 8",
                v.len()
            );
        }
        cpus.insert(
            cpu,
            CpuTicks {
                busy: v[0] + v[1] + v[2] + v[5] + v[6],
                steal: v[7],
            },
        );
    }
    Ok(cpus)
}

/// The root and all its descendants, given every process's `(pid, ppid)`. Bounded: a cycle
/// (impossible in /proc, but cheap to guard) cannot loop.
pub fn descendants(root: u32, parents: &[(u32, u32)]) -> Vec<u32> {
    let mut all = vec![root];
    let mut seen: BTreeSet<u32> = BTreeSet::from([root]);
    let mut i = 0;
    while i < all.len() {
        let p = all[i];
        for &(pid, ppid) in parents {
            if ppid == p && seen.insert(pid) {
                all.push(pid);
            }
        }
        i += 1;
    }
    all
}

// ---------------------------------------------------------------- readers

/// Ticks of one live process; an error if it is gone or a zombie.
pub fn read_pid(pid: u32) -> anyhow::Result<ProcTicks> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    let t = parse_pid_stat(&text).with_context(|| format!("/proc/{pid}/stat"))?;
    if t.state == 'Z' {
        bail!("process {pid} is a zombie");
    }
    Ok(t)
}

/// utime + stime summed over the given processes; an error if one of them is gone.
pub fn tree_ticks(pids: &[u32]) -> anyhow::Result<u64> {
    pids.iter().map(|&p| read_pid(p).map(|t| t.own)).sum()
}

/// cutime + cstime of this process: grows by a child's CPU time when it is waited for.
pub fn self_children_ticks() -> anyhow::Result<u64> {
    let text = fs::read_to_string("/proc/self/stat").context("/proc/self/stat")?;
    Ok(parse_pid_stat(&text)?.children)
}

/// VmRSS summed over the given processes, KiB (a process already gone counts 0).
pub fn tree_rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| parse_vmrss_kib(&s).ok())
        .sum()
}

/// Open file descriptors summed over the given processes (a process already gone counts 0).
pub fn tree_fds(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| fs::read_dir(format!("/proc/{p}/fd")).ok())
        .map(|d| d.count() as u64)
        .sum()
}

/// `/proc/net/tcp` states in which the accepting side still holds a connection: ESTABLISHED,
/// SYN_RECV, CLOSE_WAIT (the client left, the server has not closed yet).
const HELD_TCP_STATES: [&str; 3] = ["01", "03", "08"];

/// Connections a server listening on 127.0.0.1:`port` still holds, from the text of
/// `/proc/net/tcp`: lines whose local address is port `port` (any IPv4 address) in one of the
/// [`HELD_TCP_STATES`]. The listening socket itself (state 0A) and TIME_WAIT (06) are not
/// counted. Lines that do not parse are skipped.
pub fn count_held_conns(proc_net_tcp: &str, port: u16) -> u64 {
    let want = format!("{port:04X}");
    proc_net_tcp
        .lines()
        .skip(1)
        .filter(|line| {
            let mut f = line.split_whitespace();
            let (Some(_sl), Some(local), Some(_remote), Some(state)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                return false;
            };
            local
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.eq_ignore_ascii_case(&want))
                && HELD_TCP_STATES.contains(&state)
        })
        .count() as u64
}

/// [`count_held_conns`] on this network namespace's `/proc/net/tcp` now (0 when unreadable).
pub fn held_conns(port: u16) -> u64 {
    fs::read_to_string("/proc/net/tcp").map_or(0, |t| count_held_conns(&t, port))
}

/// A process and every process below it, from a scan of `/proc`.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok(t) = fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_err(anyhow::Error::from)
                .and_then(|s| parse_pid_stat(&s))
            {
                parents.push((pid, t.ppid));
            }
        }
    }
    descendants(root, &parents)
}

/// The per-CPU lines of `/proc/stat` now.
pub fn read_cpus() -> anyhow::Result<BTreeMap<usize, CpuTicks>> {
    parse_proc_stat(&fs::read_to_string("/proc/stat").context("/proc/stat")?)
}

/// One CPU's ticks from a snapshot; an error naming the CPU if it does not exist.
pub fn cpu(snapshot: &BTreeMap<usize, CpuTicks>, n: usize) -> anyhow::Result<CpuTicks> {
    snapshot
        .get(&n)
        .copied()
        .ok_or_else(|| anyhow!("cpu{n} is not in /proc/stat"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn held_connections_of_a_port() {
        // 0x4E23 = 20003. Listening, two established accepted sides, one CLOSE_WAIT, one
        // TIME_WAIT, the client side of a connection (remote port 20003), another port.
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4E23 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:4E23 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:4E23 0200007F:9C41 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:4E23 0100007F:9C42 08 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
   4: 0100007F:4E23 0100007F:9C43 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0
   5: 0100007F:9C40 0100007F:4E23 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0 20 4 30 10 -1
   6: 0100007F:4E24 0100007F:9C44 01 00000000:00000000 00:00000000 00000000     0        0 6 1 0 20 4 30 10 -1
   7: garbage
";
        assert_eq!(count_held_conns(text, 20003), 3);
        assert_eq!(count_held_conns(text, 20004), 1);
        assert_eq!(
            count_held_conns(text, 40000),
            1,
            "the client side of line 5"
        );
        assert_eq!(count_held_conns("", 20003), 0);
    }

    #[test]
    fn pid_stat_fields_14_to_17_after_the_comm() {
        let line = "1234 (nginx) S 1 1234 1234 0 -1 4194560 300 0 0 0 17 5 3 2 20 0 1 0 \
                    123 1000 200 18446744073709551615";
        let t = parse_pid_stat(line).unwrap();
        assert_eq!(
            t,
            ProcTicks {
                ppid: 1,
                state: 'S',
                own: 22,
                children: 5
            }
        );
    }

    #[test]
    fn pid_stat_comm_with_spaces_and_parens() {
        // nginx names its worker "nginx: worker process"; a comm may even hold ") x (".
        let line = "77 (nginx: worker ) S (x) R 76 77 77 0 -1 0 0 0 0 0 1000 250 7 8 20 0 1 0 9";
        let t = parse_pid_stat(line).unwrap();
        assert_eq!(t.state, 'R');
        assert_eq!(t.ppid, 76);
        assert_eq!(t.own, 1250);
        assert_eq!(t.children, 15);
    }

    #[test]
    fn pid_stat_rejects_short_or_garbled_lines() {
        assert!(parse_pid_stat("12 nginx S 1 2 3").is_err());
        assert!(parse_pid_stat("12 (x) S 1 2 3 4 5").is_err());
        assert!(parse_pid_stat("12 (x) S 1 1 1 0 -1 0 0 0 0 0 zz 5 0 0 20").is_err());
    }

    #[test]
    fn pid_stat_of_this_process_parses() {
        let t = parse_pid_stat(&fs::read_to_string("/proc/self/stat").unwrap()).unwrap();
        assert_ne!(t.state, 'Z');
        assert!(read_pid(std::process::id()).is_ok());
    }

    #[test]
    fn vmrss() {
        let s = "Name:\tnginx\nVmPeak:\t  20000 kB\nVmRSS:\t   13312 kB\nThreads:\t1\n";
        assert_eq!(parse_vmrss_kib(s).unwrap(), 13312);
        assert_eq!(
            parse_vmrss_kib("Name:\tz\nState:\tZ (zombie)\n").unwrap(),
            0
        );
        assert!(parse_vmrss_kib("VmRSS:\t x kB\n").is_err());
    }

    #[test]
    fn proc_stat_busy_and_steal() {
        let text = "cpu  155329 0 175443 3523437 42435 0 90557 43560 0 0\n\
                    cpu0 78919 1 79070 1748960 37981 2 49699 20473 0 0\n\
                    cpu1 76409 0 96373 1774476 4453 0 40857 23087 0 0\n\
                    intr 6474974 0 0\nctxt 1\n";
        let c = parse_proc_stat(text).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[&0],
            CpuTicks {
                busy: 78919 + 1 + 79070 + 2 + 49699,
                steal: 20473
            }
        );
        assert_eq!(c[&1].steal, 23087);
        assert!(cpu(&c, 2).is_err());
        assert!(parse_proc_stat("cpu0 1 2 3\n").is_err());
    }

    #[test]
    fn proc_stat_of_this_machine_parses() {
        let c = read_cpus().unwrap();
        assert!(c.contains_key(&0));
    }

    #[test]
    fn descendants_walks_the_tree_only() {
        // 10 = nginx master; 11 its worker; 12 a grandchild; 20 unrelated; 1 init.
        let parents = [(1, 0), (10, 1), (11, 10), (12, 11), (20, 1), (21, 20)];
        assert_eq!(descendants(10, &parents), vec![10, 11, 12]);
        assert_eq!(descendants(99, &parents), vec![99]);
        // A cycle terminates.
        assert_eq!(descendants(5, &[(5, 6), (6, 5)]), vec![5, 6]);
    }
}
