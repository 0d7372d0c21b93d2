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
    /// A read waits for the deferred writes: apply them now (unless a checkpoint runs; they are
    /// applied once it ends).
    Apply,
}

/// Answers a job with the batch's outcome.
pub(super) type Answer = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

pub(super) struct Applied {
    /// The job failed in a way that may have left half its writes: the whole batch is dropped.
    pub(super) fatal: bool,
    pub(super) answer: Answer,
}

/// How far the database is behind the commit log: the number of the last batch logged (and
/// answered) and of the last one applied to the database. Batch numbers rise.
#[derive(Clone, Copy, Default, Debug)]
struct Progress {
    logged: u64,
    applied: u64,
    /// Acknowledged writes could not be applied: the store answers no read until a restart
    /// applies them from the commit log.
    failed: bool,
}

/// Holds reads back while the database lacks acknowledged writes.
pub(super) struct Gate(tokio::sync::watch::Sender<Progress>);

impl Gate {
    pub(super) fn new() -> Gate {
        Gate(tokio::sync::watch::Sender::new(Progress::default()))
    }

    /// The batch a read must wait for (the last one answered) while the database lacks it.
    pub(super) fn behind(&self) -> Result<Option<u64>, StoreError> {
        let p = *self.0.borrow();
        if p.failed {
            return Err(failed());
        }
        Ok((p.applied < p.logged).then_some(p.logged))
    }

    /// Refused like every read once acknowledged writes could not be applied.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        if self.0.borrow().failed {
            return Err(failed());
        }
        Ok(())
    }

    /// Returns once the database holds batch `batch` and every one before it.
    pub(super) async fn reached(&self, batch: u64) -> Result<(), StoreError> {
        let mut rx = self.0.subscribe();
        let p = *rx
            .wait_for(|p| p.failed || p.applied >= batch)
            .await
            .map_err(|_| unavailable("the store's writer has stopped"))?;
        if p.failed { Err(failed()) } else { Ok(()) }
    }

    /// Notes batch `batch` as logged without waking the reads waiting in `reached`: they wait for
    /// `applied`, and a wake-up per commit (a thousand a second) would only put them back to sleep.
    fn logged(&self, batch: u64) {
        self.0.send_if_modified(|p| {
            p.logged = batch;
            false
        });
    }

    fn applied(&self, batch: u64) {
        self.0.send_modify(|p| p.applied = p.applied.max(batch));
    }

    fn fail(&self) {
        self.0.send_modify(|p| p.failed = true);
    }
}

fn failed() -> StoreError {
    unavailable(
        "the store could not apply acknowledged writes; a restart applies them from its commit log",
    )
}

/// What the writer's checkpoints report to, and how long answered writes may wait to be applied.
pub(super) struct Options {
    /// Times each checkpoint.
    pub(super) took: prometheus::Histogram,
    /// While true, a due checkpoint waits to start (tests only).
    pub(super) hold: Option<Arc<AtomicBool>>,
    /// How long logged writes wait to be applied to the database while no read asks for them.
    pub(super) defer_for: Duration,
}

/// How long logged writes wait to be applied to the database while no read asks for them: they
/// are durable in the commit log once answered, and one transaction for many of them costs
/// little more than one for each (most of a transaction's cost is its own, not its writes').
pub(super) const DEFER_FOR: Duration = Duration::from_millis(50);

/// A batch of this many logged jobs (a write burst) fills a transaction of its own: it is
/// applied at once, as its record is logged, instead of waiting with the others.
const APPLY_AT_ONCE: usize = 4;

/// Most logged writes waiting to be applied outside a checkpoint: applying them stalls the
/// writer (about 25 µs each), so many more would hold up the commits arriving meanwhile.
const DEFER_MAX: usize = 64;

/// How often the writer looks at a running checkpoint while no write arrives.
const CHECKPOINT_POLL: Duration = Duration::from_millis(1);

/// A checkpoint running on a thread of its own.
struct Checkpoint {
    done: mpsc::Receiver<bool>,
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
        Checkpoint { done }
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

    /// After a checkpoint that was durable (`ok`), the log segment it covered is free; returns
    /// whether the database still lacks a durable commit (it failed).
    fn ended_with(ok: bool, wal: &mut Wal) -> bool {
        if ok {
            wal.retire();
        }
        !ok
    }
}

