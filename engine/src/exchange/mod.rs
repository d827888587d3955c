//! One request's exchange, decided without I/O.
//!
//! The connection driver (`conn`) performs I/O; everything it decides, it asks here, with the
//! bytes it has and the time it read ([`crate::clock::Now`]):
//! - [`body`]: what is left of a request body and how arrived bytes are forwarded or kept;
//! - [`relay`]: the upstream's answer head turned into the client's, and where its body ends;
//! - [`attempts`]: which deployment of a model group to try next (strategy, fallbacks,
//!   quotas), the one retry rule, and how an attempt ended for the balancer;
//! - [`call`]: a request's call to a model group as a state machine, events in (start, an
//!   attempt ended) and actions out (send here with this hedge, refuse, done): the attempt
//!   loop and the deployment quotas it holds in the ledger;
//! - [`ledger`]: what a request holds (tenant admission, deployment quota, upstream slot),
//!   settled exactly once whichever path ends it;
//! - `sim` (tests and the `exchange` fuzz target): the attempt loop driven by arbitrary bytes,
//!   checking that every reservation is settled once and every slot released.

pub mod attempts;
pub mod body;
pub mod call;
pub mod head;
pub mod ledger;
pub mod relay;
#[cfg(any(test, feature = "fuzzing"))]
pub mod sim;
