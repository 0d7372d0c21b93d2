//! What a dialog actor is asked to do, on whose behalf, and what comes back.

use std::sync::Arc;

use uuid::Uuid;

use crate::auth::Policy;
use crate::domain::{ActivityInput, Dialog, DialogInput, InputError, Party, TransmissionInput};

/// On whose behalf a command runs; checked by the actor against the loaded dialog.
#[derive(Clone, Debug)]
pub enum Access {
    /// A service owner: must own the dialog's service resource.
    ServiceOwner { party: Party, policy: Arc<Policy> },
    /// An end user: must be the dialog's party or hold a delegation for its resource.
    EndUser { party: Party, policy: Arc<Policy> },
}

impl Access {
    /// The policy the command is authorized against.
    pub fn policy(&self) -> &Arc<Policy> {
        match self {
            Access::ServiceOwner { policy, .. } | Access::EndUser { policy, .. } => policy,
        }
    }

    /// Authorizes against `current` from now on.
    fn renew(&mut self, current: Arc<Policy>) {
        match self {
            Access::ServiceOwner { policy, .. } | Access::EndUser { policy, .. } => {
                *policy = current
            }
        }
    }

    /// Takes the store's current policy when it is newer than the one the command was
    /// authorized against (which may have been answered from memory, see
    /// `RegistryStore::policy_for_change`); true if it was.
    pub async fn renewed(
        &mut self,
        store: &dyn crate::store::Store,
    ) -> Result<bool, crate::store::StoreError> {
        let current = store.policy().await?;
        if current.version() == self.policy().version() {
            return Ok(false);
        }
        self.renew(current);
        Ok(true)
    }
}

#[derive(Clone, Debug)]
pub enum Command {
    Create(Box<DialogInput>),
    /// A details read; `viewer` (the end user, or a service owner's `endUserId`) may emit `seen`.
    View {
        viewer: Option<Party>,
    },
    Replace {
        input: Box<DialogInput>,
        if_match: Option<Uuid>,
        silent: bool,
    },
    AddActivity {
        input: Box<ActivityInput>,
        if_match: Option<Uuid>,
        silent: bool,
    },
    AddTransmission {
        input: Box<TransmissionInput>,
        if_match: Option<Uuid>,
        silent: bool,
    },
    Delete {
        if_match: Option<Uuid>,
        silent: bool,
    },
    Restore {
        silent: bool,
    },
    Purge,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Create(_) => "create",
            Command::View { .. } => "view",
            Command::Replace { .. } => "replace",
            Command::AddActivity { .. } => "add_activity",
            Command::AddTransmission { .. } => "add_transmission",
            Command::Delete { .. } => "delete",
            Command::Restore { .. } => "restore",
            Command::Purge => "purge",
        }
    }
}

/// The message a dialog actor handles.
#[derive(Clone, Debug)]
pub struct DialogCommand {
    pub access: Access,
    pub command: Command,
}

impl actix::Message for DialogCommand {
    type Result = Result<Outcome, CommandError>;
}

#[derive(Clone, Debug)]
pub struct Outcome {
    /// The dialog after the command (`None` after a purge), shared with the actor's cache.
    pub dialog: Option<Arc<Dialog>>,
    /// Id of the activity or transmission the command added.
    pub child_id: Option<Uuid>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CommandError {
    #[error("dialog not found")]
    NotFound,
    #[error("dialog is deleted")]
    Gone,
    #[error("not allowed: {0}")]
    Forbidden(&'static str),
    #[error("revision does not match If-Match")]
    PreconditionFailed,
    #[error("a dialog with this id already exists")]
    AlreadyExists,
    #[error(transparent)]
    Invalid(#[from] InputError),
    #[error("service unavailable: {0}")]
    Unavailable(String),
}
