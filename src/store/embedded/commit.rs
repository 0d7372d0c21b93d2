//! A dialog commit and a published event, serialized by the caller and applied by the writer
//! thread: the sequence check, the dialog's logs, and the poll log or the hold-back queue.

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

/// A dialog commit with everything serialized, so the writer thread only checks and copies.
pub(super) struct PreparedCommit {
    pub(super) id: Uuid,
    pub(super) create: bool,
    pub(super) expected_sequence: u64,
    /// The dialog's JSON after the change; empty after a purge.
    pub(super) state: Vec<u8>,
    pub(super) events: Vec<PreparedEvent>,
    /// The change's last sequence and JSON.
    pub(super) change: Option<(u64, Vec<u8>)>,
    pub(super) publish: bool,
    pub(super) hold_until_ms: Option<i64>,
}

impl PreparedCommit {
    pub(super) fn of(commit: &Commit, now: DateTime<Utc>) -> Result<Self, StoreError> {
        let change = Change::of(
            &commit.events,
            commit.state.as_ref().map(|d| d.revision),
            now,
        )
        .map(|c| to_json(&c).map(|j| (c.last, j)))
        .transpose()?;
        Ok(PreparedCommit {
            id: commit.dialog_id,
            create: commit.create,
            expected_sequence: commit.expected_sequence,
            state: match &commit.state {
                Some(d) => to_json(d)?,
                None => Vec::new(),
            },
            events: commit
                .events
                .iter()
                .map(|e| PreparedEvent::of(e))
                .collect::<Result<_, _>>()?,
            change,
            publish: commit.publish,
            hold_until_ms: commit.hold_until.map(|t| t.timestamp_millis()),
        })
    }
}

/// Appends an event to the global log and its resource's log, inside `txn`.
pub(super) fn append(
    txn: &WriteTransaction,
    resource: &str,
    id: &str,
    json: &[u8],
    now_ms: i64,
) -> Result<(), StoreError> {
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    let position = meta
        .get("next_position")
        .map_err(unavailable)?
        .map(|v| v.value())
        .unwrap_or(0)
        + 1;
    meta.insert("next_position", position)
        .map_err(unavailable)?;
    txn.open_table(GLOG)
        .map_err(unavailable)?
        .insert(position, entry_value(now_ms, resource, json).as_slice())
        .map_err(unavailable)?;
    txn.open_table(BY_RESOURCE)
        .map_err(unavailable)?
        .insert(str_num_key(resource, position).as_slice(), ())
        .map_err(unavailable)?;
    // Within one resource an id may repeat across sources; a cursor names the latest, so paging
    // always advances.
    txn.open_table(EV_INDEX)
        .map_err(unavailable)?
        .insert(str_key(&[resource, id]).as_slice(), position)
        .map_err(unavailable)?;
    Ok(())
}

pub(super) fn apply_commit(
    txn: &WriteTransaction,
    c: &PreparedCommit,
    now_ms: i64,
) -> Result<(), StoreError> {
    let key = c.id.as_u128();
    let mut dialogs = txn.open_table(DIALOGS).map_err(unavailable)?;
    let current = dialogs
        .get(key)
        .map_err(unavailable)?
        .map(|v| (dialog_sequence(v.value()), v.value().len() > 8));
    match (c.create, current) {
        (true, Some(_)) => return Err(StoreError::AlreadyExists),
        (false, None) => return Err(StoreError::Conflict),
        (false, Some((sequence, live))) if sequence != c.expected_sequence || !live => {
            return Err(StoreError::Conflict);
        }
        _ => {}
    }
    // Checked: from here on every failure is a storage failure, which drops the whole batch.
    let new_sequence = c.expected_sequence + c.events.len() as u64;
    dialogs
        .insert(key, dialog_value(new_sequence, &c.state).as_slice())
        .map_err(unavailable)?;
    drop(dialogs);
    let mut dlog = txn.open_table(DLOG).map_err(unavailable)?;
    for e in &c.events {
        dlog.insert(id_key(c.id, e.sequence).as_slice(), e.json.as_slice())
            .map_err(unavailable)?;
    }
    let keep_from = new_sequence.saturating_sub(DIALOG_LOG_KEEP) + 1;
    if keep_from > 1 {
        let (lo, hi) = (id_key(c.id, 0), id_key(c.id, keep_from));
        dlog.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)
            .map_err(unavailable)?;
    }
    drop(dlog);
    if let Some((last, json)) = &c.change {
        let mut dch = txn.open_table(DCH).map_err(unavailable)?;
        dch.insert(id_key(c.id, *last).as_slice(), json.as_slice())
            .map_err(unavailable)?;
        if keep_from > 1 {
            let (lo, hi) = (id_key(c.id, 0), id_key(c.id, keep_from));
            dch.retain_in(lo.as_slice()..hi.as_slice(), |_, _| false)
                .map_err(unavailable)?;
        }
    }
    if !c.publish || c.events.is_empty() {
        return Ok(());
    }
    let mut held_until = txn.open_table(HELD_UNTIL).map_err(unavailable)?;
    let pending = held_until
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
            held_until.insert(key, release_ms).map_err(unavailable)?;
            drop(held_until);
            let mut meta = txn.open_table(META).map_err(unavailable)?;
            let n = meta
                .get("held_counter")
                .map_err(unavailable)?
                .map(|v| v.value())
                .unwrap_or(0)
                + 1;
            meta.insert("held_counter", n).map_err(unavailable)?;
            drop(meta);
            // The held batch: its events as a JSON array.
            let mut batch = b"[".to_vec();
            for (i, e) in c.events.iter().enumerate() {
                if i > 0 {
                    batch.push(b',');
                }
                batch.extend_from_slice(&e.json);
            }
            batch.push(b']');
            txn.open_table(HELD)
                .map_err(unavailable)?
                .insert(held_key(release_ms, n).as_slice(), batch.as_slice())
                .map_err(unavailable)?;
        }
        None => {
            drop(held_until);
            for e in &c.events {
                append(txn, &e.resource, &e.id, &e.json, now_ms)?;
            }
        }
    }
    Ok(())
}
