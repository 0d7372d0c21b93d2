//! Per-dialog actors and their registry: every command for one dialog is serialized through its
//! `DialogActor`; different dialogs run in parallel on a pool of arbiters.

pub mod actor;
pub mod command;
pub mod doorbell;
pub mod registry;
pub mod subscribers;

pub use actor::{DialogActor, DialogDeps};
pub use command::{Access, Command, CommandError, Outcome};
pub use doorbell::{Doorbell, Inbox};
pub use registry::{DialogRegistry, SubscriptionGuard};
pub use subscribers::{ConnectionBudget, Popped, SubscriberQueue};
