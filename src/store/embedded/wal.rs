//! The commit log (`store.wal` and `store.wal.1` beside the database) that makes
//! `store.sync = "always"` cheap.
//!
//! A durable redb commit rewrites and fsyncs every B-tree page the batch touched. Instead, a batch
//! made only of dialog commits has its prepared commits appended here as one record, fsynced
//! before anyone is answered, and is applied to the database later in a non-durable redb
//! transaction, together with the batches logged after it (see `writer`). At most
//! `store.checkpoint_interval` later (or when the log passes `CHECKPOINT_BYTES`) one durable redb
//! commit (a checkpoint) makes all of it durable in the database itself.
//!
//! The log has two segments, used in turn: a checkpoint first switches new records to the other
//! segment, so that writes arriving while it runs are logged and answered there (see `writer`);
//! once the checkpoint is durable, the segment it covered starts over at its next turn.
//!
//! After a crash redb reopens at its last durable commit; the records of either segment whose
//! batch number is above the `wal_batch` saved in that commit are applied again, in order, with
//! the time each was first applied, so each gives the same result it gave then (a commit that met
//! a conflict meets it again).
//!
//! Each segment starts with the database's `instance` number: a log left beside a restored backup
//! (or any other database) is not applied to it. A record: payload length (u32), CRC-32 of the
//! payload (u32), payload: batch number (u64), then the batch's commits. The segments are
//! preallocated and reused from their start, so an fsync rarely has to write file metadata.
//! Where the file system takes them (Linux), records go out as direct, synchronous writes of whole
//! 4 KiB blocks (`O_DIRECT | O_DSYNC`: no page-cache round and no separate fsync call, less CPU
//! per commit than a buffered write and `fdatasync`). Reading stops at the first record that is
//! torn, fails its checksum, or whose batch number does not rise (the rest of an older round).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::commit::{LogTables, PreparedCommit, PreparedEvent, PreparedState, StateWrite};
use super::*;

/// File name of the commit log inside `data_dir`.
pub const WAL_FILE_NAME: &str = "store.wal";
/// The header: the database's instance number.
const HEADER: u64 = 8;
/// Size the log is preallocated to; a checkpoint follows before it fills.
const PREALLOCATE: u64 = 64 << 20;
/// The log is checkpointed once it holds this much.
pub(super) const CHECKPOINT_BYTES: u64 = 48 << 20;
/// The unit of a direct write: its offset, length and memory are multiples of it.
const BLOCK: usize = 4096;

/// The commit log: two segment files used in turn. A checkpoint switches new records to the other
/// segment before it starts, so writes go on being logged (and answered) while it runs; once it is
/// durable, the segment it covered is free for the next round.
pub(super) struct Wal {
    segments: [Segment; 2],
    /// The segment records are appended to.
    active: usize,
    /// The other segment holds nothing a durable commit lacks, so it may be started over.
    other_free: bool,
    /// Number of the last batch written (or recovered).
    pub(super) batch: u64,
    buf: Vec<u8>,
    /// Memory for direct writes, a `BLOCK`-aligned window of it used at a time.
    aligned: Vec<u8>,
    /// Observes how long each record's write and fsync take.
    sync_time: Option<prometheus::Histogram>,
}

struct Segment {
    file: File,
    /// The same file opened for direct, synchronous writes, where the file system takes them.
    direct: Option<File>,
    /// The segment's header (the database's instance number).
    header: [u8; HEADER as usize],
    /// Where the next record goes.
    offset: u64,
    /// The bytes of the block `offset` lies in, before `offset`: a direct write rewrites the
    /// whole block.
    tail: Vec<u8>,
}

/// The batches read back from the log: (batch number, its writes), oldest first.
pub(super) type Batches = Vec<(u64, Vec<Logged>)>;

/// A write the log can carry: one that gives the same result when applied again to the state
/// it was first applied to.
pub(super) enum Logged {
    /// A dialog commit, with the time it was applied at.
    Commit { commit: PreparedCommit, now_ms: i64 },
    /// A consumer's saved position in the global log (the dispatcher's).
    Cursor { name: String, position: u64 },
}

impl Logged {
    /// Applies the write (see `LogTables::apply_commit`).
    pub(super) fn apply(&self, tables: &mut LogTables<'_>) -> Result<(), StoreError> {
        match self {
            Logged::Commit { commit, now_ms } => tables.apply_commit(commit, *now_ms),
            Logged::Cursor { name, position } => {
                tables
                    .cursors
                    .insert(name.as_str(), *position)
                    .map_err(unavailable)?;
                Ok(())
            }
        }
    }
}

