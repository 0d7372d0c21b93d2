//! A dialog commit and a published event, serialized by the caller and applied by the writer
//! thread: the sequence check, the dialog's logs, and the poll log or the hold-back queue.

use std::borrow::Cow;

use super::*;

/// An event ready for the writer: its JSON made by the caller, off the writer thread.
pub(super) struct PreparedEvent {
    pub(super) sequence: u64,
    pub(super) id: String,
    pub(super) resource: String,
    pub(super) json: Vec<u8>,
}

impl PreparedEvent {
    pub(super) fn of(event: &CloudEvent) -> Result<Self, StoreError> {
        Ok(PreparedEvent {
            sequence: event.dialogsequence.unwrap_or(0),
            id: event.id.clone(),
            resource: event.resource.clone().unwrap_or_default(),
            json: to_json(event)?,
        })
    }
}

/// A dialog's state as a commit writes it: its JSON without activities and transmissions, and the
/// children it adds (each list is append-only, so those before `base` are stored already).
#[derive(Clone)]
pub(super) struct PreparedState {
    pub(super) header: Vec<u8>,
    /// The stored dialog's (activities, transmissions) counts the new children follow.
    pub(super) base: (u32, u32),
    pub(super) activities: Vec<Vec<u8>>,
    pub(super) transmissions: Vec<Vec<u8>>,
    /// The stored children are removed first and these replace them (`base` is (0, 0)).
    pub(super) replace: bool,
}

impl PreparedState {
    /// `dialog` after a change made from a state with `before` (activities, transmissions).
    pub(super) fn of(dialog: &Dialog, before: (usize, usize)) -> Result<Self, StoreError> {
        let (activities, transmissions) = (&dialog.activities, &dialog.transmissions);
        // Lists that shrank were not appended to: write them whole.
        let replace = activities.len() < before.0 || transmissions.len() < before.1;
        let (a, t) = if replace { (0, 0) } else { before };
        Ok(PreparedState {
            header: to_json(&dialog.without_children())?,
            base: (a as u32, t as u32),
            activities: activities[a..]
                .iter()
                .map(to_json)
                .collect::<Result<_, _>>()?,
            transmissions: transmissions[t..]
                .iter()
                .map(to_json)
                .collect::<Result<_, _>>()?,
            replace,
        })
    }

    /// A whole dialog's JSON (format 1, and its commit log records), split to replace what is
    /// stored.
    pub(super) fn whole(json: &[u8]) -> Result<Self, StoreError> {
        let mut state = Self::of(&from_json(json)?, (0, 0))?;
        state.replace = true;
        Ok(state)
    }

    /// The counts and header to store once this is applied.
    pub(super) fn stored(&self) -> (u32, u32, &[u8]) {
        (
            self.base.0 + self.activities.len() as u32,
            self.base.1 + self.transmissions.len() as u32,
            &self.header,
        )
    }

    /// Writes the new children of dialog `id` (first removing the stored ones with `replace`).
    pub(super) fn write_children(
        &self,
        id: Uuid,
        children: &mut redb::Table<'_, Bytes, Bytes>,
    ) -> Result<(), StoreError> {
        if self.replace {
            let (lo, hi) = children_of(id);
            children
                .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)
                .map_err(unavailable)?;
        }
        for (kind, base, rows) in [
            (ACTIVITY, self.base.0, &self.activities),
            (TRANSMISSION, self.base.1, &self.transmissions),
        ] {
            for (i, json) in rows.iter().enumerate() {
                children
                    .insert(
                        child_key(id, kind, base + i as u32).as_slice(),
                        json.as_slice(),
                    )
                    .map_err(unavailable)?;
            }
        }
        Ok(())
    }
}

/// What a commit does to the dialog's state.
pub(super) enum StateWrite {
    /// Purged: the state and its children go, the id and sequence stay.
    Purge,
    /// A whole dialog's JSON, as format 1 logged it: replaces the stored state and children.
    Whole(Vec<u8>),
    /// The state without children, and the children the change adds.
    Split(PreparedState),
}

/// A dialog commit with everything serialized, so the writer thread only checks and copies.
pub(super) struct PreparedCommit {
    pub(super) id: Uuid,
    pub(super) create: bool,
    pub(super) expected_sequence: u64,
    pub(super) state: StateWrite,
    pub(super) events: Vec<PreparedEvent>,
    /// The change's last sequence and JSON.
    pub(super) change: Option<(u64, Vec<u8>)>,
    pub(super) publish: bool,
    pub(super) hold_until_ms: Option<i64>,
}

/// What a commit's checks read of its dialog: the sequence and, while the dialog lives, its
/// (activities, transmissions) counts.
pub(super) type DialogMark = (u64, Option<(u32, u32)>);

