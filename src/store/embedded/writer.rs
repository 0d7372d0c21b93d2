//! The writer thread: every write of the embedded store, applied in batches that share one
//! transaction and one fsync (group commit).

use super::wal::{CHECKPOINT_BYTES, Logged, Wal};
use super::*;

/// A write for the writer thread.
pub(super) enum Job {
    /// A dialog commit or a cursor: with `always`, a batch of only these is made durable by the
    /// commit log (one small fsynced append) instead of a durable database commit.
    Logged {
        logged: Box<Logged>,
        answer: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    },
    /// Any other write: applies itself to the batch's transaction and says how to answer once the
    /// batch is committed (or not).
    Other(Box<dyn FnOnce(&WriteTransaction) -> Applied + Send>),
}

/// Answers a job with the batch's outcome.
pub(super) type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

pub(super) struct Applied {
    /// The job failed in a way that may have left half its writes: the whole batch is dropped.
    pub(super) fatal: bool,
    pub(super) answer: Answer,
}

/// The writer thread: takes every waiting job, applies them in one transaction, commits once and
/// answers them all.
///
/// With `always`, a batch of dialog commits only is committed without an fsync of the database
/// and logged to `wal` (fsynced) before the answers; any other batch is a durable commit. A
/// checkpoint (a durable commit that lets the log start over) follows at most `interval` (the
/// `store.sync_interval`) after the first logged batch. With `interval`, commits are not fsynced;
/// an fsync follows at most `interval` later.
pub(super) fn writer(
    db: Arc<Database>,
    jobs: mpsc::Receiver<Job>,
    sync: SyncMode,
    interval: Duration,
    mut wal: Wal,
) {
    // Non-durable commits since the last fsync of the database.
    let mut dirty = false;
    let mut last_sync = Instant::now();
    loop {
        let first = if dirty {
            let wait = interval.saturating_sub(last_sync.elapsed());
            match jobs.recv_timeout(wait) {
                Ok(j) => Some(j),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match jobs.recv() {
                Ok(j) => Some(j),
                Err(_) => break,
            }
        };
        if dirty
            && (first.is_none() || last_sync.elapsed() >= interval || wal.len() > CHECKPOINT_BYTES)
        {
            if flush(&db) {
                wal.reset();
                dirty = false;
            }
            last_sync = Instant::now();
        }
        let Some(first) = first else { continue };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        if !dirty {
            last_sync = Instant::now();
        }
        let logged =
            sync == SyncMode::Always && batch.iter().all(|j| matches!(j, Job::Logged { .. }));
        let durable = sync == SyncMode::Always && !logged;
        match apply_batch(&db, batch, durable, logged.then_some(&mut wal)) {
            // A durable commit holds everything the log held.
            true if durable => {
                wal.reset();
                dirty = false;
            }
            true => dirty = true,
            false => {}
        }
    }
    if dirty && flush(&db) {
        wal.reset();
    }
}

/// Applies one batch in one transaction and answers every job; true when it was committed.
/// With `wal`, the batch's commits are logged (fsynced) before the transaction commits.
fn apply_batch(db: &Database, batch: Vec<Job>, durable: bool, wal: Option<&mut Wal>) -> bool {
    let mut txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => {
            // Dropping the jobs answers each caller "unavailable"; nothing was written.
            tracing::error!(error = %e, "the store cannot start a write");
            return false;
        }
    };
    if durable {
        // Each durable commit also saves the allocator state, so a restart after a crash need
        // not walk the whole file to rebuild it (seconds at a million events).
        txn.set_quick_repair(true);
    } else if let Err(e) = txn.set_durability(Durability::None) {
        tracing::warn!(error = %e, "the store cannot defer its fsync");
    }
    let mut fatal = false;
    let mut answers: Vec<Answer> = Vec::with_capacity(batch.len());
    let mut commits = Vec::new();
    // Opened for a run of logged writes, closed before any other job opens tables itself.
    let mut tables: Option<LogTables<'_>> = None;
    for job in batch {
        match job {
            Job::Logged { logged, answer } => {
                if tables.is_none() {
                    match LogTables::open(&txn) {
                        Ok(t) => tables = Some(t),
                        Err(e) => {
                            fatal = true;
                            answers.push(Box::new(move |_| {
                                let _ = answer.send(Err(e));
                            }));
                            continue;
                        }
                    }
                }
                let out = match tables.as_mut() {
                    Some(t) => logged.apply(t),
                    None => Err(unavailable("the store's tables are not open")),
                };
                fatal |= matches!(out, Err(StoreError::Unavailable(_)));
                answers.push(Box::new(move |committed: Result<(), StoreError>| {
                    let _ = answer.send(committed.and(out));
                }));
                commits.push(logged);
            }
            Job::Other(job) => {
                if let Some(t) = tables.take() {
                    fatal |= t.finish().is_err();
                }
                let applied = job(&txn);
                fatal |= applied.fatal;
                answers.push(applied.answer);
            }
        }
    }
    if let Some(t) = tables.take() {
        fatal |= t.finish().is_err();
    }
    // Ends the borrow of `txn` (the tables' `Drop` would otherwise hold it to the scope's end).
    drop(tables);
    let committed = if fatal {
        drop(txn);
        Err(unavailable(
            "a write of this batch failed; nothing of it was kept",
        ))
    } else {
        match wal {
            Some(wal) => log_and_commit(txn, wal, &commits),
            None => txn.commit().map_err(unavailable),
        }
    };
    if let Err(e) = &committed {
        tracing::error!(error = %e, "the store could not commit a batch");
    }
    let ok = committed.is_ok();
    for answer in answers {
        answer(committed.clone());
    }
    ok
}

