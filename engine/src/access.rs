//! Access requests on the data port: the tenant's side of the approval workflow.
//!
//! `POST /v1/access-requests` (`{"model": "...", "reason": "..."}`) files a request for a model
//! with the tenant's own key; `GET /v1/access-requests` lists the tenant's requests and their
//! status, never another tenant's. The operators decide with `shardgate-ctl access` or the
//! admin API (`/admin/v1/access-requests`); an approval adds the model to the tenant's models.
//!
//! A shard never reads or writes the store (blocking file I/O): it hands each request to the
//! `access` thread here, a plain std thread started with the shards, through a bounded queue
//! ([`ACCESS_QUEUE_MAX`]; full: 503 `access_requests_busy`). The thread files the request
//! through `shardgate_core::manage` (the store written atomically, audited as `tenant:NAME`,
//! pushed to every shard) or reads the store for a list, and answers on the job's own channel,
//! which the shard polls every [`ACCESS_POLL_MS`] (a monoio sleep: the shard keeps serving)
//! for at most [`ACCESS_REPLY_WAIT_MS_MAX`].
//!
//! Store refusals map to statuses as the admin API maps them (`admin_api::refused`): unknown
//! 404, taken 409, invalid 400, the instance at fault 503.

use std::time::Duration;

use crossbeam::channel::{self, Receiver, Sender, TryRecvError, TrySendError};
use serde_json::{json, Value};

use crate::control::shm::Region;
use crate::limits::APPLY_WAIT_MS_MAX;
use crate::manage::{self, LOCK_WAIT_MS_MAX};
use crate::store_op::{self, StoreOp};

/// The data port's path for access requests.
pub const ACCESS_REQUESTS_PATH: &str = "/v1/access-requests";
/// Jobs waiting for the access thread, over all shards.
pub const ACCESS_QUEUE_MAX: usize = 64;
/// Largest body of `POST /v1/access-requests`, bytes (a model name and a reason).
pub const ACCESS_BODY_BYTES_MAX: usize = 16 * 1024;
/// How often a shard looks for the access thread's answer, ms.
pub const ACCESS_POLL_MS: u64 = 5;
/// How long a shard waits for the access thread's answer, ms: as long as a change may wait for
/// the writer lock and then for the shards, and some.
pub const ACCESS_REPLY_WAIT_MS_MAX: u64 = LOCK_WAIT_MS_MAX + APPLY_WAIT_MS_MAX + 5_000;

/// What a tenant asks.
#[derive(Debug)]
pub enum Ask {
    /// File a request for `model`.
    File { model: String, reason: String },
    /// List the tenant's requests.
    List,
}

#[derive(Debug)]
struct Job {
    tenant: String,
    ask: Ask,
    reply: Sender<(u16, Value)>,
}

/// The shards' handle on the access thread.
#[derive(Debug, Clone)]
pub struct Desk {
    jobs: Sender<Job>,
}

/// A job handed to the access thread: its answer, once there.
#[derive(Debug)]
pub struct Pending {
    rx: Receiver<(u16, Value)>,
}

/// Where a [`Pending`] job stands.
#[derive(Debug)]
pub enum Poll {
    /// The status and JSON body to answer with.
    Answered(u16, Value),
    Waiting,
    /// The thread dropped the job (it is gone).
    Lost,
}

impl Desk {
    /// Start the access thread, for the instance whose region this is.
    pub fn spawn(region: &'static Region, instance: String) -> std::io::Result<Desk> {
        let (jobs, rx) = channel::bounded::<Job>(ACCESS_QUEUE_MAX);
        std::thread::Builder::new()
            .name("access".into())
            .spawn(move || run(&rx, region, &instance))?;
        Ok(Desk { jobs })
    }

    /// A desk with no thread behind it: every job is refused (for tests of a shard alone).
    pub fn closed() -> Desk {
        let (jobs, _) = channel::bounded::<Job>(1);
        Desk { jobs }
    }

    /// Hand `ask` of `tenant` to the access thread. `Err`: why it cannot take it now.
    pub fn submit(&self, tenant: String, ask: Ask) -> Result<Pending, &'static str> {
        let (reply, rx) = channel::bounded(1);
        let job = Job { tenant, ask, reply };
        match self.jobs.try_send(job) {
            Ok(()) => Ok(Pending { rx }),
            Err(TrySendError::Full(_)) => {
                Err("too many access requests are being handled; retry in a few seconds")
            }
            Err(TrySendError::Disconnected(_)) => {
                Err("the gateway's access-request thread is not running")
            }
        }
    }
}

impl Pending {
    /// The answer if it is there (never blocks).
    pub fn poll(&self) -> Poll {
        match self.rx.try_recv() {
            Ok((status, body)) => Poll::Answered(status, body),
            Err(TryRecvError::Empty) => Poll::Waiting,
            Err(TryRecvError::Disconnected) => Poll::Lost,
        }
    }
}

fn run(jobs: &Receiver<Job>, region: &Region, instance: &str) {
    while let Ok(job) = jobs.recv() {
        let answer = answer(job.tenant, job.ask, region, instance);
        // The shard may have stopped waiting: then nobody hears the answer (the change, if
        // one was made, stands, and the tenant sees it in its list).
        let _ = job.reply.try_send(answer);
    }
}

fn answer(tenant: String, ask: Ask, region: &Region, instance: &str) -> (u16, Value) {
    match ask {
        Ask::List => match manage::running_store(region) {
            Ok((store, _)) => {
                let data: Vec<Value> = store
                    .access_requests
                    .iter()
                    .filter(|(_, r)| r.tenant == tenant)
                    .map(|(id, r)| store_op::request_json(id, r, false))
                    .collect();
                (200, json!({"object": "list", "data": data}))
            }
            Err(r) => crate::admin_api::refused(&r),
        },
        Ask::File { model, reason } => {
            let actor = format!("tenant:{tenant}");
            let timeout = Duration::from_millis(APPLY_WAIT_MS_MAX);
            let op = StoreOp::AccessRequest {
                tenant,
                model,
                reason,
            };
            match manage::change(region, instance, &actor, timeout, op) {
                Ok(done) => (201, done.said),
                Err(r) => crate::admin_api::refused(&r),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_desk_refuses_and_a_full_queue_says_so() {
        let e = Desk::closed()
            .submit("a".into(), Ask::List)
            .expect_err("no thread");
        assert!(e.contains("not running"), "{e}");
        // A queue nobody takes from: full after ACCESS_QUEUE_MAX jobs.
        let (jobs, _rx) = channel::bounded::<Job>(ACCESS_QUEUE_MAX);
        let desk = Desk { jobs };
        let pending: Vec<Pending> = (0..ACCESS_QUEUE_MAX)
            .map(|_| desk.submit("a".into(), Ask::List).expect("room"))
            .collect();
        assert!(matches!(pending[0].poll(), Poll::Waiting));
        let e = desk.submit("a".into(), Ask::List).expect_err("full");
        assert!(e.contains("retry"), "{e}");
        // The queue gone, its jobs and their reply channels with it.
        drop((desk, _rx));
        assert!(matches!(pending[0].poll(), Poll::Lost));
    }
}
