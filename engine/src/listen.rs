//! Handing a port over without losing a connection (issue 19): when the shards start listening,
//! and how their listeners close when the engine drains.
//!
//! # Start
//! Each shard binds its SO_REUSEPORT sockets without listening (a bound socket that does not
//! listen is not in the port's group: the kernel gives it no connection), builds its runtime and
//! its config, reports ready, and waits at the [`Handover`]'s gate. The main thread opens the
//! gate once every shard is ready, so a new instance takes connections only once every shard
//! runs its config; an instance that fails to start never held a connection it would reset.
//!
//! # Drain
//! A listener that closes resets the connections in its queues: the accept queue (handshake
//! done, not yet accepted) and the SYN queue (handshake under way). Two cases:
//! - **Another instance listens on the same address** (an upgrade) and
//!   `net.ipv4.tcp_migrate_req` is 1: the kernel moves both queues to the other instance's
//!   listeners when ours close, so the shard closes at once, after taking what its accepts
//!   already hold.
//! - **Otherwise** (a lone instance's drain, or `tcp_migrate_req` off): the shard first attaches
//!   a socket filter that drops new SYNs ([`syn_drop_filter`]) while the handshakes under way
//!   complete (their ACKs pass), goes on accepting for [`DRAIN_SYN_SETTLE_MS`], then empties
//!   the accept queue and closes. A dropped SYN is retransmitted by its client a second later
//!   and meets a closed port (connection refused) or, in an upgrade, the new instance: a
//!   connection either was accepted and is served, or never was.
//!
//! Which case holds is read once, by the main thread, when the drain begins: the listening
//! sockets of `/proc/net/tcp` and `/proc/net/tcp6` on each address, less the instance's own (by
//! inode). Only the head of each table is read, where the kernel lists the listeners.
//! [`listeners_on`] is the I/O-free parser.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// While draining without another instance to take over, how long a shard goes on accepting
/// after it stops taking new SYNs, so that handshakes under way (one round trip each) complete
/// and are served rather than reset, ms.
pub const DRAIN_SYN_SETTLE_MS: u64 = 200;

/// How often a shard waiting at the start gate looks at it, ms (a shard never blocks).
pub const GATE_POLL_MS: u64 = 1;

const GATE_SHUT: u8 = 0;
const GATE_GO: u8 = 1;
const GATE_OFF: u8 = 2;

/// What the main thread and the shards share about the listeners: the start gate and the
/// drain's verdict.
#[derive(Debug, Default)]
pub struct Handover {
    /// [`GATE_SHUT`] until the main thread decides: [`GATE_GO`] listen, [`GATE_OFF`] give up.
    gate: AtomicU8,
    /// Shards that listen (or found they cannot) since the gate opened.
    listening: AtomicUsize,
    /// Set by the main thread (with [`Handover::drain`]'s flag after it): the addresses where
    /// another instance listens and the kernel moves queued connections to it.
    migrate_to_peer: OnceLock<Vec<SocketAddr>>,
    /// The drain has begun; shards read it on their timer.
    draining: AtomicBool,
}

impl Handover {
    /// Opens the gate (`go`: start listening) or calls the start off (`!go`). Only the first
    /// decision counts.
    pub fn open(&self, go: bool) {
        let to = if go { GATE_GO } else { GATE_OFF };
        let _ = self
            .gate
            .compare_exchange(GATE_SHUT, to, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The main thread's decision: `None` while it waits for the shards, `Some(true)` to
    /// listen, `Some(false)` when the start was called off.
    pub fn decision(&self) -> Option<bool> {
        match self.gate.load(Ordering::Acquire) {
            GATE_SHUT => None,
            g => Some(g == GATE_GO),
        }
    }

    /// A shard has turned its sockets into listeners.
    pub fn listened(&self) {
        self.listening.fetch_add(1, Ordering::AcqRel);
    }

    /// How many shards have listened since the gate opened.
    pub fn listening(&self) -> usize {
        self.listening.load(Ordering::Acquire)
    }

    /// Begins the drain, with the addresses whose queued connections the kernel moves to
    /// another instance.
    pub fn drain(&self, migrate_to_peer: Vec<SocketAddr>) {
        let _ = self.migrate_to_peer.set(migrate_to_peer);
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether the listener on `addr` may close at once (see the module docs). `false` until
    /// the verdict is in: the safe way.
    pub fn closes_at_once(&self, addr: SocketAddr) -> bool {
        self.migrate_to_peer
            .get()
            .is_some_and(|a| a.contains(&addr))
    }
}

/// The inode of a socket, as `/proc/net/tcp` names it.
pub fn socket_inode(fd: std::os::fd::RawFd) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(format!("/proc/self/fd/{fd}"))?.ino())
}

/// The inodes of the listening sockets on `addr` in a `/proc/net/tcp` or `/proc/net/tcp6`
/// table (I/O-free). Lines that do not parse are skipped.
pub fn listeners_on(table: &str, addr: SocketAddr) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let local = f.nth(1)?;
            let state = f.nth(1)?;
            if state != LISTEN {
                return None;
            }
            let inode = f.nth(5)?.parse().ok()?;
            (parse_proc_addr(local)? == addr).then_some(inode)
        })
        .collect()
}