/// Notes the batch number in the transaction, logs the batch (fsynced), then commits.
fn log_and_commit(
    txn: WriteTransaction,
    wal: &mut Wal,
    commits: &[Box<Logged>],
) -> Result<(), StoreError> {
    let batch = wal.batch + 1;
    {
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        meta.insert("wal_batch", batch).map_err(unavailable)?;
    }
    let refs: Vec<&Logged> = commits.iter().map(|c| c.as_ref()).collect();
    wal.append(batch, &refs).map_err(unavailable)?;
    // Should this fail after the append, a restart would apply the batch again: the database
    // cannot take writes then anyway, and the log holds what was applied.
    txn.commit().map_err(unavailable)
}

/// Applies the logged batches the database does not hold yet (those after its `wal_batch`), in
/// order, in one durable commit; returns how many commits were applied again.
pub(super) fn recover(
    db: &Database,
    batches: super::wal::Batches,
    wal: &mut Wal,
) -> anyhow::Result<usize> {
    let mut txn = db.begin_write()?;
    let applied_upto = txn
        .open_table(META)?
        .get("wal_batch")?
        .map(|v| v.value())
        .unwrap_or(0);
    let mut replayed = 0;
    let mut last = applied_upto;
    let mut tables = LogTables::open(&txn)?;
    for (batch, commits) in batches {
        if batch <= applied_upto {
            continue;
        }
        for c in &commits {
            match c.apply(&mut tables) {
                // A commit refused when it was first applied is refused again.
                Ok(()) | Err(StoreError::Conflict) | Err(StoreError::AlreadyExists) => {}
                Err(e) => anyhow::bail!("applying the commit log failed: {e}"),
            }
            replayed += 1;
        }
        last = batch;
    }
    tables.finish()?;
    txn.open_table(META)?.insert("wal_batch", last)?;
    txn.set_quick_repair(true);
    txn.commit()?;
    wal.batch = last;
    wal.reset();
    Ok(replayed)
}

/// Makes every earlier `Durability::None` commit durable; false if that failed.
pub(super) fn flush(db: &Database) -> bool {
    // An empty transaction with the default (immediate) durability fsyncs the file.
    let result = match db.begin_write() {
        Ok(mut txn) => {
            txn.set_quick_repair(true);
            txn.commit().map_err(unavailable)
        }
        Err(e) => Err(unavailable(e)),
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "the store could not fsync");
    }
    result.is_ok()
}