/// Logged writes answered and not applied to the database yet: they wait while a checkpoint
/// runs (it holds the database's write transaction), and otherwise until a read or another
/// write needs them, many of them fill a transaction, or `Options::defer_for` has passed.
struct Deferred {
    writes: Vec<Logged>,
    /// The batch number of the last of them.
    upto: u64,
    /// The dialogs' marks after them, for the next ones' checks.
    marks: HashMap<Uuid, DialogMark>,
    /// When the first of them was answered.
    since: Option<Instant>,
}

impl Deferred {
    fn new() -> Deferred {
        Deferred {
            writes: Vec::new(),
            upto: 0,
            marks: HashMap::new(),
            since: None,
        }
    }

    fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Whether they are to be applied now (`poked`: a read waits for them).
    fn due(&self, poked: bool, defer_for: Duration) -> bool {
        !self.is_empty()
            && (poked
                || self.writes.len() >= DEFER_MAX
                || self.since.is_some_and(|s| s.elapsed() >= defer_for))
    }

    /// How long until they are due by age.
    fn wait(&self, defer_for: Duration) -> Option<Duration> {
        self.since
            .map(|s| (s + defer_for).saturating_duration_since(Instant::now()))
    }

    /// Checks a batch of logged writes against the database and the writes deferred before them,
    /// logs those that apply (one fsynced record), answers every one, and keeps them to apply
    /// later. True when any was logged.
    fn defer(&mut self, db: &Database, wal: &mut Wal, gate: &Gate, batch: Vec<Job>) -> bool {
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
        let mut logged = false;
        if !accepted.is_empty() {
            let batch = wal.batch + 1;
            let refs: Vec<&Logged> = accepted.iter().collect();
            match wal.append(batch, &refs) {
                Ok(()) => {
                    // Before the answers: a read after one of them waits for it.
                    gate.logged(batch);
                    self.marks.extend(marks);
                    self.writes.extend(accepted);
                    self.upto = batch;
                    self.since.get_or_insert_with(Instant::now);
                    logged = true;
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
        logged
    }

    /// Applies the deferred writes to the database in one transaction (not durably: the log
    /// holds them) and lets the reads waiting for them go on. False if that failed: the database
    /// then lacks writes that were acknowledged, and reads are refused from then on.
    fn apply(&mut self, db: &Database, gate: &Gate) -> bool {
        if self.is_empty() {
            return true;
        }
        let applied = (|| -> Result<(), StoreError> {
            let mut txn = db.begin_write().map_err(unavailable)?;
            txn.set_durability(Durability::None).map_err(unavailable)?;
            {
                let mut tables = LogTables::open(&txn)?;
                for logged in &self.writes {
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
            tracing::error!(error = %e, "the store could not apply logged writes to its database");
            gate.fail();
            return false;
        }
        self.writes.clear();
        self.marks.clear();
        self.since = None;
        gate.applied(self.upto);
        true
    }
}

/// The writer thread: takes every waiting job, applies them in one transaction, commits once and
/// answers them all.
///
/// With `always`, a batch of dialog commits and cursors only is checked against the database
/// and the writes deferred before it, logged to `wal` (one fsynced record) and answered; its
/// writes are applied to the database later, many in one non-durable transaction (`Deferred`),
/// and reads wait for that (`gate`: a read asks for it with `Job::Apply`). A batch of
/// `APPLY_AT_ONCE` or more is applied in a transaction of its own as its record is logged. Any
/// other batch is a durable commit, after the deferred writes. A checkpoint (a durable commit
/// that lets the log start over) follows at most `interval` (`store.checkpoint_interval`) after
/// the first logged batch. It runs on a thread of its own while new records go to the log's
/// other segment, so batches of dialog commits arriving meanwhile are logged and answered at
/// once; any other write waits for it. With `SyncMode::Interval`, commits are not fsynced; an fsync follows at most
/// `interval` (`store.sync_interval`) later, holding the writes back while it runs.
pub(super) fn writer(
    db: Arc<Database>,
    jobs: mpsc::Receiver<Job>,
    sync: SyncMode,
    interval: Duration,
    mut wal: Wal,
    gate: Arc<Gate>,
    options: Options,
) {
    let Options {
        took: checkpoint_time,
        hold,
        defer_for,
    } = options;
    // Non-durable commits (or deferred writes) since the last fsync of the database.
    let mut dirty = false;
    let mut last_sync = Instant::now();
    let mut checkpoint: Option<Checkpoint> = None;
    let mut deferred = Deferred::new();
    loop {
        // A running checkpoint is looked at often; a due checkpoint, and deferred writes once
        // they are due, are seen to on time.
        let mut wait = if checkpoint.is_some() {
            Some(CHECKPOINT_POLL)
        } else if dirty {
            Some(interval.saturating_sub(last_sync.elapsed()))
        } else {
            None
        };
        if checkpoint.is_none()
            && let Some(w) = deferred.wait(defer_for)
        {
            wait = Some(wait.map_or(w, |x| x.min(w)));
        }
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
            // The segment it covered is free once it is durable; the writes deferred meanwhile
            // go to the database now.
            checkpoint = None;
            dirty = Checkpoint::ended_with(ok, &mut wal) || !deferred.is_empty();
            if !deferred.apply(&db, &gate) {
                return;
            }
            last_sync = Instant::now();
        } else if checkpoint.is_none()
            && dirty
            && (last_sync.elapsed() >= interval || wal.len() > CHECKPOINT_BYTES)
        {
            // The checkpoint makes the database durable as it is: it must hold every write of
            // the segment it lets go.
            if !deferred.apply(&db, &gate) {
                return;
            }
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
        let mut batch = Vec::new();
        batch.extend(first);
        while !batch.is_empty() && batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let before = batch.len();
        batch.retain(|j| !matches!(j, Job::Apply));
        let poked = batch.len() < before;
        if !batch.is_empty() {
            if !dirty {
                last_sync = Instant::now();
            }
            let logged =
                sync == SyncMode::Always && batch.iter().all(|j| matches!(j, Job::Logged { .. }));
            if logged && checkpoint.is_none() && batch.len() >= APPLY_AT_ONCE {
                // Enough for a transaction of their own: applied with their record, after the
                // ones deferred before them.
                if !deferred.is_empty() && !deferred.apply(&db, &gate) {
                    return;
                }
                if apply_batch(&db, batch, false, Some(&mut wal)) {
                    dirty = true;
                }
            } else if logged {
                dirty |= deferred.defer(&db, &mut wal, &gate, batch);
            } else {
                if let Some(cp) = checkpoint.take() {
                    // Any other write needs the database's write transaction: it waits.
                    dirty = Checkpoint::ended_with(cp.wait(), &mut wal);
                    last_sync = Instant::now();
                }
                if !deferred.is_empty() {
                    dirty = true;
                    if !deferred.apply(&db, &gate) {
                        return;
                    }
                }
                let durable = sync == SyncMode::Always;
                match apply_batch(&db, batch, durable, None) {
                    // A durable commit holds everything the log held.
                    true if durable => {
                        wal.reset();
                        dirty = false;
                    }
                    true => dirty = true,
                    false => {}
                }
            }
        }
        if checkpoint.is_none() && deferred.due(poked, defer_for) && !deferred.apply(&db, &gate) {
            return;
        }
    }
    if let Some(cp) = checkpoint.take() {
        dirty |= Checkpoint::ended_with(cp.wait(), &mut wal);
    }
    if !deferred.is_empty() {
        dirty = true;
        if !deferred.apply(&db, &gate) {
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
    let logging = wal.is_some();
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
                // The log gets what was accepted, as `Deferred::defer` logs it.
                if logging && out.is_ok() {
                    commits.extend(logged);
                }
                answers.push(Box::new(move |committed: Result<(), StoreError>| {
                    let _ = answer.send(committed.and(out));
                }));
            }
            Job::Other(job) => {
                if let Some(t) = tables.take() {
                    fatal |= t.finish().is_err();
                }
                let applied = job(&txn);
                fatal |= applied.fatal;
                answers.push(applied.answer);
            }
            Job::Apply => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn a_read_waiting_for_the_database_is_woken_by_applies_not_by_each_logged_batch() {
        let gate = Gate::new();
        gate.logged(1);
        assert_eq!(gate.behind().expect("not failed"), Some(1));
        let mut waiting = gate.0.subscribe();
        waiting.borrow_and_update();
        gate.logged(2);
        gate.logged(3);
        assert!(
            !waiting.has_changed().expect("open"),
            "a logged batch woke the reads waiting for the database"
        );
        assert_eq!(gate.behind().expect("not failed"), Some(3));
        gate.applied(3);
        assert!(waiting.has_changed().expect("open"));
        assert_eq!(gate.behind().expect("not failed"), None);
        gate.reached(3).await.expect("reached");
    }
}
