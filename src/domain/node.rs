//! A node of a cluster as it announces itself.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A node as it announces itself to the cluster (`GET /admin/v1/nodes`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub id: String,
    /// Base URL the node serves on.
    pub address: String,
    /// Open realtime connections.
    pub connections: i64,
    pub started: DateTime<Utc>,
    pub seen: DateTime<Utc>,
    /// The webhook partitions the node delivers for.
    #[serde(default)]
    pub partitions: Vec<u16>,
}