/// The header and the listening sockets of a `/proc/net/tcp` table. The kernel lists every
/// listening socket before any other, so the reading stops at the first line that is not one:
/// the cost is the listeners', not the tens of thousands of connections (`TIME_WAIT` ones
/// included) a loaded host lists after them, which a whole read walks and parses for seconds.
fn read_listening(path: &str) -> String {
    use std::io::BufRead;
    let mut out = String::new();
    let Ok(file) = std::fs::File::open(path) else {
        return out;
    };
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let Ok(line) = line else { break };
        if i > 0 && line.split_whitespace().nth(3) != Some("0A") {
            break;
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word is printed as
/// the kernel holds it, in this host's byte order.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(w, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The addresses among `addrs` where a socket other than `own` listens, read from this
/// network namespace's tables, provided `net.ipv4.tcp_migrate_req` is 1 (without it the
/// kernel resets a closing listener's queue whoever else listens).
pub fn peers_taking_over(addrs: &[SocketAddr], own: &[u64]) -> Vec<SocketAddr> {
    // The same reading of the sysctl as the start-up warning's: no advice means it is on.
    let migrate = std::fs::read_to_string(shardgate_tune::MIGRATE_REQ_PATH).ok();
    if shardgate_tune::migrate_req_advice(migrate.as_deref()).is_some() {
        return Vec::new();
    }
    let tables: Vec<String> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .map(|p| read_listening(p))
        .collect();
    addrs
        .iter()
        .copied()
        .filter(|&a| {
            tables
                .iter()
                .flat_map(|t| listeners_on(t, a))
                .any(|inode| !own.contains(&inode))
        })
        .collect()
}

// Classic BPF opcodes (16 bits; libc names their parts as u32, a test holds them equal).
const BPF_LD_B_ABS: u16 = 0x30;
const BPF_ALU_AND_K: u16 = 0x54;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;

/// A classic BPF socket filter that drops pure SYNs (a new connection's first packet) and
/// passes everything else, so a listener's handshakes under way still complete. The filter
/// runs on the TCP header: byte 13 holds the flags.
pub fn syn_drop_filter() -> [libc::sock_filter; 5] {
    const TCP_FLAGS_OFFSET: u32 = 13;
    const SYN_ACK: u32 = 0x12;
    const SYN: u32 = 0x02;
    [
        // A = flags & (SYN | ACK)
        libc::sock_filter {
            code: BPF_LD_B_ABS,
            jt: 0,
            jf: 0,
            k: TCP_FLAGS_OFFSET,
        },
        libc::sock_filter {
            code: BPF_ALU_AND_K,
            jt: 0,
            jf: 0,
            k: SYN_ACK,
        },
        // A == SYN: drop (return 0 bytes); else keep the whole packet.
        libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: SYN,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: u32::MAX,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    // Two lines of a real /proc/net/tcp (little-endian host) and one of /proc/net/tcp6.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4E3A 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 81234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:4E3A 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 81299 1 0000000000000000 20 4 30 10 -1
   2: 00000000:4E3A 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 81300 1 0000000000000000 100 0 0 10 0
   3: 0100007F:4E3B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 81301 1 0000000000000000 100 0 0 10 0
   4: garbage
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:4E3A 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 91000 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listening_sockets_are_found_by_exact_address_and_port() {
        if cfg!(target_endian = "big") {
            return; // the tables above are a little-endian host's
        }
        let a = |s: &str| {
            s.parse::<SocketAddr>()
                .unwrap_or_else(|e| panic!("{s}: {e}"))
        };
        // 0x4E3A = 20026. The established connection (st 01) and the other port are not listeners.
        assert_eq!(listeners_on(TCP, a("127.0.0.1:20026")), vec![81234]);
        assert_eq!(listeners_on(TCP, a("0.0.0.0:20026")), vec![81300]);
        assert_eq!(listeners_on(TCP, a("127.0.0.1:20027")), vec![81301]);
        assert_eq!(listeners_on(TCP, a("127.0.0.2:20026")), Vec::<u64>::new());
        assert_eq!(listeners_on(TCP6, a("[::1]:20026")), vec![91000]);
        assert_eq!(listeners_on(TCP6, a("127.0.0.1:20026")), Vec::<u64>::new());
        assert_eq!(listeners_on("", a("127.0.0.1:20026")), Vec::<u64>::new());
    }

    #[test]
    fn this_process_finds_its_own_listener_by_inode() {
        use std::os::fd::AsRawFd;
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            return; // no loopback here
        };
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let inode = socket_inode(l.as_raw_fd()).unwrap_or_else(|e| panic!("{e}"));
        // With connections open (listed after the listeners), the listening prefix holds it.
        let c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
        let table = read_listening("/proc/net/tcp");
        assert!(table
            .lines()
            .skip(1)
            .all(|l| l.split_whitespace().nth(3) == Some("0A")));
        assert_eq!(listeners_on(&table, addr), vec![inode]);
        drop(c);
        // Its own socket is no other instance's.
        assert!(peers_taking_over(&[addr], &[inode]).is_empty());
    }

    #[test]
    fn the_syn_filter_stops_new_connections_and_spares_established_ones() {
        let Ok(l) = TcpListener::bind("127.0.0.1:0") else {
            return;
        };
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let mut before = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
        let (mut served, _) = l.accept().unwrap_or_else(|e| panic!("{e}"));
        socket2::SockRef::from(&l)
            .attach_filter(&syn_drop_filter())
            .unwrap_or_else(|e| panic!("attach: {e}"));
        // A new connection's SYN is dropped: no handshake within the wait (its client would
        // retransmit a second later).
        let refused = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert!(refused.is_err(), "a connection got through the SYN filter");
        // The connection accepted before carries data both ways.
        before.write_all(b"ping").unwrap_or_else(|e| panic!("{e}"));
        let mut b = [0u8; 4];
        served.read_exact(&mut b).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&b, b"ping");
        // Without the filter, connections are taken again.
        socket2::SockRef::from(&l)
            .detach_filter()
            .unwrap_or_else(|e| panic!("detach: {e}"));
        assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn the_filter_opcodes_are_libcs() {
        assert_eq!(
            u32::from(BPF_LD_B_ABS),
            libc::BPF_LD | libc::BPF_B | libc::BPF_ABS
        );
        assert_eq!(
            u32::from(BPF_ALU_AND_K),
            libc::BPF_ALU | libc::BPF_AND | libc::BPF_K
        );
        assert_eq!(
            u32::from(BPF_JMP_JEQ_K),
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K
        );
        assert_eq!(u32::from(BPF_RET_K), libc::BPF_RET | libc::BPF_K);
    }

    #[test]
    fn the_gate_keeps_the_first_decision() {
        let h = Handover::default();
        assert_eq!(h.decision(), None);
        h.open(false);
        h.open(true); // too late: the start was called off
        assert_eq!(h.decision(), Some(false));
        let h = Handover::default();
        h.open(true);
        h.open(false);
        assert_eq!(h.decision(), Some(true));
        // The drain's verdict: an address closes at once only when named.
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(!h.closes_at_once(a));
        assert!(!h.is_draining());
        h.drain(vec![a]);
        assert!(h.is_draining() && h.closes_at_once(a));
        assert!(!h.closes_at_once("127.0.0.1:8081".parse().unwrap_or(a)));
    }
}
