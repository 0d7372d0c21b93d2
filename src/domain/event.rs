//! CloudEvents 1.0 as Dialogporten emits them: the 23 event types, the envelope and how a dialog
//! change's drafts become numbered events with `source`, `subject`, `resource` and `data`.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::dialog::{Activity, ActivityType, ActorType, Dialog, Transmission};

/// What happened to a dialog; maps one-to-one onto a `dialogporten.dialog.*.v1` type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Created,
    Updated,
    Deleted,
    Restored,
    Seen,
    TransmissionCreated,
    Activity(ActivityType),
}

impl EventKind {
    pub fn type_name(self) -> String {
        match self {
            EventKind::Created => "dialogporten.dialog.created.v1".into(),
            EventKind::Updated => "dialogporten.dialog.updated.v1".into(),
            EventKind::Deleted => "dialogporten.dialog.deleted.v1".into(),
            EventKind::Restored => "dialogporten.dialog.restored.v1".into(),
            EventKind::Seen => "dialogporten.dialog.seen.v1".into(),
            EventKind::TransmissionCreated => "dialogporten.dialog.transmission.created.v1".into(),
            EventKind::Activity(a) => format!("dialogporten.dialog.activity.{}.v1", a.event_name()),
        }
    }

    /// All 23 event types the platform emits.
    pub fn all() -> Vec<EventKind> {
        let mut v = vec![
            EventKind::Created,
            EventKind::Updated,
            EventKind::Deleted,
            EventKind::Restored,
            EventKind::Seen,
            EventKind::TransmissionCreated,
        ];
        v.extend(ActivityType::ALL.iter().map(|a| EventKind::Activity(*a)));
        v
    }
}

/// Where an event points below the dialog's `source` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourcePath {
    Dialog,
    Activity(Uuid),
    Transmission(Uuid),
}

/// An event of a dialog change before it is numbered and stamped.
#[derive(Clone, Debug, PartialEq)]
pub struct EventDraft {
    pub kind: EventKind,
    /// Fixed id (the seen event's id is derived from dialog, user and `updatedAt`); else random.
    pub id: Option<Uuid>,
    pub path: SourcePath,
    /// Type-specific `data` fields beyond `process`/`precedingProcess`.
    pub extra: Map<String, Value>,
}

impl EventDraft {
    pub fn dialog(kind: EventKind) -> Self {
        EventDraft {
            kind,
            id: None,
            path: SourcePath::Dialog,
            extra: Map::new(),
        }
    }

    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = Some(id);
        self
    }

    pub fn activity(a: &Activity) -> Self {
        let mut extra = Map::new();
        extra.insert("activityId".into(), Value::String(a.id.to_string()));
        if let Some(x) = &a.extended_type {
            extra.insert("extendedActivityType".into(), Value::String(x.clone()));
        }
        EventDraft {
            kind: EventKind::Activity(a.kind),
            id: None,
            path: SourcePath::Activity(a.id),
            extra,
        }
    }

    pub fn transmission(t: &Transmission) -> Self {
        let sender = match t.sender.actor_type {
            ActorType::ServiceOwner => "ServiceOwner",
            ActorType::PartyRepresentative => "PartyRepresentative",
        };
        let mut extra = Map::new();
        extra.insert("senderType".into(), Value::String(sender.into()));
        EventDraft {
            kind: EventKind::TransmissionCreated,
            id: None,
            path: SourcePath::Transmission(t.id),
            extra,
        }
    }

    /// Stamps the draft as event number `sequence` of `dialog` (the state after the change).
    pub fn build(
        self,
        dialog: &Dialog,
        sequence: u64,
        time: DateTime<Utc>,
        base_url: &str,
    ) -> CloudEvent {
        let mut source = format!("{base_url}/api/v1/enduser/dialogs/{}", dialog.id);
        match self.path {
            SourcePath::Dialog => {}
            SourcePath::Activity(id) => source.push_str(&format!("/activities/{id}")),
            SourcePath::Transmission(id) => source.push_str(&format!("/transmissions/{id}")),
        }
        let mut data = self.extra;
        if let Some(p) = &dialog.process {
            data.insert("process".into(), Value::String(p.clone()));
        }
        if let Some(p) = &dialog.preceding_process {
            data.insert("precedingProcess".into(), Value::String(p.clone()));
        }
        let has_data = !data.is_empty();
        CloudEvent {
            specversion: "1.0".into(),
            id: self.id.unwrap_or_else(Uuid::now_v7).to_string(),
            kind: self.kind.type_name(),
            time: time.to_rfc3339_opts(SecondsFormat::Micros, true),
            source,
            subject: Some(dialog.party.urn()),
            resource: Some(dialog.service_resource.to_string()),
            resourceinstance: Some(dialog.id.to_string()),
            dialogsequence: Some(sequence),
            datacontenttype: has_data.then(|| "application/json".into()),
            data: has_data.then_some(Value::Object(data)),
            extensions: BTreeMap::new(),
        }
    }
}

