//! The authorization policy of a dialog's main service resource, over the resource registry and the
//! delegation list: who may write, read and receive events of which resource.

use std::collections::HashMap;

use super::{DelegationEntry, Party, ResourceEntry, ResourceUrn};

/// Who reads which dialog, as a dialog token says: what a live stream keeps being checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadGrant {
    pub reader: Party,
    pub dialog_party: Party,
    pub resource: ResourceUrn,
}

/// An immutable snapshot of the registry; replaced whole when an admin changes it.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    resources: HashMap<ResourceUrn, ResourceEntry>,
    delegations: Vec<DelegationEntry>,
    /// The store's count of registry changes this snapshot was read at, where the store keeps one.
    version: Option<u64>,
}

/// Two snapshots are equal when they say the same, whatever versions they were read at.
impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.resources == other.resources && self.delegations == other.delegations
    }
}

impl Policy {
    pub fn new(resources: Vec<ResourceEntry>, delegations: Vec<DelegationEntry>) -> Self {
        let resources = resources.into_iter().map(|r| (r.id.clone(), r)).collect();
        Policy {
            resources,
            delegations,
            version: None,
        }
    }

    /// The snapshot as read at the store's registry version `version`.
    pub fn at_version(mut self, version: u64) -> Self {
        self.version = Some(version);
        self
    }

    /// The store's registry version this snapshot was read at (None: the store keeps none, its
    /// policy is always current).
    pub fn version(&self) -> Option<u64> {
        self.version
    }

    pub fn resources(&self) -> impl Iterator<Item = &ResourceEntry> {
        self.resources.values()
    }

    pub fn delegations(&self) -> &[DelegationEntry] {
        &self.delegations
    }

    pub fn resource(&self, id: &ResourceUrn) -> Option<&ResourceEntry> {
        self.resources.get(id)
    }

    /// A service owner may write, read and receive everything of the resources it owns.
    pub fn owns(&self, party: &Party, resource: &ResourceUrn) -> bool {
        self.resources
            .get(resource)
            .is_some_and(|r| &r.owner == party)
    }

    /// Whether `to` may act for `from` on `resource`.
    pub fn is_delegated(&self, from: &Party, to: &Party, resource: &ResourceUrn) -> bool {
        self.delegations
            .iter()
            .any(|d| &d.from == from && &d.to == to && d.resources.contains(resource))
    }

    /// An end user may read a dialog of its own party or of a party delegated to it for the resource.
    pub fn may_read_as_end_user(
        &self,
        user: &Party,
        dialog_party: &Party,
        resource: &ResourceUrn,
    ) -> bool {
        user == dialog_party || self.is_delegated(dialog_party, user, resource)
    }

    /// Whether `grant` still holds: the reader owns the dialog's resource, is the dialog's party,
    /// or the party delegated the resource to it. Live streams whose grant no longer holds end.
    pub fn grants(&self, grant: &ReadGrant) -> bool {
        self.owns(&grant.reader, &grant.resource)
            || self.may_read_as_end_user(&grant.reader, &grant.dialog_party, &grant.resource)
    }

    /// A subscriber may receive an event of `resource` about `subject` when it owns the resource, is
    /// a listed subscriber, or the subject is its own party or delegated to it for the resource.
    pub fn may_receive(
        &self,
        subscriber: &Party,
        resource: &ResourceUrn,
        subject: Option<&str>,
    ) -> bool {
        let Some(entry) = self.resources.get(resource) else {
            return false;
        };
        if &entry.owner == subscriber || entry.subscribers.contains(subscriber) {
            return true;
        }
        match subject.and_then(|s| Party::parse(s).ok()) {
            Some(subject) => {
                &subject == subscriber || self.is_delegated(&subject, subscriber, resource)
            }
            None => false,
        }
    }

    /// `may_receive` for a whole event: its `resource` (an event of no known resource reaches
    /// nobody) and its `subject`.
    pub fn may_receive_event(&self, subscriber: &Party, event: &super::CloudEvent) -> bool {
        event
            .resource
            .as_deref()
            .and_then(|r| ResourceUrn::parse(r).ok())
            .is_some_and(|r| self.may_receive(subscriber, &r, event.subject.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(n: &str) -> Party {
        Party::organization(n).expect("org")
    }
    fn person(n: &str) -> Party {
        Party::person(n).expect("person")
    }
    fn res(id: &str) -> ResourceUrn {
        ResourceUrn::parse(&format!("urn:altinn:resource:{id}")).expect("res")
    }

    fn policy() -> Policy {
        Policy::new(
            vec![ResourceEntry {
                id: res("a"),
                owner: org("991825827"),
                subscribers: vec![org("912345678")],
            }],
            vec![DelegationEntry {
                from: person("08895699684"),
                to: person("12345678901"),
                resources: vec![res("a")],
            }],
        )
    }

    #[test]
    fn owner_owns_only_its_resources() {
        let p = policy();
        assert!(p.owns(&org("991825827"), &res("a")));
        assert!(!p.owns(&org("912345678"), &res("a")));
        assert!(!p.owns(&org("991825827"), &res("b")));
    }

    #[test]
    fn end_user_reads_own_and_delegated_dialogs_only() {
        let p = policy();
        let owner = person("08895699684");
        assert!(p.may_read_as_end_user(&owner, &owner, &res("a")));
        assert!(p.may_read_as_end_user(&person("12345678901"), &owner, &res("a")));
        assert!(!p.may_read_as_end_user(&person("12345678901"), &owner, &res("b")));
        assert!(!p.may_read_as_end_user(&person("11111111111"), &owner, &res("a")));
    }

    #[test]
    fn receivers_are_owner_listed_subscribers_subject_and_delegates() {
        let p = policy();
        let subject = Some("urn:altinn:person:identifier-no:08895699684");
        assert!(p.may_receive(&org("991825827"), &res("a"), subject));
        assert!(p.may_receive(&org("912345678"), &res("a"), subject));
        assert!(p.may_receive(&person("08895699684"), &res("a"), subject));
        assert!(p.may_receive(&person("12345678901"), &res("a"), subject));
        assert!(!p.may_receive(&person("11111111111"), &res("a"), subject));
        assert!(!p.may_receive(&org("991825827"), &res("unknown"), subject));
    }

    #[test]
    fn an_event_reaches_those_who_may_receive_its_resource_and_subject() {
        let p = policy();
        let event = |resource: Option<&str>| crate::domain::CloudEvent {
            specversion: "1.0".into(),
            id: "e1".into(),
            kind: "dialogporten.dialog.updated.v1".into(),
            time: "2026-12-02T10:00:00Z".into(),
            source: "https://example.test/dialogs/1".into(),
            subject: Some("urn:altinn:person:identifier-no:08895699684".into()),
            resource: resource.map(str::to_owned),
            resourceinstance: None,
            dialogsequence: None,
            datacontenttype: None,
            data: None,
            extensions: Default::default(),
        };
        let of_a = event(Some("urn:altinn:resource:a"));
        assert!(p.may_receive_event(&org("912345678"), &of_a));
        assert!(p.may_receive_event(&person("12345678901"), &of_a));
        assert!(!p.may_receive_event(&person("11111111111"), &of_a));
        assert!(!p.may_receive_event(&org("991825827"), &event(None)));
        assert!(!p.may_receive_event(&org("991825827"), &event(Some("not a resource urn"))));
    }
}
