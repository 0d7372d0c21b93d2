//! The writer thread: every write of the embedded store, applied in batches that share one
//! transaction and one fsync (group commit).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use super::wal::{CHECKPOINT_BYTES, Logged, Wal};
use super::*;

/// A write for the writer thread.
pub(super) enum Job {
    /// Dialog commits or cursors, all or none: with `always`, a batch of only these is made
    /// durable by the commit log (one small fsynced append) instead of a durable database commit.
    /// A list that fails part-way drops its whole batch (see `apply_batch`), so lists are sent
    /// only of writes that cannot be refused: cursors.
    Logged {
        logged: Vec<Logged>,
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

/// Whether reads see every acknowledged write: not while writes answered during a checkpoint
/// wait to be applied to the database.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reads {
    Current,
    Behind,
    /// Acknowledged writes could not be applied: the store answers nothing until a restart
    /// applies them from the commit log.
    Failed,
}

/// Holds reads back while the database lacks acknowledged writes.
pub(super) struct Gate(tokio::sync::watch::Sender<Reads>);

impl Gate {
    pub(super) fn new() -> Gate {
        Gate(tokio::sync::watch::Sender::new(Reads::Current))
    }

    /// Returns once reads see every write acknowledged before the call.
    pub(super) async fn current(&self) -> Result<(), StoreError> {
        let reads = *self.0.borrow();
        let reads = match reads {
            Reads::Behind => {
                let mut rx = self.0.subscribe();
                *rx.wait_for(|r| *r != Reads::Behind)
                    .await
                    .map_err(|_| unavailable("the store's writer has stopped"))?
            }
            r => r,
        };
        match reads {
            Reads::Failed => Err(unavailable(
                "the store could not apply acknowledged writes; a restart applies them from its commit log",
            )),
            _ => Ok(()),
        }
    }

    fn set(&self, reads: Reads) {
        self.0.send_if_modified(|r| {
            let changed = *r != reads;
            *r = reads;
            changed
        });
    }
}

/// What the writer's checkpoints report to, and (tests only) what keeps them from starting.
pub(super) struct Checkpoints {
    /// Times each checkpoint.
    pub(super) took: prometheus::Histogram,
    /// While true, a due checkpoint waits to start.
    pub(super) hold: Option<Arc<AtomicBool>>,
}

/// How often the writer looks at a running checkpoint while no write arrives.
const CHECKPOINT_POLL: Duration = Duration::from_millis(1);

/// A checkpoint running on a thread of its own, and the writes logged and answered meanwhile.
struct Checkpoint {
    done: mpsc::Receiver<bool>,
    /// Answered, logged in the active segment, not applied to the database yet.
    deferred: Vec<Logged>,
    /// The batch number of the last deferred write.
    upto: u64,
    /// The dialogs' marks after the deferred writes, for the next ones' checks.
    marks: HashMap<Uuid, DialogMark>,
}

impl Checkpoint {
    /// Starts a durable commit of everything applied so far. `hold` (tests only) keeps it from
    /// starting while held.
    fn start(
        db: &Arc<Database>,
        hold: Option<Arc<AtomicBool>>,
        took: prometheus::Histogram,
    ) -> Checkpoint {
        let (tx, done) = mpsc::channel();
        let db = db.clone();
        let run = move || {
            while hold.as_ref().is_some_and(|h| h.load(Ordering::Acquire)) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = tx.send(flush(&db, &took));
        };
        if let Err(e) = std::thread::Builder::new()
            .name("store-checkpoint".into())
            .spawn(run)
        {
            tracing::error!(error = %e, "the store cannot start its checkpoint thread");
        }
        Checkpoint {
            done,
            deferred: Vec::new(),
            upto: 0,
            marks: HashMap::new(),
        }
    }

    /// The checkpoint's outcome once it has ended.
    fn ended(&self) -> Option<bool> {
        match self.done.try_recv() {
            Ok(ok) => Some(ok),
            Err(mpsc::TryRecvError::Empty) => None,
            Err(mpsc::TryRecvError::Disconnected) => Some(false),
        }
    }

    fn wait(&self) -> bool {
        self.done.recv().unwrap_or(false)
    }

