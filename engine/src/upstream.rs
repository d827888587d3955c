//! Upstream connections and the per-shard keep-alive pools.
//!
//! Each shard owns its pools outright (no sharing between shards, no locks): one LIFO stack of
//! idle connections per endpoint, so the most recently used (warmest) connection is reused first
//! and stale ones age out at the bottom.

use std::cell::RefCell;
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
                idle_since: Instant::now(),
            })
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => Err(Error::UpstreamTimeout),
        Ok(Err(_)) => Err(Error::UpstreamUnavailable),
        Err(_elapsed) => Err(Error::UpstreamTimeout),
    }
}

/// Idle connections of every endpoint of this shard, indexed by flat endpoint number.
#[derive(Debug)]
pub struct Pools {
    idle: RefCell<Vec<Vec<UpConn>>>,
}

impl Pools {
    pub fn new(endpoints: usize) -> Self {
        Self {
            idle: RefCell::new((0..endpoints).map(|_| Vec::new()).collect()),
        }
    }

    /// The most recently pooled connection of `endpoint` idle for less than `idle_max`.
    pub fn checkout(&self, endpoint: usize, idle_max: Duration, now: Instant) -> Option<UpConn> {
        let mut idle = self.idle.borrow_mut();
        let stack = idle.get_mut(endpoint)?;
        let conn = stack.pop()?;
        if now.duration_since(conn.idle_since) < idle_max {
            return Some(conn);
        }
        // The top is the newest: if it is stale, all below it are too.
        stack.clear();
        None
    }

    /// Return a healthy connection after a complete exchange (dropped if the pool is full).
    pub fn checkin(&self, endpoint: usize, mut conn: UpConn, pool_max: usize, now: Instant) {
        let mut idle = self.idle.borrow_mut();
        let Some(stack) = idle.get_mut(endpoint) else {
            return;
        };
        if stack.len() < pool_max {
            conn.buf.clear();
            conn.reused = true;
            conn.idle_since = now;
            stack.push(conn);
        }
    }

    /// Idle connections held for `endpoint`.
    pub fn idle_count(&self, endpoint: usize) -> usize {
        self.idle.borrow().get(endpoint).map_or(0, Vec::len)
    }
}