impl Wal {
    /// Opens (or creates and preallocates) the log of the database numbered `instance`: `path`
    /// and its second segment beside it (`path` with `.1` appended). Returns it with the batches
    /// both segments hold, oldest first (none of a segment that belongs to another database).
    pub(super) fn open(path: &Path, instance: u64) -> std::io::Result<(Wal, Batches)> {
        let mut second = path.as_os_str().to_owned();
        second.push(".1");
        let (a, mut batches) = Segment::open(path, instance)?;
        let (b, more) = Segment::open(Path::new(&second), instance)?;
        // Each segment's records rise; a segment's older rounds are below the durable batch.
        batches.extend(more);
        batches.sort_by_key(|(b, _)| *b);
        batches.dedup_by_key(|(b, _)| *b);
        let batch = batches.last().map(|(b, _)| *b).unwrap_or(0);
        Ok((
            Wal {
                segments: [a, b],
                active: 0,
                other_free: true,
                batch,
                buf: Vec::new(),
                aligned: Vec::new(),
                sync_time: None,
            },
            batches,
        ))
    }

    /// From now on, each record's write and fsync is timed into `histogram`.
    pub(super) fn time_syncs(&mut self, histogram: prometheus::Histogram) {
        self.sync_time = Some(histogram);
    }

    /// Bytes written to the active segment since it started over.
    pub(super) fn len(&self) -> u64 {
        self.segments[self.active].offset - HEADER
    }

    /// Starts a checkpoint's round: new records go to the other segment, which starts over.
    /// False (nothing changes) while the other segment still holds records no durable commit
    /// holds (a checkpoint before failed): then only a checkpoint that holds the writes back
    /// can make room.
    pub(super) fn switch(&mut self) -> bool {
        if !self.other_free {
            return false;
        }
        self.active = 1 - self.active;
        self.segments[self.active].start_over();
        self.other_free = false;
        true
    }

    /// The checkpoint begun by `switch` is durable: the segment it covered may start over.
    pub(super) fn retire(&mut self) {
        self.other_free = true;
    }

    /// Appends the record of batch `batch` and fsyncs it. On failure the log is as before.
    pub(super) fn append(&mut self, batch: u64, commits: &[&Logged]) -> std::io::Result<()> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0u8; 8]);
        self.buf.extend_from_slice(&batch.to_le_bytes());
        for c in commits {
            encode(&mut self.buf, c);
        }
        let payload_len = (self.buf.len() - 8) as u32;
        let crc = crc32fast::hash(&self.buf[8..]);
        self.buf[..4].copy_from_slice(&payload_len.to_le_bytes());
        self.buf[4..8].copy_from_slice(&crc.to_le_bytes());
        // A record after the last one that ends the log on reading: the rest of the file is an
        // older round, and its first record must not pass for the next batch.
        self.buf.extend_from_slice(&[0u8; 8]);
        let segment = &mut self.segments[self.active];
        let started = std::time::Instant::now();
        if !segment.write_direct(&self.buf, &mut self.aligned)? {
            segment.file.seek(SeekFrom::Start(segment.offset))?;
            segment.file.write_all(&self.buf)?;
            segment.file.sync_data()?;
        }
        if let Some(h) = &self.sync_time {
            h.observe(started.elapsed().as_secs_f64());
        }
        segment.advance(&self.buf[..self.buf.len() - 8]);
        self.batch = batch;
        Ok(())
    }

    /// Starts the log over: everything in it is in a durable database commit now.
    pub(super) fn reset(&mut self) {
        for s in &mut self.segments {
            s.start_over();
        }
        self.other_free = true;
    }
}