/// A CloudEvent in structured JSON mode: lower-case attribute names, nulls omitted. Unknown
/// extension attributes of published events are kept in `extensions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub time: String,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resourceinstance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialogsequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(flatten)]
    pub extensions: BTreeMap<String, Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::dialog::DialogInput;

    #[test]
    fn there_are_23_distinct_event_types() {
        let names: std::collections::HashSet<String> = EventKind::all()
            .into_iter()
            .map(EventKind::type_name)
            .collect();
        assert_eq!(names.len(), 23);
        assert!(names.contains("dialogporten.dialog.activity.sent-to-form-fill.v1"));
        assert!(names.contains("dialogporten.dialog.activity.correspondence-confirmed.v1"));
        assert!(names.contains("dialogporten.dialog.transmission.created.v1"));
    }

    #[test]
    fn every_activity_type_maps_to_its_kebab_event_type() {
        let expected = [
            ("DialogCreated", "created"),
            ("DialogClosed", "closed"),
            ("Information", "information"),
            ("TransmissionOpened", "transmission-opened"),
            ("PaymentMade", "payment-made"),
            ("SignatureProvided", "signature-provided"),
            ("DialogOpened", "dialog-opened"),
            ("DialogDeleted", "dialog-deleted"),
            ("DialogRestored", "dialog-restored"),
            ("SentToSigning", "sent-to-signing"),
            ("SentToFormFill", "sent-to-form-fill"),
            ("SentToSendIn", "sent-to-send-in"),
            ("SentToPayment", "sent-to-payment"),
            ("FormSubmitted", "form-submitted"),
            ("FormSaved", "form-saved"),
            ("CorrespondenceOpened", "correspondence-opened"),
            ("CorrespondenceConfirmed", "correspondence-confirmed"),
        ];
        for (api, event) in expected {
            let t: ActivityType =
                serde_json::from_value(Value::String(api.into())).expect("known activity type");
            assert_eq!(
                EventKind::Activity(t).type_name(),
                format!("dialogporten.dialog.activity.{event}.v1")
            );
        }
    }

    #[test]
    fn envelope_has_lowercase_attributes_and_omits_empty_data() {
        let input: DialogInput = serde_json::from_value(serde_json::json!({
            "serviceResource": "urn:altinn:resource:test",
            "party": "urn:altinn:organization:identifier-no:991825827",
            "status": "Draft",
            "content": {"title": [{"value": "x", "languageCode": "en"}]}
        }))
        .expect("input");
        let (d, drafts) = Dialog::create(input, Utc::now()).expect("create");
        let ev = drafts[0].clone().build(&d, 1, Utc::now(), "http://h");
        let json = serde_json::to_value(&ev).expect("serialize");
        assert_eq!(json["type"], "dialogporten.dialog.created.v1");
        assert_eq!(
            json["source"],
            format!("http://h/api/v1/enduser/dialogs/{}", d.id)
        );
        assert_eq!(
            json["subject"],
            "urn:altinn:organization:identifier-no:991825827"
        );
        assert_eq!(json["resourceinstance"], d.id.to_string());
        assert_eq!(json["dialogsequence"], 1);
        assert!(json.get("data").is_none());
        assert!(json.get("datacontenttype").is_none());
        let back: CloudEvent = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, ev);
    }
}