    /// Checks a batch of logged writes against the database and the writes deferred before them,
    /// logs those that apply (one fsynced record), answers every one, and keeps them to apply
    /// once the checkpoint has ended.
    fn defer(&mut self, db: &Database, wal: &mut Wal, gate: &Gate, batch: Vec<Job>) {
        let mut answers = Vec::with_capacity(batch.len());
        let mut accepted: Vec<Logged> = Vec::new();
        let mut marks: HashMap<Uuid, DialogMark> = HashMap::new();
        let read = db.begin_read().map_err(unavailable);
        let dialogs = read
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|r| r.open_table(DIALOGS).map_err(unavailable));
        for job in batch {
            let Job::Logged { logged, answer } = job else {
                continue;
            };
            // The job's writes are accepted together or not at all.
            let mut own: HashMap<Uuid, DialogMark> = HashMap::new();
            let out = logged.iter().try_for_each(|l| match (l, &dialogs) {
                (Logged::Cursor { .. }, _) => Ok(()),
                (Logged::Commit { .. }, Err(e)) => Err(e.clone()),
                (Logged::Commit { commit, .. }, Ok(dialogs)) => {
                    let known = own
                        .get(&commit.id)
                        .or(marks.get(&commit.id))
                        .or(self.marks.get(&commit.id));
                    let current = match known {
                        Some(m) => Ok(Some(*m)),
                        None => dialogs
                            .get(commit.id.as_u128())
                            .map(|v| v.map(|v| mark_of(v.value())))
                            .map_err(unavailable),
                    };
                    current.and_then(|current| {
                        let mark = commit.check(commit.split_state()?.as_deref(), current)?;
                        own.insert(commit.id, mark);
                        Ok(())
                    })
                }
            });
            if out.is_ok() {
                marks.extend(own);
                accepted.extend(logged);
            }
            answers.push((answer, out));
        }
        if !accepted.is_empty() {
            let batch = wal.batch + 1;
            let refs: Vec<&Logged> = accepted.iter().collect();
            match wal.append(batch, &refs) {
                Ok(()) => {
                    // Before the answers: a read after one of them waits for it.
                    gate.set(Reads::Behind);
                    self.marks.extend(marks);
                    self.deferred.extend(accepted);
                    self.upto = batch;
                }
                Err(e) => {
                    tracing::error!(error = %e, "the store could not log a batch");
                    let e = unavailable(e);
                    for (_, out) in &mut answers {
                        if out.is_ok() {
                            *out = Err(e.clone());
                        }
                    }
                }
            }
        }
        for (answer, out) in answers {
            let _ = answer.send(out);
        }
    }

    /// Applies the deferred writes to the database (not durably: the log holds them); false if
    /// that failed, and then the database lacks writes that were acknowledged.
    fn apply_deferred(self, db: &Database) -> bool {
        if self.deferred.is_empty() {
            return true;
        }
        let applied = (|| -> Result<(), StoreError> {
            let mut txn = db.begin_write().map_err(unavailable)?;
            txn.set_durability(Durability::None).map_err(unavailable)?;
            {
                let mut tables = LogTables::open(&txn)?;
                for logged in &self.deferred {
                    logged.apply(&mut tables)?;
                }
                tables.finish()?;
                txn.open_table(META)
                    .map_err(unavailable)?
                    .insert("wal_batch", self.upto)
                    .map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)
        })();
        if let Err(e) = &applied {
            tracing::error!(error = %e, "the store could not apply the writes logged during a checkpoint");
        }
        applied.is_ok()
    }
}