impl Segment {
    /// Opens (or creates and preallocates) one segment file and reads its records back.
    fn open(path: &Path, instance: u64) -> std::io::Result<(Segment, Batches)> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let ours = bytes.get(..8) == Some(&instance.to_le_bytes()[..]);
        let batches = if ours {
            read_records(&bytes[8..])
        } else {
            Vec::new()
        };
        if !ours {
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&instance.to_le_bytes())?;
            // No record follows the header yet.
            file.write_all(&[0u8; 8])?;
            file.sync_data()?;
        }
        let size = file.metadata()?.len();
        if size < PREALLOCATE {
            // Written out, not a sparse hole: later fsyncs then have no blocks to allocate.
            file.seek(SeekFrom::Start(size))?;
            let zeros = vec![0u8; 1 << 20];
            let mut at = size;
            while at < PREALLOCATE {
                let n = (PREALLOCATE - at).min(zeros.len() as u64) as usize;
                file.write_all(&zeros[..n])?;
                at += n as u64;
            }
            file.sync_all()?;
        }
        let header = instance.to_le_bytes();
        Ok((
            Segment {
                file,
                direct: open_direct(path),
                header,
                offset: HEADER,
                tail: header.to_vec(),
            },
            batches,
        ))
    }

    /// The next record goes right after the header.
    fn start_over(&mut self) {
        self.offset = HEADER;
        self.tail.clear();
        self.tail.extend_from_slice(&self.header);
    }

    /// Writes `bytes` at `offset` and makes them durable with one direct, synchronous write of
    /// the blocks they fall in (the block's bytes before `offset` written again, the rest of the
    /// last block zeros). False when this segment has no direct writes (any more): the caller
    /// writes through the page cache instead. Nothing of the segment's state changes.
    fn write_direct(&mut self, bytes: &[u8], aligned: &mut Vec<u8>) -> std::io::Result<bool> {
        let Some(direct) = &self.direct else {
            return Ok(false);
        };
        let block_start = self.offset - self.tail.len() as u64;
        let len = (self.tail.len() + bytes.len()).div_ceil(BLOCK) * BLOCK;
        if aligned.len() < len + BLOCK {
            aligned.resize(len + BLOCK, 0);
        }
        let shift = aligned.as_ptr().align_offset(BLOCK);
        let window = &mut aligned[shift..shift + len];
        let (head, rest) = window.split_at_mut(self.tail.len());
        head.copy_from_slice(&self.tail);
        rest[..bytes.len()].copy_from_slice(bytes);
        rest[bytes.len()..].fill(0);
        match direct.write_all_at(window, block_start) {
            Ok(()) => Ok(true),
            // The file system turned the direct write down after all: page cache from now on.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(error = %e, "the commit log falls back to buffered writes");
                self.direct = None;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// `record` (just written at `offset`) is in: the next goes after it.
    fn advance(&mut self, record: &[u8]) {
        // Bytes from the start of the tail's block to the record's end.
        let filled = self.tail.len() + record.len();
        if filled < BLOCK {
            self.tail.extend_from_slice(record);
        } else {
            let in_last_block = filled % BLOCK;
            self.tail.clear();
            self.tail
                .extend_from_slice(&record[record.len() - in_last_block..]);
        }
        self.offset += record.len() as u64;
    }
}

/// Opens `path` for direct, synchronous writes (Linux); `None` where the file system has none.
#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path) -> Option<File> {
    None
}

fn read_records(bytes: &[u8]) -> Batches {
    let mut out: Batches = Vec::new();
    let mut at = 0usize;
    while let Some(head) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if len < 8 || crc32fast::hash(payload) != crc {
            break;
        }
        let batch = u64::from_le_bytes(payload[..8].try_into().unwrap_or_default());
        if out.last().is_some_and(|(b, _)| *b >= batch) {
            break;
        }
        let mut rest = &payload[8..];
        let mut commits = Vec::new();
        while !rest.is_empty() {
            match decode(&mut rest) {
                Some(c) => commits.push(c),
                None => return out,
            }
        }
        out.push((batch, commits));
        at += 8 + len;
    }
    out
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

