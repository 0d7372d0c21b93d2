//! The writer thread: every write of the embedded store, applied in batches that share one
//! transaction and one fsync (group commit).

use super::*;

/// A write for the writer thread: applies itself to the batch's transaction and says how to answer
/// once the batch is committed (or not).
pub(super) type Job = Box<dyn FnOnce(&WriteTransaction) -> Applied + Send>;

pub(super) struct Applied {
    /// The job failed in a way that may have left half its writes: the whole batch is dropped.
    pub(super) fatal: bool,
    pub(super) answer: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

/// The writer thread: takes every waiting job, applies them in one transaction, commits once and
/// answers them all. With `interval`, commits are not fsynced; an fsync follows at most
/// `sync_interval` later.
pub(super) fn writer(
    db: Arc<Database>,
    jobs: mpsc::Receiver<Job>,
    sync: SyncMode,
    interval: Duration,
) {
    let mut dirty = false;
    let mut last_sync = Instant::now();
    loop {
        let first = match sync {
            SyncMode::Always => match jobs.recv() {
                Ok(j) => Some(j),
                Err(_) => return,
            },
            SyncMode::Interval => {
                let wait = interval.saturating_sub(last_sync.elapsed());
                match jobs.recv_timeout(wait) {
                    Ok(j) => Some(j),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        if dirty {
                            flush(&db);
                        }
                        return;
                    }
                }
            }
        };
        if sync == SyncMode::Interval && (first.is_none() || last_sync.elapsed() >= interval) {
            if dirty {
                flush(&db);
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
        let mut txn = match db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                // Dropping the jobs answers each caller "unavailable"; nothing was written.
                tracing::error!(error = %e, "the store cannot start a write");
                drop(batch);
                continue;
            }
        };
        // Each commit also saves the allocator state, so a restart after a crash need not walk
        // the whole file to rebuild it (seconds at a million events).
        txn.set_quick_repair(true);
        if sync == SyncMode::Interval
            && let Err(e) = txn.set_durability(Durability::None)
        {
            tracing::warn!(error = %e, "the store cannot defer its fsync");
        }
        let mut fatal = false;
        let mut answers = Vec::with_capacity(batch.len());
        for job in batch {
            let applied = job(&txn);
            fatal |= applied.fatal;
            answers.push(applied.answer);
        }
        let committed = if fatal {
            drop(txn);
            Err(unavailable(
                "a write of this batch failed; nothing of it was kept",
            ))
        } else {
            txn.commit().map_err(unavailable)
        };
        if committed.is_ok() && sync == SyncMode::Interval {
            dirty = true;
        }
        if let Err(e) = &committed {
            tracing::error!(error = %e, "the store could not commit a batch");
        }
        for answer in answers {
            answer(committed.clone());
        }
    }
}

/// Makes every earlier `Durability::None` commit durable.
pub(super) fn flush(db: &Database) {
    // An empty transaction with the default (immediate) durability fsyncs the file.
    let result = match db.begin_write() {
        Ok(txn) => txn.commit().map_err(unavailable),
        Err(e) => Err(unavailable(e)),
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "the store could not fsync");
    }
}
