//! `RedisStore`: dialogs and their own event and change logs.

use super::*;
use crate::store::DialogStore;

#[async_trait]
impl DialogStore for RedisStore {
    async fn load_dialog(&self, id: Uuid) -> Result<Option<Dialog>, StoreError> {
        let mut pipe = redis::pipe();
        self.read_dialog(&mut pipe, id);
        let (state, activities, transmissions): (Option<String>, Vec<String>, Vec<String>) = self
            .with(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        assemble(state, activities, transmissions)
    }

    fn announces(&self) -> bool {
        true
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let id = commit.dialog_id;
        let described = commit.state.as_ref();
        let (resource, party) = match (described, commit.events.first()) {
            (Some(d), _) => (d.service_resource.to_string(), d.party.urn()),
            (None, Some(e)) => (
                e.resource.clone().unwrap_or_default(),
                e.subject.clone().unwrap_or_default(),
            ),
            (None, None) => (String::new(), String::new()),
        };
        let mut children = Children::of(commit.state.as_deref(), commit.children_before)?;
        // Everything the commit touches lives in its dialog's partition (one slot on a cluster).
        let n = self.dialog_partition(id);
        let new_seq = commit.expected_sequence + commit.events.len() as u64;
        let change = Change::of(
            &commit.events,
            commit.state.as_ref().map(|d| d.revision),
            Utc::now(),
        )
        .map(|c| serde_json::to_string(&c))
        .transpose()
        .map_err(unavailable)?
        .unwrap_or_default();
        let events = commit
            .events
            .iter()
            .map(|e| {
                let json = serde_json::to_string(e.as_ref()).map_err(unavailable)?;
                let (bucket, expiry) = self
                    .position_bucket(n, &resource, &e.id)
                    .map_or((String::new(), 0), |(key, b)| {
                        (key, self.bucket_expiry_ms(b))
                    });
                Ok((json, self.event_key(n, &resource, &e.id), bucket, expiry))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Every event of a dialog belongs to the dialog's lanes, so to one partition.
        let feed = self.feed_key(n);
        loop {
            let mut inv = self.commit.prepare_invoke();
            let state_key = self.dialog_key(n, id, "d");
            for k in [
                state_key.clone(),
                self.dialog_key(n, id, "dlog"),
                self.dialog_key(n, id, "dch"),
                self.part_key(n, "idx"),
                self.part_key(n, &format!("idx:r:{resource}")),
                self.part_key(n, &format!("idx:p:{party}")),
                self.part_key(n, &format!("log:{resource}")),
                self.part_key(n, "held"),
                self.part_key(n, "heldc"),
                self.dialog_key(n, id, "da"),
                self.dialog_key(n, id, "dt"),
            ] {
                inv.key(k);
            }
            // On one Redis the script checks the registry version the change was authorized
            // under; a cluster keeps it in another slot (its writes read the version first).
            let policy_version = commit.policy_version.filter(|_| !self.cluster);
            if policy_version.is_some() {
                inv.key(self.tagged("policy", "policy:ver"));
            }
            let hold_ms = commit.hold_until.map_or(0, |t| t.timestamp_millis().max(0));
            inv.arg(commit.expected_sequence)
                .arg(if commit.create { "1" } else { "0" })
                .arg(&children.header)
                .arg(new_seq)
                .arg(if commit.publish { "1" } else { "0" })
                .arg(hold_ms)
                .arg(&change)
                .arg(DIALOG_LOG_KEEP)
                .arg(self.retention_ms())
                .arg(id.to_string())
                .arg(&resource)
                .arg(&party)
                .arg(&feed)
                .arg(events.len())
                .arg(if children.replace { "1" } else { "0" })
                .arg(children.base.0)
                .arg(children.base.1)
                .arg(children.activities.len())
                .arg(children.transmissions.len());
            for (json, key, bucket, expiry) in &events {
                inv.arg(json).arg(key).arg(bucket).arg(expiry);
            }
            for json in children.activities.iter().chain(&children.transmissions) {
                inv.arg(json);
            }
            // With replicas to wait for, the change is announced only once they acknowledged it:
            // a change lost with its master must never have reached a subscriber.
            let announce = commit.announce.as_ref().filter(|_| self.wait_replicas == 0);
            match policy_version {
                Some(v) => inv.arg(v),
                None => inv.arg(""),
            };
            match announce {
                Some((channel, message)) => inv
                    .arg(self.publish_command())
                    .arg(channel)
                    .arg(message.as_slice()),
                None => inv.arg("").arg("").arg(""),
            };
            let result: String = self.invoke_replicated(&inv, &state_key).await?;
            return match result.as_str() {
                "OK" => {
                    if let Some((channel, message)) =
                        commit.announce.as_ref().filter(|_| announce.is_none())
                    {
                        self.announce(channel, message).await;
                    }
                    Ok(())
                }
                "EXISTS" => Err(StoreError::AlreadyExists),
                "POLICY" => Err(StoreError::PolicyMoved),
                // Stored whole by an older version: write the lists in full this once.
                "WHOLE" if !children.replace => {
                    children = Children::whole(commit.state.as_deref())?;
                    continue;
                }
                _ => Err(StoreError::Conflict),
            };
        }
    }

    async fn list_dialogs(&self, query: &DialogQuery) -> Result<Vec<Dialog>, StoreError> {
        let index = match (&query.resources, &query.parties) {
            (_, Some(p)) if p.len() == 1 => format!("idx:p:{}", p[0]),
            (Some(r), _) if r.len() == 1 => format!("idx:r:{}", r[0]),
            _ => "idx".to_owned(),
        };
        // One index per partition on a cluster: each is read in id order and the pages merged.
        let indexes: Vec<String> = self
            .read_partitions()
            .map(|n| self.part_key(n, &index))
            .collect();
        let mut out = Vec::new();
        let mut cursor = query
            .after
            .map(|a| format!("({a}"))
            .unwrap_or_else(|| "-".to_owned());
        loop {
            let mut pipe = redis::pipe();
            for idx in &indexes {
                pipe.cmd("ZRANGEBYLEX")
                    .arg(idx)
                    .arg(&cursor)
                    .arg("+")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(LIST_BATCH);
            }
            let pages: Vec<Vec<String>> = self.query_spread(pipe).await?;
            // The first LIST_BATCH ids of the union are exact: each index gave its first
            // LIST_BATCH after the cursor.
            let more = pages.iter().any(|p| p.len() == LIST_BATCH);
            let mut ids: Vec<String> = pages.into_iter().flatten().collect();
            ids.sort_unstable();
            ids.truncate(LIST_BATCH);
            if ids.is_empty() {
                return Ok(out);
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                let Ok(id) = Uuid::parse_str(id) else {
                    continue;
                };
                self.read_dialog(&mut pipe, id);
            }
            let rows: Vec<redis::Value> = self.query_spread(pipe).await?;
            let mut rows = rows.into_iter();
            while let (Some(state), Some(activities), Some(transmissions)) =
                (rows.next(), rows.next(), rows.next())
            {
                let Some(d) = assemble(
                    redis::from_redis_value(state).map_err(unavailable)?,
                    redis::from_redis_value(activities).map_err(unavailable)?,
                    redis::from_redis_value(transmissions).map_err(unavailable)?,
                )?
                else {
                    continue;
                };
                if query.admits(&d) {
                    out.push(d);
                    if out.len() == query.limit {
                        return Ok(out);
                    }
                }
            }
            if !more && ids.len() < LIST_BATCH {
                return Ok(out);
            }
            cursor = format!("({}", ids.last().map(String::as_str).unwrap_or(""));
        }
    }

    async fn dialog_events(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<CloudEvent>>, StoreError> {
        let key = self.dialog_key(self.dialog_partition(id), id, "dlog");
        let raw: Vec<String> = self
            .with(|mut c| async move { c.lrange(&key, 0, -1).await })
            .await?;
        let mut out = Vec::new();
        for r in raw {
            let e: CloudEvent = serde_json::from_str(&r).map_err(unavailable)?;
            if e.dialogsequence.unwrap_or(0) > after {
                out.push(Arc::new(e));
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn dialog_changes(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Arc<Change>>, StoreError> {
        let key = self.dialog_key(self.dialog_partition(id), id, "dch");
        // Readers want the tail (a gap of a few changes, a short resume): read backwards in growing
        // windows instead of the whole list.
        let mut window = TAIL_WINDOW;
        loop {
            let k = key.clone();
            let start = -(window as isize);
            let raw: Vec<String> = self
                .with(|mut c| async move { c.lrange(&k, start, -1).await })
                .await?;
            let mut changes = Vec::with_capacity(raw.len());
            for r in &raw {
                changes.push(serde_json::from_str::<Change>(r).map_err(unavailable)?);
            }
            let reaches_back = changes.first().is_none_or(|c| c.last <= after);
            if reaches_back || raw.len() < window || window >= DIALOG_LOG_KEEP {
                let newer: Vec<Arc<Change>> = changes
                    .into_iter()
                    .filter(|c| c.last > after)
                    .map(Arc::new)
                    .collect();
                let skip = newer.len().saturating_sub(limit);
                return Ok(newer.into_iter().skip(skip).collect());
            }
            window = (window * 4).min(DIALOG_LOG_KEEP);
        }
    }
}

/// A commit's dialog as the script takes it: the state without its lists, and the children the
/// change adds (or all of them, with `replace`).
struct Children {
    header: String,
    base: (usize, usize),
    activities: Vec<String>,
    transmissions: Vec<String>,
    replace: bool,
}

impl Children {
    /// All of `state`'s children, replacing the stored lists.
    fn whole(state: Option<&Dialog>) -> Result<Children, StoreError> {
        let mut all = Self::of(state, (0, 0))?;
        all.replace = true;
        Ok(all)
    }

    /// The new children of `state`, changed from one with `before` (activities, transmissions);
    /// counts it cannot follow (a list that shrank) write the lists whole.
    fn of(state: Option<&Dialog>, before: (usize, usize)) -> Result<Children, StoreError> {
        let Some(d) = state else {
            return Ok(Children {
                header: String::new(),
                base: (0, 0),
                activities: Vec::new(),
                transmissions: Vec::new(),
                replace: false,
            });
        };
        let replace = d.activities.len() < before.0 || d.transmissions.len() < before.1;
        let (a, t) = if replace { (0, 0) } else { before };
        Ok(Children {
            header: serde_json::to_string(&d.without_children()).map_err(unavailable)?,
            base: (a, t),
            activities: to_strings(&d.activities[a..])?,
            transmissions: to_strings(&d.transmissions[t..])?,
            replace,
        })
    }
}

fn to_strings<T: serde::Serialize>(items: &[T]) -> Result<Vec<String>, StoreError> {
    items
        .iter()
        .map(|x| serde_json::to_string(x).map_err(unavailable))
        .collect()
}

/// A dialog from its `state` and its lists (empty for one stored whole).
fn assemble(
    state: Option<String>,
    activities: Vec<String>,
    transmissions: Vec<String>,
) -> Result<Option<Dialog>, StoreError> {
    let Some(state) = state.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let mut d: Dialog = serde_json::from_str(&state).map_err(unavailable)?;
    for a in &activities {
        d.activities
            .push(serde_json::from_str(a).map_err(unavailable)?);
    }
    for t in &transmissions {
        d.transmissions
            .push(serde_json::from_str(t).map_err(unavailable)?);
    }
    Ok(Some(d))
}

impl RedisStore {
    /// Publishes a committed change to the other nodes; a failure only costs them a repair from
    /// the log at the dialog's next change.
    async fn announce(&self, channel: &str, message: &[u8]) {
        let mut publish = redis::cmd(self.publish_command());
        publish.arg(channel).arg(message);
        let sent = self
            .with(|mut c| async move { publish.query_async::<i64>(&mut c).await })
            .await;
        if let Err(e) = sent {
            tracing::warn!(error = %e, "a committed change could not be announced");
        }
    }

    /// Queues the three reads of a dialog (`assemble` takes their answers).
    fn read_dialog(&self, pipe: &mut redis::Pipeline, id: Uuid) {
        let n = self.dialog_partition(id);
        pipe.hget(self.dialog_key(n, id, "d"), "state")
            .lrange(self.dialog_key(n, id, "da"), 0, -1)
            .lrange(self.dialog_key(n, id, "dt"), 0, -1);
    }
}
