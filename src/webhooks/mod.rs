//! Webhook delivery: the per-node `Dispatcher` actor, one attempt over HTTP and what its answer
//! means (`client`), each endpoint's in-flight limit and circuit breaker (`endpoint`), Standard
//! Webhooks signing, the retry policy and the endpoint guard (https, public addresses, checked at
//! connect time), and the rules a new subscription must satisfy (`rules`).

pub mod client;
pub mod dispatcher;
pub mod endpoint;
pub mod guard;
pub mod retry;
pub mod rules;
pub mod signing;

pub use dispatcher::Dispatcher;