fn encode(buf: &mut Vec<u8>, logged: &Logged) {
    let (p, now_ms) = match logged {
        Logged::Commit { commit, now_ms } => (commit, now_ms),
        Logged::Cursor { name, position } => {
            buf.push(1);
            put_bytes(buf, name.as_bytes());
            buf.extend_from_slice(&position.to_le_bytes());
            return;
        }
    };
    // 0: a commit with its state whole (or purged), as format 1 wrote it; 2: with its state split.
    buf.push(if matches!(p.state, StateWrite::Split(_)) {
        2
    } else {
        0
    });
    buf.extend_from_slice(&now_ms.to_le_bytes());
    buf.extend_from_slice(p.id.as_bytes());
    let flags = u8::from(p.create)
        | (u8::from(p.publish) << 1)
        | (u8::from(p.change.is_some()) << 2)
        | (u8::from(p.hold_until_ms.is_some()) << 3);
    buf.push(flags);
    buf.extend_from_slice(&p.expected_sequence.to_le_bytes());
    match &p.state {
        StateWrite::Purge => put_bytes(buf, &[]),
        StateWrite::Whole(json) => put_bytes(buf, json),
        StateWrite::Split(s) => {
            put_bytes(buf, &s.header);
            buf.extend_from_slice(&s.base.0.to_le_bytes());
            buf.extend_from_slice(&s.base.1.to_le_bytes());
            buf.push(u8::from(s.replace));
            for rows in [&s.activities, &s.transmissions] {
                buf.extend_from_slice(&(rows.len() as u32).to_le_bytes());
                for json in rows {
                    put_bytes(buf, json);
                }
            }
        }
    }
    buf.extend_from_slice(&(p.events.len() as u32).to_le_bytes());
    for e in &p.events {
        buf.extend_from_slice(&e.sequence.to_le_bytes());
        put_bytes(buf, e.id.as_bytes());
        put_bytes(buf, e.resource.as_bytes());
        put_bytes(buf, &e.json);
    }
    if let Some((last, json)) = &p.change {
        buf.extend_from_slice(&last.to_le_bytes());
        put_bytes(buf, json);
    }
    if let Some(ms) = p.hold_until_ms {
        buf.extend_from_slice(&ms.to_le_bytes());
    }
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, tail) = rest.split_at_checked(n)?;
    *rest = tail;
    Some(head)
}

fn take_u64(rest: &mut &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(take(rest, 8)?.try_into().ok()?))
}

fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(take(rest, 4)?.try_into().ok()?))
}

fn take_bytes(rest: &mut &[u8]) -> Option<Vec<u8>> {
    let len = u32::from_le_bytes(take(rest, 4)?.try_into().ok()?) as usize;
    Some(take(rest, len)?.to_vec())
}

fn take_string(rest: &mut &[u8]) -> Option<String> {
    String::from_utf8(take_bytes(rest)?).ok()
}

