//! One attempt at one upstream target, decided without I/O: what becomes of each way it can
//! fail, and of the answer head it gets.
//!
//! The driver (`conn::forward::forward`) checks a connection out of the pool or opens one,
//! writes the request, streams the rest of the body and reads the answer head. It reports a
//! failure to [`Try::failed`] and an answer head to [`Try::answered`]:
//! - a failure is replayed once on a fresh connection (`None`), when a *pooled* connection
//!   turned out to be closed (the write failed, or the upstream closed before any byte of an
//!   answer) and the whole request is still in hand (its body was not streamed, the write did
//!   not consume it);
//! - otherwise, and for an answer the call may not keep, a [`Failure`]: handed back to the call
//!   to retry at another deployment, when the call allows it (`retry_ok`) and the one retry
//!   rule ([`attempts::retryable`]) does, or answered to the client, saying whether the
//!   connection may stay open;
//! - an answer that is kept is relayed (`None`).
//!
//! [`Try::step`] takes either as a [`Step`] and says the same as a [`Verdict`], for the
//! simulation that drives attempts from arbitrary bytes.

use super::attempts;
use crate::error::Error;

/// How an attempt failed before any answer head came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// No connection could be opened (refused, timed out, TLS failed): nothing was sent.
    Connect(Error),
    /// The request could not be written. `reused`: the connection came from the pool;
    /// `request_kept`: the request is still whole in its buffer (a write that timed out may
    /// have consumed part of it).
    Write { reused: bool, request_kept: bool },
    /// The upstream closed (or reset) the connection before any byte of an answer.
    ClosedBeforeAnyByte { reused: bool },
    /// The answer head could not be read: timed out, malformed, or cut off inside.
    Head(Error),
}

/// What the driver reports of the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Failed(Failed),
    /// An answer head with this status.
    Answered {
        status: u16,
    },
}

/// What becomes of an attempt that is neither replayed nor relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing reached the client and the call may try elsewhere: hand it back. `status`: what
    /// the failure counts as (the answer's status, or the error's).
    Retry { status: u16 },
    /// Answer `error` to the client; the connection stays open only if `may_keep_alive`.
    Answer { error: Error, may_keep_alive: bool },
}

/// What becomes of the attempt, as [`Try::step`] says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the same request again on a fresh connection (at most once per attempt).
    Replay,
    /// Relay the answer to the client.
    Relay,
    Fail(Failure),
}

/// One attempt's policy state.
#[derive(Debug, Clone, Copy)]
pub struct Try {
    retry_ok: bool,
    /// The whole request is in the buffer (its body was not streamed past it).
    replayable: bool,
    /// The client's head allows keep-alive.
    keep_alive: bool,
    replayed: bool,
}

impl Try {
    /// An attempt whose failures before the first byte may be retried elsewhere if
    /// `retry_ok`; `replayable`: its whole request is in one buffer; `keep_alive`: the client
    /// asked to keep its connection.
    pub fn new(retry_ok: bool, replayable: bool, keep_alive: bool) -> Self {
        Self {
            retry_ok,
            replayable,
            keep_alive,
            replayed: false,
        }
    }

    /// Whether this attempt was replayed once already.
    pub fn replayed(&self) -> bool {
        self.replayed
    }

    /// An answer head came: `None` relay it, or the failure it counts as (retried elsewhere).
    pub fn answered(&mut self, status: u16) -> Option<Failure> {
        (self.retry_ok && attempts::retryable(&attempts::answered(status)))
            .then_some(Failure::Retry { status })
    }

    /// The attempt failed before an answer head: `None` replay it on a fresh connection, or
    /// what becomes of it.
    pub fn failed(&mut self, how: Failed) -> Option<Failure> {
        match how {
            Failed::Write {
                reused: true,
                request_kept: true,
            }
            | Failed::ClosedBeforeAnyByte { reused: true }
                if self.replayable && !self.replayed =>
            {
                self.replayed = true;
                None
            }
            // Before the body was read from the client: the connection stays usable only if
            // all of the body had arrived with the head.
            Failed::Connect(e) => Some(self.fail(e, self.replayable && self.keep_alive)),
            // The client's body may be half-sent: its connection cannot be reused.
            Failed::Write { .. } => Some(self.fail(Error::UpstreamUnavailable, false)),
            Failed::ClosedBeforeAnyByte { .. } => {
                Some(self.fail(Error::UpstreamUnavailable, self.keep_alive))
            }
            Failed::Head(e) => Some(self.fail(e, self.keep_alive)),
        }
    }