/// The writer thread: takes every waiting job, applies them in one transaction, commits once and
/// answers them all.
///
/// With `always`, a batch of dialog commits only is committed without an fsync of the database
/// and logged to `wal` (fsynced) before the answers; any other batch is a durable commit. A
/// checkpoint (a durable commit that lets the log start over) follows at most `interval` (the
/// `store.sync_interval`) after the first logged batch. It runs on a thread of its own while new
/// records go to the log's other segment: batches of dialog commits arriving meanwhile are checked
/// against the database and the ones before them, logged and answered at once, and applied once
/// the checkpoint has ended; reads wait for that (`gate`), and any other write waits for the
/// checkpoint. With `interval`, commits are not fsynced; an fsync follows at most `interval`
/// later, holding the writes back while it runs.
pub(super) fn writer(
    db: Arc<Database>,
    jobs: mpsc::Receiver<Job>,
    sync: SyncMode,
    interval: Duration,
    mut wal: Wal,
    gate: Arc<Gate>,
    checkpoints: Checkpoints,
) {
    let Checkpoints {
        took: checkpoint_time,
        hold,
    } = checkpoints;
    // Non-durable commits since the last fsync of the database.
    let mut dirty = false;
    let mut last_sync = Instant::now();
    let mut checkpoint: Option<Checkpoint> = None;
    // Ends a checkpoint: the segment it covered is free once it is durable, and the writes
    // deferred meanwhile are applied. False when acknowledged writes could not be applied.
    let settle = |cp: Checkpoint, ok: bool, wal: &mut Wal, dirty: &mut bool| -> bool {
        if ok {
            wal.retire();
        }
        *dirty = !ok || !cp.deferred.is_empty();
        if !cp.apply_deferred(&db) {
            gate.set(Reads::Failed);
            return false;
        }
        gate.set(Reads::Current);
        true
    };
    loop {
        // A running checkpoint is looked at often; a due one is started on time.
        let wait = if checkpoint.is_some() {
            Some(CHECKPOINT_POLL)
        } else if dirty {
            Some(interval.saturating_sub(last_sync.elapsed()))
        } else {
            None
        };
        let first = match wait {
            Some(wait) => match jobs.recv_timeout(wait) {
                Ok(j) => Some(j),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match jobs.recv() {
                Ok(j) => Some(j),
                Err(_) => break,
            },
        };
        if let Some(ok) = checkpoint.as_ref().and_then(Checkpoint::ended) {
            let cp = checkpoint.take().expect("a running checkpoint");
            if !settle(cp, ok, &mut wal, &mut dirty) {
                return;
            }
            last_sync = Instant::now();
        } else if checkpoint.is_none()
            && dirty
            && (first.is_none() || last_sync.elapsed() >= interval || wal.len() > CHECKPOINT_BYTES)
        {
            if sync == SyncMode::Always && wal.switch() {
                checkpoint = Some(Checkpoint::start(
                    &db,
                    hold.clone(),
                    checkpoint_time.clone(),
                ));
            } else if flush(&db, &checkpoint_time) {
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
        let logged =
            sync == SyncMode::Always && batch.iter().all(|j| matches!(j, Job::Logged { .. }));
        if let Some(cp) = checkpoint.as_mut() {
            if logged {
                cp.defer(&db, &mut wal, &gate, batch);
                continue;
            }
            // Any other write needs the database's write transaction: it waits.
            let ok = cp.wait();
            let cp = checkpoint.take().expect("a running checkpoint");
            if !settle(cp, ok, &mut wal, &mut dirty) {
                return;
            }
            last_sync = Instant::now();
        }
        if !dirty {
            last_sync = Instant::now();
        }
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
    if let Some(cp) = checkpoint.take() {
        let ok = cp.wait();
        if !settle(cp, ok, &mut wal, &mut dirty) {
            return;
        }
    }
    if dirty && flush(&db, &checkpoint_time) {
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
                    Some(t) => logged.iter().try_for_each(|l| l.apply(t)),
                    None => Err(unavailable("the store's tables are not open")),
                };
                // A job that failed part-way may have left some of its writes: unless the
                // whole batch is dropped, its failure is one no write of it was made for.
                fatal |= matches!(out, Err(StoreError::Unavailable(_)))
                    || (out.is_err() && logged.len() > 1);
                answers.push(Box::new(move |committed: Result<(), StoreError>| {
                    let _ = answer.send(committed.and(out));
                }));
                commits.extend(logged);
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
    commits: &[Logged],
) -> Result<(), StoreError> {
    let batch = wal.batch + 1;
    {
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        meta.insert("wal_batch", batch).map_err(unavailable)?;
    }
    let refs: Vec<&Logged> = commits.iter().collect();
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
/// A checkpoint: a durable commit of everything applied so far, timed into `took`.
pub(super) fn flush(db: &Database, took: &prometheus::Histogram) -> bool {
    let started = Instant::now();
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
    took.observe(started.elapsed().as_secs_f64());
    result.is_ok()
}
