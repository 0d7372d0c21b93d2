//! The dialog model (the event-relevant subset of a Dialogporten dialog), its API input shapes and
//! the pure state transitions that turn one command into a new state plus the events it emits.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::event::{EventDraft, EventKind};
use super::party::{Party, ResourceUrn};
use super::seen;

/// A 400-worthy problem with client input, naming the offending field (JSON path).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InputError {
    pub field: String,
    pub message: String,
}

impl InputError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InputError {
            field: field.into(),
            message: message.into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum DialogStatus {
    NotApplicable,
    InProgress,
    Draft,
    Awaiting,
    RequiresAttention,
    Completed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ActorType {
    ServiceOwner,
    PartyRepresentative,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TransmissionType {
    Information,
    Acceptance,
    Rejection,
    Request,
    Alert,
    Decision,
    Submission,
    Correction,
}

/// Activity types as the API names them; each maps to one `dialogporten.dialog.activity.*.v1` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum ActivityType {
    DialogCreated,
    DialogClosed,
    Information,
    TransmissionOpened,
    PaymentMade,
    SignatureProvided,
    DialogOpened,
    DialogDeleted,
    DialogRestored,
    SentToSigning,
    SentToFormFill,
    SentToSendIn,
    SentToPayment,
    FormSubmitted,
    FormSaved,
    CorrespondenceOpened,
    CorrespondenceConfirmed,
}

impl ActivityType {
    pub const ALL: [ActivityType; 17] = [
        ActivityType::DialogCreated,
        ActivityType::DialogClosed,
        ActivityType::Information,
        ActivityType::TransmissionOpened,
        ActivityType::PaymentMade,
        ActivityType::SignatureProvided,
        ActivityType::DialogOpened,
        ActivityType::DialogDeleted,
        ActivityType::DialogRestored,
        ActivityType::SentToSigning,
        ActivityType::SentToFormFill,
        ActivityType::SentToSendIn,
        ActivityType::SentToPayment,
        ActivityType::FormSubmitted,
        ActivityType::FormSaved,
        ActivityType::CorrespondenceOpened,
        ActivityType::CorrespondenceConfirmed,
    ];

    /// The kebab-case part of the event type, e.g. `transmission-opened`.
    pub fn event_name(self) -> &'static str {
        match self {
            ActivityType::DialogCreated => "created",
            ActivityType::DialogClosed => "closed",
            ActivityType::Information => "information",
            ActivityType::TransmissionOpened => "transmission-opened",
            ActivityType::PaymentMade => "payment-made",
            ActivityType::SignatureProvided => "signature-provided",
            ActivityType::DialogOpened => "dialog-opened",
            ActivityType::DialogDeleted => "dialog-deleted",
            ActivityType::DialogRestored => "dialog-restored",
            ActivityType::SentToSigning => "sent-to-signing",
            ActivityType::SentToFormFill => "sent-to-form-fill",
            ActivityType::SentToSendIn => "sent-to-send-in",
            ActivityType::SentToPayment => "sent-to-payment",
            ActivityType::FormSubmitted => "form-submitted",
            ActivityType::FormSaved => "form-saved",
            ActivityType::CorrespondenceOpened => "correspondence-opened",
            ActivityType::CorrespondenceConfirmed => "correspondence-confirmed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Localization {
    pub value: String,
    pub language_code: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Content {
    pub title: Vec<Localization>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Vec<Localization>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    pub actor_type: ActorType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Activity {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: ActivityType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performed_by: Option<Actor>,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transmission {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: TransmissionType,
    pub sender: Actor,
    pub content: Content,
    pub created_at: DateTime<Utc>,
}

/// One entry of the seen log: the latest time `seen_by` fetched the dialog's details.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SeenEntry {
    pub seen_by: Party,
    pub seen_at: DateTime<Utc>,
}

/// The stored dialog. `sequence` is the number of events in the dialog's own log, so the next event
/// gets `sequence + 1`; commits compare it to detect a concurrent writer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dialog {
    pub id: Uuid,
    pub service_resource: ResourceUrn,
    pub party: Party,
    pub status: DialogStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extended_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preceding_process: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visible_from: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub due_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    pub content: Content,
    pub activities: Vec<Activity>,
    pub transmissions: Vec<Transmission>,
    pub revision: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub content_updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub seen_log: Vec<SeenEntry>,
    pub sequence: u64,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivityInput {
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(rename = "type")]
    pub kind: ActivityType,
    #[serde(default)]
    pub extended_type: Option<String>,
    #[serde(default)]
    pub performed_by: Option<Actor>,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransmissionInput {
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(rename = "type")]
    pub kind: TransmissionType,
    pub sender: Actor,
    pub content: Content,
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
}

/// Body of create and replace. Read-only fields of a fetched dialog are accepted and ignored, so a
/// body read with `GET` can be sent back with `PUT`.
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DialogInput {
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(default)]
    pub service_resource: Option<ResourceUrn>,
    #[serde(default)]
    pub party: Option<Party>,
    pub status: DialogStatus,
    #[serde(default)]
    pub extended_status: Option<String>,
    #[serde(default)]
    pub external_reference: Option<String>,
    #[serde(default)]
    pub process: Option<String>,
    #[serde(default)]
    pub preceding_process: Option<String>,
    #[serde(default)]
    pub progress: Option<u8>,
    #[serde(default)]
    pub visible_from: Option<DateTime<Utc>>,
    #[serde(default)]
    pub due_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
    pub content: Content,
    #[serde(default)]
    pub activities: Vec<ActivityInput>,
    #[serde(default)]
    pub transmissions: Vec<TransmissionInput>,
}

/// Longest accepted free-text value (process URIs, references, extended types).
const MAX_TEXT: usize = 1023;

fn check_text(field: &str, value: &Option<String>) -> Result<(), InputError> {
    match value {
        Some(v) if v.is_empty() => Err(InputError::new(field, "must not be empty")),
        Some(v) if v.len() > MAX_TEXT => Err(InputError::new(
            field,
            format!("longer than {MAX_TEXT} characters"),
        )),
        _ => Ok(()),
    }
}

fn check_localizations(
    field: &str,
    list: &[Localization],
    required: bool,
) -> Result<(), InputError> {
    if required && list.is_empty() {
        return Err(InputError::new(
            field,
            "must hold at least one localization",
        ));
    }
    for (i, l) in list.iter().enumerate() {
        if l.value.is_empty() {
            return Err(InputError::new(
                format!("{field}[{i}].value"),
                "must not be empty",
            ));
        }
        let code_ok = (2..=3).contains(&l.language_code.len())
            && l.language_code.bytes().all(|b| b.is_ascii_lowercase());
        if !code_ok {
            return Err(InputError::new(
                format!("{field}[{i}].languageCode"),
                "must be an ISO 639 code such as nb, nn or en",
            ));
        }
    }
    Ok(())
}

fn check_content(field: &str, c: &Content) -> Result<(), InputError> {
    check_localizations(&format!("{field}.title"), &c.title, true)?;
    if let Some(summary) = &c.summary {
        check_localizations(&format!("{field}.summary"), summary, false)?;
    }
    Ok(())
}

impl DialogInput {
    /// Field checks serde cannot express (ranges, non-empty lists).
    pub fn validate(&self) -> Result<(), InputError> {
        if let Some(p) = self.progress
            && p > 100
        {
            return Err(InputError::new("progress", "must be between 0 and 100"));
        }
        check_text("extendedStatus", &self.extended_status)?;
        check_text("externalReference", &self.external_reference)?;
        check_text("process", &self.process)?;
        check_text("precedingProcess", &self.preceding_process)?;
        check_content("content", &self.content)?;
        for (i, a) in self.activities.iter().enumerate() {
            check_text(&format!("activities[{i}].extendedType"), &a.extended_type)?;
        }
        for (i, t) in self.transmissions.iter().enumerate() {
            check_content(&format!("transmissions[{i}].content"), &t.content)?;
        }
        Ok(())
    }
}

impl ActivityInput {
    fn into_activity(self, now: DateTime<Utc>) -> Activity {
        Activity {
            id: self.id.unwrap_or_else(Uuid::now_v7),
            kind: self.kind,
            extended_type: self.extended_type,
            performed_by: self.performed_by,
            created_at: self.created_at.unwrap_or(now),
        }
    }

    /// An entry with a known id must describe the stored activity unchanged.
    fn matches(&self, a: &Activity) -> bool {
        self.kind == a.kind
            && self.extended_type == a.extended_type
            && self.performed_by == a.performed_by
            && self.created_at.is_none_or(|t| t == a.created_at)
    }
}

impl TransmissionInput {
    fn into_transmission(self, now: DateTime<Utc>) -> Transmission {
        Transmission {
            id: self.id.unwrap_or_else(Uuid::now_v7),
            kind: self.kind,
            sender: self.sender,
            content: self.content,
            created_at: self.created_at.unwrap_or(now),
        }
    }

    fn matches(&self, t: &Transmission) -> bool {
        self.kind == t.kind
            && self.sender == t.sender
            && self.content == t.content
            && self.created_at.is_none_or(|c| c == t.created_at)
    }
}

fn no_duplicate_ids<'a>(
    field: &str,
    ids: impl Iterator<Item = &'a Uuid>,
) -> Result<(), InputError> {
    let mut seen = std::collections::HashSet::new();
    for (i, id) in ids.enumerate() {
        if !seen.insert(*id) {
            return Err(InputError::new(format!("{field}[{i}].id"), "duplicate id"));
        }
    }
    Ok(())
}

/// Events of one dialog change, in emission order, before the store numbers them.
pub type Drafts = Vec<EventDraft>;

impl Dialog {
    /// Builds a new dialog from a validated create body. Emits `created`, then one activity event per
    /// activity and one `transmission.created` per transmission.
    pub fn create(input: DialogInput, now: DateTime<Utc>) -> Result<(Dialog, Drafts), InputError> {
        input.validate()?;
        let service_resource = input
            .service_resource
            .ok_or_else(|| InputError::new("serviceResource", "is required"))?;
        let party = input
            .party
            .ok_or_else(|| InputError::new("party", "is required"))?;
        let activities: Vec<Activity> = input
            .activities
            .into_iter()
            .map(|a| a.into_activity(now))
            .collect();
        let transmissions: Vec<Transmission> = input
            .transmissions
            .into_iter()
            .map(|t| t.into_transmission(now))
            .collect();
        no_duplicate_ids("activities", activities.iter().map(|a| &a.id))?;
        no_duplicate_ids("transmissions", transmissions.iter().map(|t| &t.id))?;
        let mut drafts = vec![EventDraft::dialog(EventKind::Created)];
        drafts.extend(activities.iter().map(EventDraft::activity));
        drafts.extend(transmissions.iter().map(EventDraft::transmission));
        let dialog = Dialog {
            id: input.id.unwrap_or_else(Uuid::now_v7),
            service_resource,
            party,
            status: input.status,
            extended_status: input.extended_status,
            external_reference: input.external_reference,
            process: input.process,
            preceding_process: input.preceding_process,
            progress: input.progress,
            visible_from: input.visible_from,
            due_at: input.due_at,
            expires_at: input.expires_at,
            content: input.content,
            activities,
            transmissions,
            revision: Uuid::new_v4(),
            created_at: now,
            updated_at: now,
            content_updated_at: now,
            deleted_at: None,
            seen_log: Vec::new(),
            sequence: 0,
        };
        Ok((dialog, drafts))
    }

    /// Replaces the mutable fields. Activities and transmissions are append-only: new ids are added
    /// (and emit their events), known ids must be unchanged, and left-out entries stay.
    pub fn replace(
        &self,
        input: DialogInput,
        now: DateTime<Utc>,
        silent: bool,
    ) -> Result<(Dialog, Drafts), InputError> {
        input.validate()?;
        if let Some(id) = input.id
            && id != self.id
        {
            return Err(InputError::new(
                "id",
                "does not match the dialog being replaced",
            ));
        }
        if let Some(r) = &input.service_resource
            && *r != self.service_resource
        {
            return Err(InputError::new("serviceResource", "cannot be changed"));
        }
        if let Some(p) = &input.party
            && *p != self.party
        {
            return Err(InputError::new("party", "cannot be changed"));
        }
        let mut next = self.clone();
        let mut added_activities = Vec::new();
        for (i, a) in input.activities.into_iter().enumerate() {
            match a
                .id
                .and_then(|id| self.activities.iter().find(|x| x.id == id))
            {
                Some(existing) if a.matches(existing) => {}
                Some(_) => {
                    return Err(InputError::new(
                        format!("activities[{i}]"),
                        "activities are append-only: an existing activity cannot be changed",
                    ));
                }
                None => added_activities.push(a.into_activity(now)),
            }
        }
        let mut added_transmissions = Vec::new();
        for (i, t) in input.transmissions.into_iter().enumerate() {
            match t
                .id
                .and_then(|id| self.transmissions.iter().find(|x| x.id == id))
            {
                Some(existing) if t.matches(existing) => {}
                Some(_) => {
                    return Err(InputError::new(
                        format!("transmissions[{i}]"),
                        "transmissions are append-only: an existing transmission cannot be changed",
                    ));
                }
                None => added_transmissions.push(t.into_transmission(now)),
            }
        }
        no_duplicate_ids("activities", added_activities.iter().map(|a| &a.id))?;
        no_duplicate_ids("transmissions", added_transmissions.iter().map(|t| &t.id))?;
        let content_changed = input.content != self.content;
        next.status = input.status;
        next.extended_status = input.extended_status;
        next.external_reference = input.external_reference;
        next.process = input.process;
        next.preceding_process = input.preceding_process;
        next.progress = input.progress;
        next.visible_from = input.visible_from;
        next.due_at = input.due_at;
        next.expires_at = input.expires_at;
        next.content = input.content;
        let mut drafts = vec![EventDraft::dialog(EventKind::Updated)];
        drafts.extend(added_activities.iter().map(EventDraft::activity));
        drafts.extend(added_transmissions.iter().map(EventDraft::transmission));
        next.activities.extend(added_activities);
        next.transmissions.extend(added_transmissions);
        next.touch(now, silent, content_changed);
        Ok((next, drafts))
    }

    pub fn add_activity(
        &self,
        input: ActivityInput,
        now: DateTime<Utc>,
        silent: bool,
    ) -> Result<(Dialog, Drafts, Uuid), InputError> {
        check_text("extendedType", &input.extended_type)?;
        if let Some(id) = input.id
            && self.activities.iter().any(|a| a.id == id)
        {
            return Err(InputError::new(
                "id",
                "an activity with this id already exists",
            ));
        }
        let activity = input.into_activity(now);
        let id = activity.id;
        let drafts = vec![
            EventDraft::dialog(EventKind::Updated),
            EventDraft::activity(&activity),
        ];
        let mut next = self.clone();
        next.activities.push(activity);
        next.touch(now, silent, false);
        Ok((next, drafts, id))
    }

    pub fn add_transmission(
        &self,
        input: TransmissionInput,
        now: DateTime<Utc>,
        silent: bool,
    ) -> Result<(Dialog, Drafts, Uuid), InputError> {
        check_content("content", &input.content)?;
        if let Some(id) = input.id
            && self.transmissions.iter().any(|t| t.id == id)
        {
            return Err(InputError::new(
                "id",
                "a transmission with this id already exists",
            ));
        }
        let transmission = input.into_transmission(now);
        let id = transmission.id;
        let drafts = vec![
            EventDraft::dialog(EventKind::Updated),
            EventDraft::transmission(&transmission),
        ];
        let mut next = self.clone();
        next.transmissions.push(transmission);
        next.touch(now, silent, true);
        Ok((next, drafts, id))
    }

    pub fn soft_delete(&self, now: DateTime<Utc>, silent: bool) -> (Dialog, Drafts) {
        let mut next = self.clone();
        next.deleted_at = Some(now);
        next.touch(now, silent, false);
        (next, vec![EventDraft::dialog(EventKind::Deleted)])
    }

    pub fn restore(&self, now: DateTime<Utc>, silent: bool) -> (Dialog, Drafts) {
        let mut next = self.clone();
        next.deleted_at = None;
        next.touch(now, silent, false);
        (next, vec![EventDraft::dialog(EventKind::Restored)])
    }

    /// A details fetch by `user`: when the seen rule asks for it, records the view and emits `seen`
    /// followed by `updated`, leaving `updatedAt` and `revision` alone.
    pub fn see(&self, user: &Party, now: DateTime<Utc>) -> Option<(Dialog, Drafts)> {
        if !seen::needs_seen(&self.seen_log, user, self.updated_at) {
            return None;
        }
        let mut next = self.clone();
        seen::record(&mut next.seen_log, user, now);
        let seen_id = seen::seen_event_id(self.id, user, self.updated_at);
        let drafts = vec![
            EventDraft::dialog(EventKind::Seen).with_id(seen_id),
            EventDraft::dialog(EventKind::Updated),
        ];
        Some((next, drafts))
    }

    /// Views recorded since the last update, as the API shows them.
    pub fn seen_since_last_update(&self) -> impl Iterator<Item = &SeenEntry> {
        self.seen_log
            .iter()
            .filter(|e| e.seen_at >= self.updated_at)
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }

    /// A copy of everything but the activities and transmissions (empty in the copy): what a store
    /// writes again on each change, while the two append-only lists are written once per item.
    pub fn without_children(&self) -> Dialog {
        // Every field named, so a new one cannot be left out of the copy unnoticed.
        let Dialog {
            id,
            service_resource,
            party,
            status,
            extended_status,
            external_reference,
            process,
            preceding_process,
            progress,
            visible_from,
            due_at,
            expires_at,
            content,
            activities: _,
            transmissions: _,
            revision,
            created_at,
            updated_at,
            content_updated_at,
            deleted_at,
            seen_log,
            sequence,
        } = self;
        Dialog {
            id: *id,
            service_resource: service_resource.clone(),
            party: party.clone(),
            status: *status,
            extended_status: extended_status.clone(),
            external_reference: external_reference.clone(),
            process: process.clone(),
            preceding_process: preceding_process.clone(),
            progress: *progress,
            visible_from: *visible_from,
            due_at: *due_at,
            expires_at: *expires_at,
            content: content.clone(),
            activities: Vec::new(),
            transmissions: Vec::new(),
            revision: *revision,
            created_at: *created_at,
            updated_at: *updated_at,
            content_updated_at: *content_updated_at,
            deleted_at: *deleted_at,
            seen_log: seen_log.clone(),
            sequence: *sequence,
        }
    }

    /// Whether end users may see the dialog (and its events may be published) at `now`.
    pub fn is_visible_at(&self, now: DateTime<Utc>) -> bool {
        self.visible_from.is_none_or(|t| t <= now)
    }

    fn touch(&mut self, now: DateTime<Utc>, silent: bool, content_changed: bool) {
        self.revision = Uuid::new_v4();
        if !silent {
            self.updated_at = now;
            if content_changed {
                self.content_updated_at = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> DialogInput {
        serde_json::from_value(serde_json::json!({
            "serviceResource": "urn:altinn:resource:test",
            "party": "urn:altinn:person:identifier-no:08895699684",
            "status": "InProgress",
            "content": {"title": [{"value": "Hei", "languageCode": "nb"}]},
            "activities": [{"type": "Information"}, {"type": "FormSubmitted"}],
            "transmissions": [{"type": "Information", "sender": {"actorType": "ServiceOwner"},
                "content": {"title": [{"value": "T", "languageCode": "nb"}]}}]
        }))
        .expect("valid input")
    }

    #[test]
    fn create_emits_created_then_activities_then_transmissions() {
        let (d, drafts) = Dialog::create(input(), Utc::now()).expect("create");
        let kinds: Vec<String> = drafts.iter().map(|d| d.kind.type_name()).collect();
        assert_eq!(
            kinds,
            [
                "dialogporten.dialog.created.v1",
                "dialogporten.dialog.activity.information.v1",
                "dialogporten.dialog.activity.form-submitted.v1",
                "dialogporten.dialog.transmission.created.v1",
            ]
        );
        assert_eq!(d.sequence, 0);
    }

    #[test]
    fn without_children_keeps_every_other_field() {
        let (mut d, _) = Dialog::create(input(), Utc::now()).expect("create");
        d.extended_status = Some("x".into());
        d.progress = Some(40);
        let header = d.without_children();
        assert!(header.activities.is_empty() && header.transmissions.is_empty());
        d.activities.clear();
        d.transmissions.clear();
        assert_eq!(header, d);
    }

    #[test]
    fn silent_replace_keeps_updated_at_but_changes_revision() {
        let t0 = Utc::now();
        let (d, _) = Dialog::create(input(), t0).expect("create");
        let later = t0 + chrono::Duration::seconds(5);
        let (n, _) = d.replace(input(), later, true).expect("replace");
        assert_eq!(n.updated_at, t0);
        assert_ne!(n.revision, d.revision);
        let (n2, _) = d.replace(input(), later, false).expect("replace");
        assert_eq!(n2.updated_at, later);
    }

    #[test]
    fn replace_rejects_changed_existing_activity() {
        let (d, _) = Dialog::create(input(), Utc::now()).expect("create");
        let mut again = input();
        again.activities = vec![ActivityInput {
            id: Some(d.activities[0].id),
            kind: ActivityType::PaymentMade,
            extended_type: None,
            performed_by: None,
            created_at: None,
        }];
        let err = d
            .replace(again, Utc::now(), false)
            .expect_err("must reject");
        assert_eq!(err.field, "activities[0]");
    }

    #[test]
    fn progress_over_100_names_the_field() {
        let mut i = input();
        i.progress = Some(101);
        assert_eq!(
            Dialog::create(i, Utc::now()).expect_err("reject").field,
            "progress"
        );
    }

    #[test]
    fn first_view_emits_seen_and_updated_then_nothing_until_next_update() {
        let t0 = Utc::now();
        let (d, _) = Dialog::create(input(), t0).expect("create");
        let user = Party::person("08895699684").expect("pid");
        let (seen, drafts) = d
            .see(&user, t0 + chrono::Duration::seconds(1))
            .expect("first view");
        assert_eq!(drafts.len(), 2);
        assert_eq!(seen.revision, d.revision);
        assert_eq!(seen.updated_at, d.updated_at);
        assert!(seen.see(&user, t0 + chrono::Duration::seconds(2)).is_none());
        let (upd, _) = seen
            .replace(input(), t0 + chrono::Duration::seconds(3), false)
            .expect("upd");
        assert!(upd.see(&user, t0 + chrono::Duration::seconds(4)).is_some());
    }
}