fn decode(rest: &mut &[u8]) -> Option<Logged> {
    let split = match take(rest, 1)?[0] {
        0 => false,
        2 => true,
        1 => {
            return Some(Logged::Cursor {
                name: take_string(rest)?,
                position: take_u64(rest)?,
            });
        }
        _ => return None,
    };
    let now_ms = take_u64(rest)? as i64;
    let id = Uuid::from_slice(take(rest, 16)?).ok()?;
    let flags = take(rest, 1)?[0];
    let expected_sequence = take_u64(rest)?;
    let state = if split {
        let header = take_bytes(rest)?;
        let base = (take_u32(rest)?, take_u32(rest)?);
        let replace = take(rest, 1)?[0] != 0;
        let mut lists = [Vec::new(), Vec::new()];
        for rows in &mut lists {
            for _ in 0..take_u32(rest)? {
                rows.push(take_bytes(rest)?);
            }
        }
        let [activities, transmissions] = lists;
        StateWrite::Split(PreparedState {
            header,
            base,
            activities,
            transmissions,
            replace,
        })
    } else {
        match take_bytes(rest)? {
            json if json.is_empty() => StateWrite::Purge,
            json => StateWrite::Whole(json),
        }
    };
    let count = take_u32(rest)?;
    let mut events = Vec::new();
    for _ in 0..count {
        events.push(PreparedEvent {
            sequence: take_u64(rest)?,
            id: take_string(rest)?,
            resource: take_string(rest)?,
            json: take_bytes(rest)?,
        });
    }
    let change = if flags & 4 != 0 {
        Some((take_u64(rest)?, take_bytes(rest)?))
    } else {
        None
    };
    let hold_until_ms = if flags & 8 != 0 {
        Some(take_u64(rest)? as i64)
    } else {
        None
    };
    Some(Logged::Commit {
        commit: PreparedCommit {
            id,
            create: flags & 1 != 0,
            expected_sequence,
            state,
            events,
            change,
            publish: flags & 2 != 0,
            hold_until_ms,
        },
        now_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(n: u64) -> Logged {
        Logged::Commit {
            commit: PreparedCommit {
                id: Uuid::now_v7(),
                create: n == 0,
                expected_sequence: n,
                // Both layouts: a whole dialog (format 1's records) and a split one.
                state: if n.is_multiple_of(2) {
                    StateWrite::Whole(format!("{{\"n\":{n}}}").into_bytes())
                } else {
                    StateWrite::Split(PreparedState {
                        header: format!("{{\"n\":{n}}}").into_bytes(),
                        base: (n as u32, 1),
                        activities: vec![b"{\"a\":1}".to_vec(), b"{\"a\":2}".to_vec()],
                        transmissions: vec![],
                        replace: false,
                    })
                },
                events: vec![PreparedEvent {
                    sequence: n + 1,
                    id: format!("e{n}"),
                    resource: "urn:altinn:resource:r".into(),
                    json: b"{}".to_vec(),
                }],
                change: Some((n + 1, b"{\"c\":1}".to_vec())),
                publish: true,
                hold_until_ms: (n % 2 == 1).then_some(1_700_000_000_000),
            },
            now_ms: 1_700_000_000_000 + n as i64,
        }
    }

    #[test]
    fn a_checkpoint_round_logs_to_the_other_segment_and_both_read_back_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(WAL_FILE_NAME);
        let (mut wal, _) = Wal::open(&path, 7).expect("open");
        let a = commit(0);
        wal.append(1, &[&a]).expect("append");
        wal.append(2, &[&a]).expect("append");
        // A checkpoint starts: new records go to the second segment.
        assert!(wal.switch());
        wal.append(3, &[&a]).expect("append");
        assert!(dir.path().join("store.wal.1").exists());
        // Until that checkpoint is durable, the first segment may not start over.
        assert!(!wal.switch());
        drop(wal);
        let (mut wal, batches) = Wal::open(&path, 7).expect("reopen");
        assert_eq!(
            batches.iter().map(|(b, _)| *b).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(wal.batch, 3);

        // Opened, the log is all in a durable commit (recovery's): each round starts the segment
        // it switches to over, and the other keeps its records for the checkpoint running.
        assert!(wal.switch());
        wal.append(4, &[&a]).expect("append");
        wal.retire();
        assert!(wal.switch());
        wal.append(5, &[&a]).expect("append");
        drop(wal);
        let (_, batches) = Wal::open(&path, 7).expect("reopen");
        assert_eq!(batches.iter().map(|(b, _)| *b).collect::<Vec<_>>(), [4, 5]);
    }

    #[test]
    fn records_read_back_until_a_torn_tail_or_an_older_round() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(WAL_FILE_NAME);
        let (mut wal, batches) = Wal::open(&path, 7).expect("open");
        assert!(batches.is_empty());
        let (a, b, c) = (commit(0), commit(1), commit(2));
        let cursor = Logged::Cursor {
            name: "dispatcher".into(),
            position: 42,
        };
        wal.append(1, &[&a, &b, &cursor]).expect("append");
        wal.append(2, &[&c]).expect("append");
        drop(wal);

        let (mut wal, batches) = Wal::open(&path, 7).expect("reopen");
        assert_eq!(batches.iter().map(|(b, _)| *b).collect::<Vec<_>>(), [1, 2]);
        let first = &batches[0].1;
        assert_eq!(first.len(), 3);
        let (
            Logged::Commit {
                commit: read,
                now_ms,
            },
            Logged::Commit {
                commit: wrote,
                now_ms: at,
            },
        ) = (&first[1], &b)
        else {
            panic!("the second write is a commit");
        };
        assert_eq!(read.id, wrote.id);
        assert_eq!(read.hold_until_ms, Some(1_700_000_000_000));
        assert_eq!(now_ms, at);
        assert_eq!(read.events[0].id, "e1");
        let StateWrite::Split(split) = &read.state else {
            panic!("the second write's state is split");
        };
        assert_eq!(split.header, b"{\"n\":1}");
        assert_eq!(split.base, (1, 1));
        assert_eq!(
            split.activities,
            [b"{\"a\":1}".to_vec(), b"{\"a\":2}".to_vec()]
        );
        assert!(split.transmissions.is_empty() && !split.replace);
        assert!(
            matches!(&first[0], Logged::Commit { commit, .. } if matches!(&commit.state, StateWrite::Whole(j) if j == b"{\"n\":0}"))
        );
        assert!(matches!(&first[2], Logged::Cursor { name, position: 42 } if name == "dispatcher"));
        let (Logged::Commit { commit: read, .. }, Logged::Commit { commit: wrote, .. }) =
            (&batches[1].1[0], &c)
        else {
            panic!("commits");
        };
        assert_eq!(read.change, wrote.change);
        assert_eq!(wal.batch, 2);

        // A checkpoint starts the log over: a shorter new round leaves the older records behind
        // it, which must not be read as newer batches.
        wal.reset();
        wal.append(3, &[&a]).expect("append");
        drop(wal);
        let (_, batches) = Wal::open(&path, 7).expect("reopen");
        assert_eq!(batches.iter().map(|(b, _)| *b).collect::<Vec<_>>(), [3]);

        // A torn record (its last byte lost) ends the log before it.
        let mut bytes = std::fs::read(&path).expect("read");
        let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        bytes[16 + len - 1] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let (_, batches) = Wal::open(&path, 7).expect("reopen");
        assert!(batches.is_empty());

        // The log of another database is not applied, and is started over.
        std::fs::write(&path, &bytes[..]).expect("write");
        let (mut wal, _) = Wal::open(&path, 7).expect("reopen");
        wal.append(4, &[&a]).expect("append");
        drop(wal);
        let (_, batches) = Wal::open(&path, 8).expect("open as another database");
        assert!(batches.is_empty());
        let (_, batches) = Wal::open(&path, 7).expect("reopen");
        assert!(
            batches.is_empty(),
            "the other database's open started the log over"
        );
    }

    /// Name lengths from none to over two blocks, so records end anywhere in a block.
    fn cursor_len(n: usize) -> usize {
        (n * 997) % 9000
    }

    fn cursor(n: usize) -> Logged {
        Logged::Cursor {
            name: "c".repeat(cursor_len(n)),
            position: n as u64,
        }
    }

    fn read_back(batches: &Batches) -> Vec<(u64, Vec<(usize, u64)>)> {
        batches
            .iter()
            .map(|(b, writes)| {
                let writes = writes
                    .iter()
                    .map(|w| match w {
                        Logged::Cursor { name, position } => (name.len(), *position),
                        Logged::Commit { .. } => panic!("only cursors were logged"),
                    })
                    .collect();
                (*b, writes)
            })
            .collect()
    }

    #[test]
    fn records_of_any_size_read_back_in_order_after_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(WAL_FILE_NAME);
        let (mut wal, none) = Wal::open(&path, 7).expect("open");
        assert!(none.is_empty());
        let mut expected = Vec::new();
        for batch in 1..=40u64 {
            let ns: Vec<usize> = (0..(batch as usize % 3) + 1)
                .map(|k| batch as usize * 3 + k)
                .collect();
            let writes: Vec<Logged> = ns.iter().map(|&n| cursor(n)).collect();
            let refs: Vec<&Logged> = writes.iter().collect();
            wal.append(batch, &refs).expect("append");
            expected.push((
                batch,
                ns.iter().map(|&n| (cursor_len(n), n as u64)).collect(),
            ));
        }
        drop(wal);
        let (_, batches) = Wal::open(&path, 7).expect("reopen");
        assert_eq!(read_back(&batches), expected);
        assert_eq!(batches.len(), 40);

        // Started over: the next round's records replace the first ones, and reading stops
        // after them, not at the older round's records further on.
        let (mut wal, _) = Wal::open(&path, 7).expect("reopen");
        wal.batch = 40;
        wal.reset();
        let writes = [cursor(5), cursor(6)];
        wal.append(41, &[&writes[0], &writes[1]]).expect("append");
        drop(wal);
        let (_, batches) = Wal::open(&path, 7).expect("reopen");
        assert_eq!(
            read_back(&batches),
            vec![(41, vec![(cursor_len(5), 5), (cursor_len(6), 6)])]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn records_are_written_directly_where_the_file_system_takes_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(WAL_FILE_NAME);
        let (wal, _) = Wal::open(&path, 7).expect("open");
        let probe = dir.path().join("probe");
        std::fs::write(&probe, [0u8; BLOCK]).expect("probe");
        let takes_direct = open_direct(&probe).is_some_and(|f| {
            let aligned = vec![0u8; 2 * BLOCK];
            let shift = aligned.as_ptr().align_offset(BLOCK);
            f.write_all_at(&aligned[shift..shift + BLOCK], 0).is_ok()
        });
        assert_eq!(wal.segments[0].direct.is_some(), takes_direct);
        assert_eq!(wal.segments[1].direct.is_some(), takes_direct);
    }
}