/// The mark of a stored `dialogs` value.
pub(super) fn mark_of(value: &[u8]) -> DialogMark {
    (dialog_sequence(value), dialog_counts(value))
}

impl PreparedCommit {
    /// The commit's state write, split (`None` for a purge); a whole state (format 1's records)
    /// is split here.
    pub(super) fn split_state(&self) -> Result<Option<Cow<'_, PreparedState>>, StoreError> {
        Ok(match &self.state {
            StateWrite::Purge => None,
            StateWrite::Whole(json) => Some(Cow::Owned(PreparedState::whole(json)?)),
            StateWrite::Split(s) => Some(Cow::Borrowed(s)),
        })
    }

    /// Checks the commit against its dialog's mark (`None`: no such dialog) with `state` (its
    /// state write, split): `AlreadyExists` or `Conflict` when it does not apply. Returns the
    /// dialog's mark after it.
    pub(super) fn check(
        &self,
        state: Option<&PreparedState>,
        current: Option<DialogMark>,
    ) -> Result<DialogMark, StoreError> {
        let stored = match (self.create, current) {
            (true, Some(_)) => return Err(StoreError::AlreadyExists),
            (false, None) | (false, Some((_, None))) => return Err(StoreError::Conflict),
            (false, Some((sequence, Some(counts)))) => {
                if sequence != self.expected_sequence {
                    return Err(StoreError::Conflict);
                }
                counts
            }
            (true, None) => (0, 0),
        };
        // The children follow what is stored (the sequence matched, so they do unless the
        // state was built from something else).
        if let Some(s) = state
            && !s.replace
            && s.base != stored
        {
            return Err(StoreError::Conflict);
        }
        let sequence = self.expected_sequence + self.events.len() as u64;
        Ok((sequence, state.map(|s| (s.stored().0, s.stored().1))))
    }

    pub(super) fn of(commit: Commit, now: DateTime<Utc>) -> Result<Self, StoreError> {
        let change = Change::of(
            &commit.events,
            commit.state.as_ref().map(|d| d.revision),
            now,
        )
        .map(|c| to_json(&c).map(|j| (c.last, j)))
        .transpose()?;
        let events = commit
            .events
            .iter()
            .map(|e| PreparedEvent::of(e))
            .collect::<Result<_, _>>()?;
        Ok(PreparedCommit {
            id: commit.dialog_id,
            create: commit.create,
            expected_sequence: commit.expected_sequence,
            state: match &commit.state {
                Some(d) => StateWrite::Split(PreparedState::of(d, commit.children_before)?),
                None => StateWrite::Purge,
            },
            events,
            change,
            publish: commit.publish,
            hold_until_ms: commit.hold_until.map(|t| t.timestamp_millis()),
        })
    }
}

/// The tables a dialog commit, a published event or a saved cursor writes, opened once for a run
/// of such writes in one transaction (opening a table costs a lookup, closing it an update of the
/// table directory, so a batch opens each once rather than once per write).
pub(super) struct LogTables<'t> {
    dialogs: redb::Table<'t, u128, Bytes>,
    children: redb::Table<'t, Bytes, Bytes>,
    dlog: redb::Table<'t, Bytes, Bytes>,
    dch: redb::Table<'t, Bytes, Bytes>,
    held: redb::Table<'t, Bytes, Bytes>,
    held_until: redb::Table<'t, u128, i64>,
    meta: redb::Table<'t, &'static str, u64>,
    glog: redb::Table<'t, u64, Bytes>,
    by_resource: redb::Table<'t, Bytes, ()>,
    ev_index: redb::Table<'t, Bytes, u64>,
    pub(super) cursors: redb::Table<'t, &'static str, u64>,
    /// The last position given out in the global log and not saved yet (read on the first
    /// append, saved by `finish`).
    position: Option<u64>,
}

