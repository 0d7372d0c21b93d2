//! Pure types and rules of the dialog platform: parties, dialogs, CloudEvents and the seen rule.
//! No I/O and no imports from the rest of the crate; every other module builds on these.

pub mod dialog;
pub mod event;
pub mod party;
pub mod seen;
pub mod subscription;

pub use dialog::*;
pub use event::*;
pub use party::*;
pub use subscription::{DeadLetter, DeliveryRecord, PendingDelivery, Subscription};
