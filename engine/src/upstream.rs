//! Upstream connections and the per-shard keep-alive pools.
//!
//! Each shard owns its pools outright (no sharing between shards, no locks): one LIFO stack of
//! idle connections per endpoint, so the most recently used (warmest) connection is reused first
//! and stale ones age out at the bottom.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::clock::Now;
use crate::error::Error;
use crate::stream::Io;

/// One connection to an upstream endpoint.
#[derive(Debug)]
pub struct UpConn {
    pub stream: Io,
    /// Bytes read and not relayed yet. A buffer from the shard's spares
    /// ([`ShardCtx::read_bufs`](crate::ctx::ShardCtx::read_bufs)) while the connection reads;
    /// none (no capacity) while it waits in the pool or for a stream's next bytes.
    pub buf: Vec<u8>,
    /// Came from the pool (so it may have been closed by the upstream while idle).
    pub reused: bool,
    /// The pool slot's identity when the connection was made: a slot takes back only
    /// connections made for it (same address, same TLS name), even after a config change.
    pub pool_id: u64,
    idle_since_ns: u64,
    /// The socket's descriptor (owned by `stream`, so open as long as this connection is), to
    /// look at an idle pooled connection without reading from it: bytes that arrived after a
    /// complete answer mean the upstream is out of step, and the connection must not carry
    /// another request. (A second handle, `dup`ed, would cost a descriptor per connection: a
    /// third per proxied stream.)
    fd: RawFd,
}

impl UpConn {
    /// Whether nothing arrived on this idle connection since its last answer (no stray bytes,
    /// no close): safe to send the next request on.
    pub fn is_quiet(&self) -> bool {
        use nix::sys::socket::{recv, MsgFlags};
        let mut byte = [0u8; 1];
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        matches!(
            recv(self.fd, &mut byte, flags),
            Err(nix::errno::Errno::EAGAIN)
        )
    }

    /// Read at once (a system call, not an operation through the ring) what a **plain**
    /// connection the runtime just reported readable holds: `Ok(0)` at its end, `None` when
    /// nothing is there after all. Never on TLS: its bytes must go through rustls.
    pub fn try_recv(&self, into: &mut [u8]) -> Option<io::Result<usize>> {
        use nix::errno::Errno;
        use nix::sys::socket::{recv, MsgFlags};
        match recv(self.fd, into, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => Some(Ok(n)),
            Err(Errno::EAGAIN | Errno::EINTR) => None,
            Err(e) => Some(Err(io::Error::from(e))),
        }
    }
}

/// `connect` on a non-blocking socket that has not finished connecting (Linux's EINPROGRESS).
const EINPROGRESS: i32 = 115;

/// Open a TCP connection to `addr`: a non-blocking socket (its descriptor kept to look at it
/// while idle in a pool), connected by the runtime within `timeout`.
async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> io::Result<(TcpStream, RawFd)> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    // Small requests and SSE events must not wait for Nagle.
    socket.set_nodelay(true)?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let socket: std::net::TcpStream = socket.into();
    let fd = socket.as_raw_fd();
    let stream = TcpStream::from_std(socket)?;
    match monoio::time::timeout(timeout, stream.writable(false)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_elapsed) => return Err(io::Error::from(io::ErrorKind::TimedOut)),
    }
    // SO_ERROR: whether the connect failed (refused, unreachable).
    match nix::sys::socket::getsockopt(fd, nix::sys::socket::sockopt::SocketError) {
        Ok(0) => Ok((stream, fd)),
        Ok(code) => Err(io::Error::from_raw_os_error(code)),
        Err(errno) => Err(io::Error::from(errno)),
    }
}

/// What a TLS connection to an endpoint needs: the upstream's client config (its trust store,
/// this shard's session cache) and the name to send as SNI and verify.
pub type TlsTarget<'a> = Option<(&'a Arc<rustls::ClientConfig>, &'a str)>;

/// Connect to `addr` (and shake hands, for `tls`) within `timeout`. Refused or reset: 502;
/// timed out: 504; a TLS failure: 502 naming it (an untrusted certificate, ...).
pub async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    tls: TlsTarget<'_>,
    pool_id: u64,
) -> Result<UpConn, Error> {
    let deadline = Instant::now() + timeout;
    let (stream, fd) = match connect_tcp(addr, timeout).await {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(Error::UpstreamTimeout),
        Err(_) => return Err(Error::UpstreamUnavailable),
    };
    let stream = match tls {
        None => Io::Plain(stream),
        Some((config, name)) => {
            let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())
                .map_err(|_| Error::UpstreamTls("the endpoint's host is not a valid TLS name"))?;
            let connector = monoio_rustls::TlsConnector::from(config.clone());
            // Boxed, so the (large) handshake state is not part of every request's future.
            let handshake = Box::pin(connector.connect(server_name, stream));
            match monoio::time::timeout_at(deadline.into(), handshake).await {
                Ok(Ok(s)) => Io::TlsClient(Box::new(s)),
                Ok(Err(e)) => {
                    let e = io::Error::from(e);
                    return Err(Error::UpstreamTls(crate::tls::describe_upstream_error(&e)));
                }
                Err(_elapsed) => return Err(Error::UpstreamTimeout),
            }
        }
    };
    Ok(UpConn {
        stream,
        buf: Vec::new(),
        reused: false,
        pool_id,
        idle_since_ns: 0,
        fd,
    })
}

index_type!(
    /// A shard's pool slot: one endpoint's idle connections in [`Pools`]. A slot outlives
    /// configs for as long as they name its address.
    PoolSlot
);