impl<'t> LogTables<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> Result<Self, StoreError> {
        Ok(LogTables {
            dialogs: txn.open_table(DIALOGS).map_err(unavailable)?,
            children: txn.open_table(CHILDREN).map_err(unavailable)?,
            dlog: txn.open_table(DLOG).map_err(unavailable)?,
            dch: txn.open_table(DCH).map_err(unavailable)?,
            held: txn.open_table(HELD).map_err(unavailable)?,
            held_until: txn.open_table(HELD_UNTIL).map_err(unavailable)?,
            meta: txn.open_table(META).map_err(unavailable)?,
            glog: txn.open_table(GLOG).map_err(unavailable)?,
            by_resource: txn.open_table(BY_RESOURCE).map_err(unavailable)?,
            ev_index: txn.open_table(EV_INDEX).map_err(unavailable)?,
            cursors: txn.open_table(CURSORS).map_err(unavailable)?,
            position: None,
        })
    }

    /// Saves the last position given out (once for a run of appends, not once per event) and
    /// closes the tables. Must be called before the transaction commits; an error means the
    /// transaction must not commit.
    pub(super) fn finish(mut self) -> Result<(), StoreError> {
        self.save_position()
    }

    fn save_position(&mut self) -> Result<(), StoreError> {
        if let Some(position) = self.position.take() {
            self.meta
                .insert("next_position", position)
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// Appends an event to the global log and its resource's log.
    pub(super) fn append(
        &mut self,
        resource: &str,
        id: &str,
        json: &[u8],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let last = match self.position {
            Some(p) => p,
            None => self
                .meta
                .get("next_position")
                .map_err(unavailable)?
                .map(|v| v.value())
                .unwrap_or(0),
        };
        let position = last + 1;
        self.position = Some(position);
        self.glog
            .insert(position, entry_value(now_ms, resource, json).as_slice())
            .map_err(unavailable)?;
        self.by_resource
            .insert(str_num_key(resource, position).as_slice(), ())
            .map_err(unavailable)?;
        // Within one resource an id may repeat across sources; a cursor names the latest, so paging
        // always advances.
        self.ev_index
            .insert(str_key(&[resource, id]).as_slice(), position)
            .map_err(unavailable)?;
        Ok(())
    }

    /// Applies a dialog commit: checks its expected sequence (`Conflict`, `AlreadyExists`, with
    /// nothing written), then writes the dialog, its logs, and the poll log or the hold-back queue.
    pub(super) fn apply_commit(
        &mut self,
        c: &PreparedCommit,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let key = c.id.as_u128();
        let current = self
            .dialogs
            .get(key)
            .map_err(unavailable)?
            .map(|v| mark_of(v.value()));
        let split = c.split_state()?;
        let state = split.as_deref();
        let (new_sequence, _) = c.check(state, current)?;
        // Checked: from here on every failure is a storage failure, which drops the whole batch.
        match state {
            Some(s) => {
                s.write_children(c.id, &mut self.children)?;
                self.dialogs
                    .insert(key, dialog_value(new_sequence, Some(s.stored())).as_slice())
                    .map_err(unavailable)?;
            }
            None => {
                let (lo, hi) = children_of(c.id);
                self.children
                    .retain_in(lo.as_slice()..=hi.as_slice(), |_, _| false)
                    .map_err(unavailable)?;
                self.dialogs
                    .insert(key, dialog_value(new_sequence, None).as_slice())
                    .map_err(unavailable)?;
            }
        }
        for e in &c.events {
            self.dlog
                .insert(id_key(c.id, e.sequence).as_slice(), e.json.as_slice())
                .map_err(unavailable)?;
        }
        let keep_from = new_sequence.saturating_sub(DIALOG_LOG_KEEP) + 1;
        if keep_from > 1 {
            let (lo, hi) = (id_key(c.id, 0), id_key(c.id, keep_from));
            self.dlog
                .retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)
                .map_err(unavailable)?;
        }
        if let Some((last, json)) = &c.change {
            self.dch
                .insert(id_key(c.id, *last).as_slice(), json.as_slice())
                .map_err(unavailable)?;
            if keep_from > 1 {
                let (lo, hi) = (id_key(c.id, 0), id_key(c.id, keep_from));
                self.dch
                    .retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)
                    .map_err(unavailable)?;
            }
        }
        if !c.publish || c.events.is_empty() {
            return Ok(());
        }
        let pending = self
            .held_until
            .get(key)
            .map_err(unavailable)?
            .map(|v| v.value())
            .filter(|t| *t > now_ms);
        let requested = c.hold_until_ms.filter(|t| *t > now_ms);
        let hold = match (requested, pending) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        match hold {
            Some(release_ms) => {
                self.held_until
                    .insert(key, release_ms)
                    .map_err(unavailable)?;
                let n = self
                    .meta
                    .get("held_counter")
                    .map_err(unavailable)?
                    .map(|v| v.value())
                    .unwrap_or(0)
                    + 1;
                self.meta.insert("held_counter", n).map_err(unavailable)?;
                // The held batch: its events as a JSON array.
                let mut batch = b"[".to_vec();
                for (i, e) in c.events.iter().enumerate() {
                    if i > 0 {
                        batch.push(b',');
                    }
                    batch.extend_from_slice(&e.json);
                }
                batch.push(b']');
                self.held
                    .insert(held_key(release_ms, n).as_slice(), batch.as_slice())
                    .map_err(unavailable)?;
            }
            None => {
                for e in &c.events {
                    self.append(&e.resource, &e.id, &e.json, now_ms)?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for LogTables<'_> {
    fn drop(&mut self) {
        // A path that closes the tables without `finish` (an error on the way, which drops the
        // transaction) still records the positions it gave out.
        if let Err(e) = self.save_position() {
            tracing::error!(error = %e, "the log position could not be saved");
        }
    }
}
