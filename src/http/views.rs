//! The shapes of the REST answers: what handlers serialize, and what `GET /openapi.json` describes
//! (both from these types, so the two cannot drift apart).

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{
    Activity, Content, DeadLetter, DelegationEntry, DeliveryRecord, Dialog, DialogStatus, NodeInfo,
    Party, ResourceEntry, ResourceUrn, Subscription, Transmission,
};

/// A dialog as the API shows it: the stored dialog without its seen log, with who has seen it
/// since its last update, and (from single-dialog reads) a dialog token.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DialogView<'a> {
    pub id: Uuid,
    pub service_resource: &'a ResourceUrn,
    pub party: &'a Party,
    pub status: DialogStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extended_status: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_reference: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preceding_process: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visible_from: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    pub content: &'a Content,
    pub activities: &'a [Activity],
    pub transmissions: &'a [Transmission],
    /// The revision; also the `ETag`.
    pub revision: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub content_updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    /// Events in the dialog's own log: the `dialogsequence` of its latest event.
    pub sequence: u64,
    pub seen_since_last_update: Vec<SeenView>,
    /// Authorizes `dialogEvents` for this dialog (single-dialog reads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dialog_token: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeenView {
    pub seen_by: SeenBy,
    pub seen_at: DateTime<Utc>,
    /// Whether the reader is the one who saw it.
    pub is_current_end_user: bool,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeenBy {
    /// Always `PartyRepresentative`.
    pub actor_type: &'static str,
    /// The party's URN.
    pub actor_id: String,
}

impl<'a> DialogView<'a> {
    /// `d` as `viewer` (the reading end user, if any) sees it.
    pub fn of(d: &'a Dialog, viewer: Option<&Party>) -> Self {
        DialogView {
            id: d.id,
            service_resource: &d.service_resource,
            party: &d.party,
            status: d.status,
            extended_status: d.extended_status.as_deref(),
            external_reference: d.external_reference.as_deref(),
            process: d.process.as_deref(),
            preceding_process: d.preceding_process.as_deref(),
            progress: d.progress,
            visible_from: d.visible_from,
            due_at: d.due_at,
            expires_at: d.expires_at,
            content: &d.content,
            activities: &d.activities,
            transmissions: &d.transmissions,
            revision: d.revision,
            created_at: d.created_at,
            updated_at: d.updated_at,
            content_updated_at: d.content_updated_at,
            deleted_at: d.deleted_at,
            sequence: d.sequence,
            seen_since_last_update: d
                .seen_since_last_update()
                .map(|e| SeenView {
                    seen_by: SeenBy {
                        actor_type: "PartyRepresentative",
                        actor_id: e.seen_by.urn(),
                    },
                    seen_at: e.seen_at,
                    is_current_end_user: viewer == Some(&e.seen_by),
                })
                .collect(),
            dialog_token: None,
        }
    }
}

/// One page of a dialog list.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DialogPage<'a> {
    pub items: Vec<DialogView<'a>>,
    pub has_next_page: bool,
    /// Pass as `continuationToken` for the next page.
    pub continuation_token: Option<String>,
}

/// A webhook subscription as the API shows it (the secret only in the answer that created it).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionView<'a> {
    pub id: Uuid,
    pub end_point: &'a str,
    pub resource_filter: &'a str,
    pub subject_filter: Option<&'a str>,
    pub type_filter: Option<&'a str>,
    pub source_filter: Option<&'a str>,
    pub include_subunits: bool,
    /// The party it delivers for.
    pub consumer: &'a str,
    pub created_by: &'a str,
    pub created: DateTime<Utc>,
    pub validated: bool,
    pub disabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<&'a str>,
    /// `whsec_…`: only when the subscription was created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<&'a str>,
}

impl<'a> SubscriptionView<'a> {
    pub fn of(s: &'a Subscription, with_secret: bool) -> Self {
        SubscriptionView {
            id: s.id,
            end_point: &s.end_point,
            resource_filter: &s.resource_filter,
            subject_filter: s.subject_filter.as_deref(),
            type_filter: s.type_filter.as_deref(),
            source_filter: s.source_filter.as_deref(),
            include_subunits: s.include_subunits,
            consumer: &s.consumer,
            created_by: &s.created_by,
            created: s.created,
            validated: s.validated,
            disabled: s.disabled,
            disabled_reason: s.disabled_reason.as_deref(),
            secret: with_secret.then_some(s.secret.as_str()),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SubscriptionList<'a> {
    pub count: usize,
    pub subscriptions: Vec<SubscriptionView<'a>>,
}

/// A rotated secret, shown once; the previous one signs beside it until `previousSecretExpires`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotatedSecret<'a> {
    pub secret: &'a str,
    pub previous_secret_expires: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryList<'a> {
    pub count: usize,
    pub deliveries: &'a [DeliveryRecord],
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterList<'a> {
    pub count: usize,
    pub dead_letters: &'a [DeadLetter],
}

#[derive(Serialize, ToSchema)]
pub struct Replayed {
    /// Events queued for delivery again.
    pub replayed: usize,
}

#[derive(Serialize, ToSchema)]
pub struct Redriven {
    /// Dead letters queued for delivery again.
    pub redriven: usize,
}

#[derive(Serialize, ToSchema)]
pub struct NodeList<'a> {
    pub count: usize,
    pub nodes: &'a [NodeInfo],
}

#[derive(Serialize, ToSchema)]
pub struct ResourceList<'a> {
    pub resources: Vec<&'a ResourceEntry>,
}

#[derive(Serialize, ToSchema)]
pub struct DelegationList<'a> {
    pub delegations: &'a [DelegationEntry],
}

#[derive(Serialize, ToSchema)]
pub struct BackupDone<'a> {
    /// The new file, on the node's machine.
    #[schema(value_type = String)]
    pub path: &'a std::path::Path,
    pub bytes: u64,
}

/// `GET /health/ready` (200 when ready, 503 otherwise).
#[derive(Serialize, ToSchema)]
pub struct Readiness<'a> {
    /// `ready` or `not ready`.
    pub status: &'a str,
    /// `ok`, or why the store cannot be reached.
    pub store: String,
    /// `ok`, or why the bus cannot be reached.
    pub bus: String,
    pub node: &'a str,
}

/// A problem (RFC 9457), the body of every error.
#[derive(Serialize, ToSchema)]
pub struct Problem {
    /// The definition of the status code (RFC 9110).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// For 400: the offending fields with what is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

/// A development-issuer token (`POST /dev/token`).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MintedToken {
    pub token: String,
    /// Seconds.
    pub expires_in: u64,
}
