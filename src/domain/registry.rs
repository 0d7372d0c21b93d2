//! The resource registry's entries: service resources with their owner and extra event
//! subscribers, and delegations (who may act for whom on which resources).

use serde::{Deserialize, Serialize};

use super::{Party, ResourceUrn};

/// A service resource, its owner and the parties listed as extra subscribers of its events.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceEntry {
    pub id: ResourceUrn,
    pub owner: Party,
    #[serde(default)]
    pub subscribers: Vec<Party>,
}

/// `to` may act for `from` on `resources`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DelegationEntry {
    pub from: Party,
    pub to: Party,
    pub resources: Vec<ResourceUrn>,
}
