//! Pure types and rules of the dialog platform: parties, dialogs, CloudEvents, committed changes,
//! the resource registry and its authorization policy, and the seen rule.
//! No I/O and no imports from the rest of the crate; every other module builds on these.

pub mod change;
pub mod dialog;
pub mod event;
pub mod node;
pub mod partition;
pub mod party;
pub mod policy;
pub mod registry;
pub mod seen;
pub mod subscription;

pub use change::Change;
pub use dialog::*;
pub use event::*;
pub use node::NodeInfo;
pub use partition::{event_partition, lane_stream, partition_of};
pub use party::*;
pub use policy::{Policy, ReadGrant};
pub use registry::{DelegationEntry, ResourceEntry};
pub use subscription::{
    DeadLetter, DeliveryRecord, PendingDelivery, Subscription, SubscriptionChange,
};