    /// [`Try::answered`] or [`Try::failed`], as one verdict.
    pub fn step(&mut self, step: Step) -> Verdict {
        match step {
            Step::Answered { status } => {
                self.answered(status).map_or(Verdict::Relay, Verdict::Fail)
            }
            Step::Failed(how) => self.failed(how).map_or(Verdict::Replay, Verdict::Fail),
        }
    }

    /// A failure before any byte reached the client: retried elsewhere when the call and the
    /// one retry rule allow it (a failed connection or a timeout always does), answered
    /// otherwise.
    fn fail(&self, error: Error, may_keep_alive: bool) -> Failure {
        let status = error.status();
        if self.retry_ok && attempts::retryable(&attempts::outcome(None, status, None, false)) {
            Failure::Retry { status }
        } else {
            Failure::Answer {
                error,
                may_keep_alive,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOSED_POOLED: Step = Step::Failed(Failed::ClosedBeforeAnyByte { reused: true });
    const WRITE_POOLED: Step = Step::Failed(Failed::Write {
        reused: true,
        request_kept: true,
    });

    fn answer(e: Error, may_keep_alive: bool) -> Verdict {
        Verdict::Fail(Failure::Answer {
            error: e,
            may_keep_alive,
        })
    }

    fn retry(status: u16) -> Verdict {
        Verdict::Fail(Failure::Retry { status })
    }

    #[test]
    fn a_closed_pooled_connection_is_replayed_once_when_the_request_is_whole() {
        for first in [CLOSED_POOLED, WRITE_POOLED] {
            let mut t = Try::new(false, true, true);
            assert_eq!(t.step(first), Verdict::Replay);
            assert!(t.replayed());
            // The fresh connection fails the same way: answered, not replayed again.
            let again = t.step(first);
            assert!(
                matches!(again, Verdict::Fail(Failure::Answer { .. })),
                "{again:?}"
            );
        }
        // A fresh connection, a streamed body, a write that consumed the request: no replay.
        for (step, replayable) in [
            (
                Step::Failed(Failed::ClosedBeforeAnyByte { reused: false }),
                true,
            ),
            (CLOSED_POOLED, false),
            (
                Step::Failed(Failed::Write {
                    reused: true,
                    request_kept: false,
                }),
                true,
            ),
        ] {
            let mut t = Try::new(false, replayable, true);
            assert_ne!(
                t.step(step),
                Verdict::Replay,
                "{step:?} replayable {replayable}"
            );
        }
    }

    #[test]
    fn failures_are_retried_elsewhere_only_when_the_call_allows_and_the_rule_does() {
        let mut t = Try::new(true, true, true);
        assert_eq!(
            t.step(Step::Failed(Failed::Connect(Error::UpstreamUnavailable))),
            retry(502)
        );
        assert_eq!(
            t.step(Step::Failed(Failed::Head(Error::UpstreamTimeout))),
            retry(504)
        );
        for status in [429, 502, 503, 504] {
            assert_eq!(t.step(Step::Answered { status }), retry(status), "{status}");
        }
        // A client error or a plain 500 is the answer: relayed.
        for status in [200, 400, 404, 500] {
            assert_eq!(
                t.step(Step::Answered { status }),
                Verdict::Relay,
                "{status}"
            );
        }
        // The last attempt (or a route's only one): every failure is answered, every head relayed.
        let mut t = Try::new(false, true, true);
        assert_eq!(t.step(Step::Answered { status: 503 }), Verdict::Relay);
        assert_eq!(
            t.step(Step::Failed(Failed::Head(Error::UpstreamTimeout))),
            answer(Error::UpstreamTimeout, true)
        );
    }

    #[test]
    fn an_answered_failure_keeps_the_client_connection_only_when_its_body_was_whole() {
        let e = Error::UpstreamUnavailable;
        // Nothing of a streamed body was read yet when the connection failed: close.
        assert_eq!(
            Try::new(false, false, true).step(Step::Failed(Failed::Connect(e))),
            answer(e, false)
        );
        assert_eq!(
            Try::new(false, true, true).step(Step::Failed(Failed::Connect(e))),
            answer(e, true)
        );
        // A failed write may leave the body half-read: always close.
        let write = Step::Failed(Failed::Write {
            reused: false,
            request_kept: true,
        });
        assert_eq!(Try::new(false, true, true).step(write), answer(e, false));
        // After the body: as the client asked.
        for keep_alive in [true, false] {
            let mut t = Try::new(false, false, keep_alive);
            assert_eq!(t.step(CLOSED_POOLED), answer(e, keep_alive));
        }
    }
}
