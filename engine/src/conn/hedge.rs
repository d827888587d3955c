//! Hedged streams: a streamed request whose first attempt has sent no response head after the
//! group's `hedge_after_ms` gets a second attempt at another deployment; whichever answers
//! first is relayed and the other is cancelled (its connection closed, never pooled).
//!
//! The second request is built before the first is sent (so the race needs nothing of the
//! client); it is launched only if its deployment's quota and its upstream's concurrency cap
//! have room at that moment. Both attempts report to the balancer: the winner its time to
//! first byte, a first attempt that lost the time it had waited (a lower bound that steers the
//! latency estimate away from it), a second attempt that lost nothing.

use std::pin::pin;
use std::rc::Rc;
use std::time::Duration;

use crate::admit::Admitted;
use crate::config::UpstreamConfig;
use crate::ctx::{ShardCtx, SpareBuf};
use crate::http::request::RequestHead;
use crate::snapshot::{DeploymentIdx, FairSlot, GroupId, Snapshot, Target};
use crate::upstream::{self, UpConn};

use super::forward::{read_response_head, HeadError};
use super::io::write_buf;
use super::RelayPlan;
use crate::clock::Now;
use crate::exchange::call::World;
use crate::exchange::ledger::Books;
use crate::exchange::relay::Relay;

/// A second attempt, ready to launch.
#[derive(Debug)]
pub(super) struct Hedge<'c> {
    pub after: Duration,
    /// The deployment, and where its attempt goes.
    pub group: GroupId,
    pub idx: DeploymentIdx,
    pub target: Target,
    /// The whole upstream request (head and body), until it is launched.
    pub request: Option<SpareBuf<'c>>,
    /// How the second attempt's answer is relayed (it may speak another API than the first's).
    pub plan: RelayPlan,
    /// The request's token estimate (for the deployment's quota).
    pub tokens: u64,
    /// Set by the race.
    pub launched: bool,
    pub won: bool,
    /// When it was launched, and when it won (the balancer's clock).
    pub launched_ns: u64,
    pub won_ns: u64,
    /// Its deployment quota, taken at launch.
    pub admitted: Option<Admitted>,
    /// It holds a slot of its (capped) upstream.
    pub cap_held: bool,
    /// The tenant's cell in the fair queues (its upstream slot is held in its name).
    pub fair_slot: FairSlot,
    /// The snapshot its quota and slot are settled against.
    pub snap: Rc<Snapshot>,
    /// Its start and span (recorded, and measured, only if it was launched).
    pub trace: super::spans::AttemptTrace,
}

/// A hedge dropped while it holds its slot or quota (the race was cut off: the client left,
/// the shard shut down) gives them back, as failed.
impl Drop for Hedge<'_> {
    fn drop(&mut self) {
        let now = Now::read();
        if std::mem::take(&mut self.cap_held) {
            self.snap
                .release_slot(self.target.upstream, self.fair_slot, now.unix_ms());
        }
        if let Some(adm) = self.admitted.take() {
            self.snap
                .settle_deployment(self.group, self.idx, adm, now.unix_ns, None, true);
        }
    }
}

/// The second attempt's answer head, when it won.
pub(super) struct Won<'c> {
    pub up: UpConn,
    pub wbuf: SpareBuf<'c>,
    pub relay: Relay,
    pub keep_alive: bool,
    pub sent_at: Now,
}

/// How the race ended.
pub(super) enum Raced<'c> {
    /// The first attempt's head (or failure); a launched second attempt was cancelled or
    /// failed.
    First(Result<(Relay, bool), HeadError>),
    Second(Won<'c>),
}

/// Read the first attempt's response head; after `h.after` without one, launch the hedge and
/// keep whichever head comes first. A failure of one side waits for the other.
#[allow(clippy::too_many_arguments)]
pub(super) async fn race<'c>(
    ctx: &Rc<ShardCtx>,
    snap: &Snapshot,
    up: &mut UpConn,
    ucfg: &UpstreamConfig,
    head: &RequestHead,
    extra: Option<&[u8]>,
    wbuf: &mut Vec<u8>,
    h: &mut Hedge<'c>,
) -> Raced<'c> {
    let mut first = pin!(read_response_head(ctx, up, ucfg, head, extra, wbuf));
    monoio::select! {
        r = &mut first => return Raced::First(r),
        _ = monoio::time::sleep(h.after) => {}
    }
    let request = match h.request.take() {
        Some(request) if launch(snap, h) => request,
        _ => return Raced::First(first.await),
    };
    let mut second = pin!(attempt(ctx, snap, head, extra, h.target, request));
    monoio::select! {
        r = &mut first => match r {
            Ok(_) => Raced::First(r),
            Err(_) => match second.await {
                Ok(won) => {
                    h.won = true;
                    h.won_ns = Now::read().mono_ns();
                    Raced::Second(won)
                }
                Err(()) => Raced::First(r),
            },
        },
        r = &mut second => match r {
            Ok(won) => {
                h.won = true;
                h.won_ns = Now::read().mono_ns();
                Raced::Second(won)
            }
            Err(()) => Raced::First(first.await),
        },
    }
}

/// Take the hedge's deployment quota and upstream slot; `false` (nothing taken) when either is
/// full.
fn launch(snap: &Snapshot, h: &mut Hedge<'_>) -> bool {
    let now = Now::read();
    let cap = snap
        .upstream_cap(h.target.upstream)
        .filter(|cap| cap.is_capped());
    if let Some(cap) = cap {
        if !cap.try_acquire(h.fair_slot, now.unix_ms()) {
            return false;
        }
    }
    // The deployment's own quota, taken as for any attempt the call sends.
    match snap.take_quota(h.group, h.idx, h.tokens, now.unix_ns) {
        Ok(adm) => h.admitted = adm,
        Err(()) => {
            if let Some(cap) = cap {
                cap.release(h.fair_slot, now.unix_ms());
            }
            return false;
        }
    }
    h.cap_held = cap.is_some();
    h.launched = true;
    h.launched_ns = now.mono_ns();
    true
}

/// Send the hedge's request and read its response head.
async fn attempt<'c>(
    ctx: &Rc<ShardCtx>,
    snap: &Snapshot,
    head: &RequestHead,
    extra: Option<&[u8]>,
    Target {
        upstream,
        endpoint,
        slot,
    }: Target,
    mut request: SpareBuf<'c>,
) -> Result<Won<'c>, ()> {
    let ucfg = snap.upstream(upstream);
    let addr = ucfg.endpoints.get(endpoint.index()).ok_or(())?.addr;
    let mut up = match ctx
        .pools
        .checkout(slot, ucfg.pool_idle_timeout, Now::read())
    {
        Some(up) => up,
        None => {
            let tls = snap.tls_target(upstream, endpoint);
            let up = upstream::connect(addr, ucfg.connect_timeout, tls, ctx.pools.id_of(slot))
                .await
                .map_err(|_| ())?;
            ctx.upstream_connected();
            up
        }
    };
    write_buf(&mut up.stream, &mut request, ucfg.read_timeout).await?;
    let sent_at = Now::read();
    // The request's buffer takes the answer head for the client.
    let mut wbuf = request;
    let (relay, keep_alive) = read_response_head(ctx, &mut up, ucfg, head, extra, &mut wbuf)
        .await
        .map_err(|_| ())?;
    Ok(Won {
        up,
        wbuf,
        relay,
        keep_alive,
        sent_at,
    })
}