/// What a pool slot is for: an address, and for TLS the name verified on it (two names on one
/// address, as behind a CDN, are two slots).
pub type PoolKey = (SocketAddr, Option<String>);

/// One endpoint's idle connections.
#[derive(Debug)]
struct Slot {
    key: PoolKey,
    /// Unique per assignment of the slot to a key.
    id: u64,
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
    by_addr: RefCell<HashMap<PoolKey, usize>>,
    next_id: Cell<u64>,
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
            next_id: Cell::new(1),
            free: RefCell::new(Vec::new()),
        }
    }

    /// The identity of `slot`'s current assignment (0 for no slot): given to connections made
    /// for it.
    pub fn id_of(&self, slot: PoolSlot) -> u64 {
        self.slots.borrow().get(slot.0).map_or(0, |s| s.id)
    }

    /// The slot of each address of a new config (in order), keeping the slots (and idle
    /// connections) of addresses already known. Call [`Pools::retain_assigned`] once the new
    /// config is in use.
    pub fn assign(&self, addrs: &[PoolKey]) -> Vec<PoolSlot> {
        let mut slots = self.slots.borrow_mut();
        let mut by_addr = self.by_addr.borrow_mut();
        let mut free = self.free.borrow_mut();
        for s in slots.iter_mut() {
            s.assigned = false;
        }
        let mut out = Vec::with_capacity(addrs.len());
        for key in addrs {
            let i = match by_addr.get(key) {
                Some(&i) => i,
                None => {
                    let id = self.next_id.get();
                    self.next_id.set(id + 1);
                    let slot = Slot {
                        key: key.clone(),
                        id,
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
                    by_addr.insert(key.clone(), i);
                    i
                }
            };
            slots[i].assigned = true;
            out.push(PoolSlot(i));
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
            if !s.assigned && by_addr.get(&s.key) == Some(&i) {
                s.idle.clear();
                by_addr.remove(&s.key);
                free.push(i);
            }
        }
    }

    /// The most recently pooled connection of `slot` idle for less than `idle_max` on which
    /// nothing arrived while it was idle (one that received stray bytes, or was closed by the
    /// upstream, is dropped and the next one looked at).
    pub fn checkout(&self, slot: PoolSlot, idle_max: Duration, now: Now) -> Option<UpConn> {
        let mut slots = self.slots.borrow_mut();
        let stack = &mut slots.get_mut(slot.0)?.idle;
        while let Some(conn) = stack.pop() {
            if Duration::from_nanos(now.mono_ns().saturating_sub(conn.idle_since_ns)) >= idle_max {
                // The top is the newest: if it is stale, all below it are too.
                stack.clear();
                return None;
            }
            if conn.is_quiet() {
                return Some(conn);
            }
        }
        None
    }

    /// Return a healthy connection after a complete exchange (dropped if the pool is full, or
    /// if the slot no longer belongs to the connection's address after a config change). Its
    /// read buffer goes back to `spares`: an idle connection holds none.
    pub fn checkin(
        &self,
        slot: PoolSlot,
        mut conn: UpConn,
        pool_max: usize,
        now: Now,
        spares: &crate::ctx::Spares,
    ) {
        spares.give(std::mem::take(&mut conn.buf));
        let mut slots = self.slots.borrow_mut();
        let Some(s) = slots.get_mut(slot.0) else {
            return;
        };
        if s.assigned && s.id == conn.pool_id && s.idle.len() < pool_max {
            conn.reused = true;
            conn.idle_since_ns = now.mono_ns();
            s.idle.push(conn);
        }
    }

    /// Idle connections held in `slot`.
    pub fn idle_count(&self, slot: PoolSlot) -> usize {
        self.slots.borrow().get(slot.0).map_or(0, |s| s.idle.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assign_keeps_slots_of_known_addresses() {
        let p = Pools::new();
        let key = |s: &str| -> PoolKey { (s.parse().expect("addr"), None) };
        let (a, b, c) = (key("127.0.0.1:1"), key("127.0.0.1:2"), key("127.0.0.1:3"));
        let slots = |v: &[usize]| v.iter().map(|&i| PoolSlot(i)).collect::<Vec<_>>();
        assert_eq!(p.assign(&[a.clone(), b.clone()]), slots(&[0, 1]));
        let id_a = p.id_of(PoolSlot(0));
        p.retain_assigned();
        assert_eq!(p.assign(&[c.clone(), b.clone()]), slots(&[2, 1]));
        p.retain_assigned();
        // `a` was forgotten and its slot 0 freed: coming back, `a` gets a free slot again, and
        // the table does not grow however often addresses come and go.
        assert_eq!(p.assign(std::slice::from_ref(&a)), slots(&[0]));
        assert_ne!(
            p.id_of(PoolSlot(0)),
            id_a,
            "a reassigned slot has a new identity"
        );
        p.retain_assigned();
        for _ in 0..10 {
            assert!(p.assign(std::slice::from_ref(&b))[0].0 < 3);
            p.retain_assigned();
            assert!(p.assign(std::slice::from_ref(&c))[0].0 < 3);
            p.retain_assigned();
        }
        assert!(p.slots.borrow().len() <= 3);
        // One address under two TLS names: two slots.
        let tls = |n: &str| -> PoolKey { ("127.0.0.1:443".parse().expect("addr"), Some(n.into())) };
        let got = p.assign(&[tls("a.example"), tls("b.example")]);
        assert_ne!(got[0], got[1]);
    }
}
