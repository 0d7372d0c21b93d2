//! Webhook delivery: the per-node `Dispatcher` actor, Standard Webhooks signing, the retry policy
//! and the endpoint guard (https, public addresses, checked at connect time).

pub mod dispatcher;
pub mod guard;
pub mod retry;
pub mod signing;

pub use dispatcher::Dispatcher;
