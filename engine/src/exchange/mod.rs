//! One request's exchange, decided without I/O.
//!
//! The connection driver (`conn`) performs I/O; everything it decides, it asks here, with the
//! bytes it has and the time it read ([`crate::clock::Now`]):
//! - [`body`]: what is left of a request body and how arrived bytes are forwarded or kept;
//! - [`relay`]: the upstream's answer head turned into the client's, and where its body ends;
//! - [`attempt`]: one attempt at one target: a stale pooled connection replayed once, a
//!   failure retried elsewhere or answered, an answer head relayed or retried;
//! - [`attempts`]: which deployment of a model group to try next (strategy, fallbacks,
//!   quotas), the one retry rule, and how an attempt ended for the balancer;
//! - [`call`]: a tenant's LLM call as a state machine, events in (the body, the template
//!   filled, an attempt ended) and actions out (refuse, fill the template, send to the route,
//!   send here with this hedge, done): the body's checks, the tenant's admission, the attempt
//!   loop and the deployment quotas it holds in the ledger;
//! - [`ledger`]: what a request holds (tenant admission, deployment quota, upstream slot),
//!   settled exactly once whichever path ends it;
//! - `sim` (tests and the `exchange` fuzz target): the call driven by arbitrary bytes,
//!   checking that every reservation is settled once and every slot released.

pub mod attempt;
pub mod attempts;
pub mod body;
pub mod call;
pub mod head;
pub mod ledger;
pub mod relay;
#[cfg(any(test, feature = "fuzzing"))]
pub mod sim;
