//! Upstream connections and the per-shard keep-alive pools.
//!
//! Each shard owns its pools outright (no sharing between shards, no locks): one LIFO stack of
//! idle connections per endpoint, so the most recently used (warmest) connection is reused first
//! and stale ones age out at the bottom.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::error::Error;
use crate::limits::RELAY_BUF_BYTES;

/// One connection to an upstream endpoint, with its own read buffer.
#[derive(Debug)]
pub struct UpConn {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
    /// Came from the pool (so it may have been closed by the upstream while idle).
    pub reused: bool,
    /// The address connected to (a pool slot takes back only connections to its address).
    pub addr: SocketAddr,
    idle_since: Instant,
}

/// Connect to `addr` within `timeout`. Refused or reset: 502; timed out: 504.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<UpConn, Error> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(stream)) => {
            // Small requests and SSE events must not wait for Nagle.
            let _ = stream.set_nodelay(true);
            Ok(UpConn {
                stream,
                buf: Vec::with_capacity(RELAY_BUF_BYTES),
                reused: false,
                addr,
                idle_since: Instant::now(),
            })
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => Err(Error::UpstreamTimeout),
        Ok(Err(_)) => Err(Error::UpstreamUnavailable),
        Err(_elapsed) => Err(Error::UpstreamTimeout),
    }
}

/// One endpoint's idle connections.
#[derive(Debug)]
struct Slot {
    addr: SocketAddr,
    /// Named by the newest config; unassigned slots are emptied and may be given to another
    /// address.
    assigned: bool,
    idle: Vec<UpConn>,
}

/// Idle connections of every endpoint of this shard, by pool slot. A slot belongs to one
/// address for as long as configs name it, so a new config keeps the pools of endpoints it did
/// not change.
#[derive(Debug)]
pub struct Pools {
    slots: RefCell<Vec<Slot>>,
    by_addr: RefCell<HashMap<SocketAddr, usize>>,
    /// Slots of forgotten addresses, given to new ones (so churn does not grow the table).
    free: RefCell<Vec<usize>>,
}

impl Default for Pools {
    fn default() -> Self {
        Self::new()
    }
}

impl Pools {
    pub fn new() -> Self {
        Self {
            slots: RefCell::new(Vec::new()),
            by_addr: RefCell::new(HashMap::new()),
            free: RefCell::new(Vec::new()),
        }
    }

    /// The slot of each address of a new config (in order), keeping the slots (and idle
    /// connections) of addresses already known. Call [`Pools::retain_assigned`] once the new
    /// config is in use.
    pub fn assign(&self, addrs: &[SocketAddr]) -> Vec<usize> {
        let mut slots = self.slots.borrow_mut();
        let mut by_addr = self.by_addr.borrow_mut();
        let mut free = self.free.borrow_mut();
        for s in slots.iter_mut() {
            s.assigned = false;
        }
        let mut out = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let i = match by_addr.get(&addr) {
                Some(&i) => i,
                None => {
                    let slot = Slot {
                        addr,
                        assigned: false,
                        idle: Vec::new(),
                    };
                    let i = match free.pop() {
                        Some(i) => {
                            slots[i] = slot;
                            i
                        }
                        None => {
                            slots.push(slot);
                            slots.len() - 1
                        }
                    };
                    by_addr.insert(addr, i);
                    i
                }
            };
            slots[i].assigned = true;
            out.push(i);
        }
        out
    }

    /// Close the idle connections of addresses the newest config no longer names, forget those
    /// addresses and free their slots. A freed slot may go to another address while a request
    /// of an older config still holds its number: harmless, since a check-in compares the
    /// connection's address with the slot's.
    pub fn retain_assigned(&self) {
        let mut slots = self.slots.borrow_mut();
        let mut by_addr = self.by_addr.borrow_mut();
        let mut free = self.free.borrow_mut();
        for (i, s) in slots.iter_mut().enumerate() {
            if !s.assigned && by_addr.get(&s.addr) == Some(&i) {
                s.idle.clear();
                by_addr.remove(&s.addr);
                free.push(i);
            }
        }
    }

    /// The most recently pooled connection of `slot` idle for less than `idle_max`.
    pub fn checkout(&self, slot: usize, idle_max: Duration, now: Instant) -> Option<UpConn> {
        let mut slots = self.slots.borrow_mut();
        let stack = &mut slots.get_mut(slot)?.idle;
        let conn = stack.pop()?;
        if now.duration_since(conn.idle_since) < idle_max {
            return Some(conn);
        }
        // The top is the newest: if it is stale, all below it are too.
        stack.clear();
        None
    }

    /// Return a healthy connection after a complete exchange (dropped if the pool is full, or
    /// if the slot no longer belongs to the connection's address after a config change).
    pub fn checkin(&self, slot: usize, mut conn: UpConn, pool_max: usize, now: Instant) {
        let mut slots = self.slots.borrow_mut();
        let Some(s) = slots.get_mut(slot) else {
            return;
        };
        if s.assigned && s.addr == conn.addr && s.idle.len() < pool_max {
            conn.buf.clear();
            conn.reused = true;
            conn.idle_since = now;
            s.idle.push(conn);
        }
    }

    /// Idle connections held in `slot`.
    pub fn idle_count(&self, slot: usize) -> usize {
        self.slots.borrow().get(slot).map_or(0, |s| s.idle.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assign_keeps_slots_of_known_addresses() {
        let p = Pools::new();
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("addr");
        let c: SocketAddr = "127.0.0.1:3".parse().expect("addr");
        assert_eq!(p.assign(&[a, b]), vec![0, 1]);
        p.retain_assigned();
        assert_eq!(p.assign(&[c, b]), vec![2, 1]);
        p.retain_assigned();
        // `a` was forgotten and its slot 0 freed: coming back, `a` gets a free slot again, and
        // the table does not grow however often addresses come and go.
        assert_eq!(p.assign(&[a]), vec![0]);
        p.retain_assigned();
        for _ in 0..10 {
            assert!(p.assign(&[b])[0] < 3);
            p.retain_assigned();
            assert!(p.assign(&[c])[0] < 3);
            p.retain_assigned();
        }
        assert!(p.slots.borrow().len() <= 3);
    }
}
