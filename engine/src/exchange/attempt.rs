//! One attempt at one upstream target, decided without I/O: what becomes of each way it can
//! fail, and of the answer head it gets.
//!
//! The driver (`conn::forward::forward`) checks a connection out of the pool or opens one,
//! writes the request, streams the rest of the body and reads the answer head, reporting each
//! step's failure or the head's status as a [`Step`]; [`Try::step`] answers with a [`Verdict`]:
//! - replay the request once on a fresh connection, when a *pooled* connection turned out to be
//!   closed (the write failed, or the upstream closed before any byte of an answer) and the
//!   whole request is still in hand (its body was not streamed, the write did not consume it);
//! - hand the failure back to the call to retry at another deployment, when the call allows it
//!   (`retry_ok`) and the one retry rule ([`attempts::retryable`]) does;
//! - answer the error to the client, saying whether the connection may stay open;
//! - relay the answer.

use super::attempts;
use crate::error::Error;

/// What the driver reports of the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// No connection could be opened (refused, timed out, TLS failed): nothing was sent.
    ConnectFailed(Error),
    /// The request could not be written. `reused`: the connection came from the pool;
    /// `request_kept`: the request is still whole in its buffer (a write that timed out may
    /// have consumed part of it).
    WriteFailed { reused: bool, request_kept: bool },
    /// The upstream closed (or reset) the connection before any byte of an answer.
    ClosedBeforeAnyByte { reused: bool },
    /// The answer head could not be read: timed out, malformed, or cut off inside.
    HeadFailed(Error),
    /// An answer head with this status.
    Answered { status: u16 },
}

/// What becomes of the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send the same request again on a fresh connection (at most once per attempt).
    Replay,
    /// Relay the answer to the client.
    Relay,
    /// Nothing reached the client and the call may try elsewhere: hand it back. `status`: what
    /// the failure counts as (the answer's status, or the error's).
    Retry { status: u16 },
    /// Answer `error` to the client; the connection stays open only if `may_keep_alive`.
    Answer { error: Error, may_keep_alive: bool },
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

    /// Take what happened, say what to do.
    pub fn step(&mut self, step: Step) -> Verdict {
        match step {
            Step::Answered { status } => {
                if self.retry_ok && attempts::retryable(&attempts::answered(status)) {
                    Verdict::Retry { status }
                } else {
                    Verdict::Relay
                }
            }
            Step::WriteFailed {
                reused: true,
                request_kept: true,
            }
            | Step::ClosedBeforeAnyByte { reused: true }
                if self.replayable && !self.replayed =>
            {
                self.replayed = true;
                Verdict::Replay
            }
            // Before the body was read from the client: the connection stays usable only if
            // all of the body had arrived with the head.
            Step::ConnectFailed(e) => self.fail(e, self.replayable && self.keep_alive),
            // The client's body may be half-sent: its connection cannot be reused.
            Step::WriteFailed { .. } => self.fail(Error::UpstreamUnavailable, false),
            Step::ClosedBeforeAnyByte { .. } => {
                self.fail(Error::UpstreamUnavailable, self.keep_alive)
            }
            Step::HeadFailed(e) => self.fail(e, self.keep_alive),
        }
    }

    /// A failure before any byte reached the client: retried elsewhere when the call and the
    /// one retry rule allow it (a failed connection or a timeout always does), answered
    /// otherwise.
    fn fail(&self, error: Error, may_keep_alive: bool) -> Verdict {
        let status = error.status();
        if self.retry_ok && attempts::retryable(&attempts::outcome(None, status, None, false)) {
            Verdict::Retry { status }
        } else {
            Verdict::Answer {
                error,
                may_keep_alive,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOSED_POOLED: Step = Step::ClosedBeforeAnyByte { reused: true };
    const WRITE_POOLED: Step = Step::WriteFailed {
        reused: true,
        request_kept: true,
    };

    fn answer(e: Error, may_keep_alive: bool) -> Verdict {
        Verdict::Answer {
            error: e,
            may_keep_alive,
        }
    }

    #[test]
    fn a_closed_pooled_connection_is_replayed_once_when_the_request_is_whole() {
        for first in [CLOSED_POOLED, WRITE_POOLED] {
            let mut t = Try::new(false, true, true);
            assert_eq!(t.step(first), Verdict::Replay);
            assert!(t.replayed());
            // The fresh connection fails the same way: answered, not replayed again.
            let again = t.step(first);
            assert!(matches!(again, Verdict::Answer { .. }), "{again:?}");
        }
        // A fresh connection, a streamed body, a write that consumed the request: no replay.
        for (step, replayable) in [
            (Step::ClosedBeforeAnyByte { reused: false }, true),
            (CLOSED_POOLED, false),
            (
                Step::WriteFailed {
                    reused: true,
                    request_kept: false,
                },
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
            t.step(Step::ConnectFailed(Error::UpstreamUnavailable)),
            Verdict::Retry { status: 502 }
        );
        assert_eq!(
            t.step(Step::HeadFailed(Error::UpstreamTimeout)),
            Verdict::Retry { status: 504 }
        );
        for status in [429, 502, 503, 504] {
            assert_eq!(
                t.step(Step::Answered { status }),
                Verdict::Retry { status },
                "{status}"
            );
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
            t.step(Step::HeadFailed(Error::UpstreamTimeout)),
            answer(Error::UpstreamTimeout, true)
        );
    }

    #[test]
    fn an_answered_failure_keeps_the_client_connection_only_when_its_body_was_whole() {
        let e = Error::UpstreamUnavailable;
        // Nothing of a streamed body was read yet when the connection failed: close.
        assert_eq!(
            Try::new(false, false, true).step(Step::ConnectFailed(e)),
            answer(e, false)
        );
        assert_eq!(
            Try::new(false, true, true).step(Step::ConnectFailed(e)),
            answer(e, true)
        );
        // A failed write may leave the body half-read: always close.
        let write = Step::WriteFailed {
            reused: false,
            request_kept: true,
        };
        assert_eq!(Try::new(false, true, true).step(write), answer(e, false));
        // After the body: as the client asked.
        for keep_alive in [true, false] {
            let mut t = Try::new(false, false, keep_alive);
            assert_eq!(t.step(CLOSED_POOLED), answer(e, keep_alive));
        }
    }
}
