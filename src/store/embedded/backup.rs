//! Consistent copies of the embedded store: of a live node from one snapshot, or of a stopped
//! node's file.

use super::*;

/// Copies every table of the snapshot `src` into the new database file `to` (which must not
/// exist), fsynced; returns its size in bytes. The snapshot is consistent: one read transaction.
pub(super) fn copy_snapshot(src: &ReadTransaction, to: &Path) -> Result<u64, StoreError> {
    fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
        src: &ReadTransaction,
        dst: &WriteTransaction,
        def: TableDefinition<K, V>,
    ) -> Result<(), StoreError> {
        let from = src.open_table(def).map_err(unavailable)?;
        let mut into = dst.open_table(def).map_err(unavailable)?;
        for row in from.iter().map_err(unavailable)? {
            let (k, v) = row.map_err(unavailable)?;
            into.insert(k.value(), v.value()).map_err(unavailable)?;
        }
        Ok(())
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(|e| unavailable(format!("{}: {e}", to.display())))?;
    let dst = Database::create(to).map_err(unavailable)?;
    let txn = dst.begin_write().map_err(unavailable)?;
    copy(src, &txn, DIALOGS)?;
    copy(src, &txn, CHILDREN)?;
    copy(src, &txn, DLOG)?;
    copy(src, &txn, DCH)?;
    copy(src, &txn, GLOG)?;
    copy(src, &txn, BY_RESOURCE)?;
    copy(src, &txn, EV_INDEX)?;
    copy(src, &txn, EXT)?;
    copy(src, &txn, HELD)?;
    copy(src, &txn, HELD_UNTIL)?;
    copy(src, &txn, META)?;
    copy(src, &txn, CURSORS)?;
    copy(src, &txn, REGISTRY)?;
    copy(src, &txn, SUBS)?;
    copy(src, &txn, DELIVERIES)?;
    copy(src, &txn, DEAD)?;
    copy(src, &txn, PENDING)?;
    // A copy is a database of its own: no commit log of the original applies to it.
    txn.open_table(META)
        .map_err(unavailable)?
        .insert("instance", rand::random::<u64>())
        .map_err(unavailable)?;
    txn.commit().map_err(unavailable)?;
    drop(dst);
    std::fs::metadata(to)
        .map(|m| m.len())
        .map_err(|e| unavailable(format!("{}: {e}", to.display())))
}

impl EmbeddedStore {
    /// A consistent copy of the live store at `to` (a new file), taken from one snapshot while
    /// the node keeps serving; restore it by placing it as `store.redb` in a stopped node's
    /// data_dir.
    pub fn backup(&self, to: &Path) -> Result<u64, StoreError> {
        let snapshot = self.db.begin_read().map_err(unavailable)?;
        copy_snapshot(&snapshot, to)
    }
}

/// A copy of the store of a stopped node (the caller holds the data_dir lock).
pub fn backup_file(data_dir: &Path, to: &Path) -> anyhow::Result<u64> {
    let path = data_dir.join(FILE_NAME);
    anyhow::ensure!(path.exists(), "no store at {}", path.display());
    let db = Database::create(&path)?;
    // Commits after the last checkpoint are in the commit log: apply them first.
    let instance = {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        meta.get("instance")?.map(|v| v.value()).unwrap_or(0)
    };
    let (mut wal, batches) = super::wal::Wal::open(&data_dir.join(super::WAL_FILE_NAME), instance)?;
    super::writer::recover(&db, batches, &mut wal)?;
    let snapshot = db.begin_read()?;
    Ok(copy_snapshot(&snapshot, to)?)
}
