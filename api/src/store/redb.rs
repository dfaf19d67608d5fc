//! The embedded store: one redb file (`ebb.redb`) in the data directory.
//!
//! redb is pure Rust (no C toolchain or system library), ACID with
//! copy-on-write B-trees, crash-safe by default (a commit with
//! `Durability::Immediate` is on disk when it returns, and a torn write
//! leaves the previous commit intact), and keeps everything in one file.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::records::FORMAT_VERSION;
use crate::store::{Batch, Loaded, Store, StoreError};

const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
const LOG: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("log");
const SNAPSHOT: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("snapshot");
const JOBS: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("jobs");
const SAMPLES: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("ledger_samples");

/// The redb-backed [`Store`].
pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| backend(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join("ebb.redb");
        let db =
            Database::create(&path).map_err(|e| backend(format!("{}: {e}", path.display())))?;
        let txn = db.begin_write().map_err(backend)?;
        {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let version = meta
                .get("format_version")
                .map_err(backend)?
                .map(|v| v.value());
            match version {
                None => {
                    meta.insert("format_version", u64::from(FORMAT_VERSION))
                        .map_err(backend)?;
                }
                Some(v) if v == u64::from(FORMAT_VERSION) => {}
                Some(v) => {
                    return Err(StoreError::Corrupt(format!(
                        "{} has format version {v}; this server reads version {FORMAT_VERSION}",
                        path.display()
                    )));
                }
            }
            txn.open_table(LOG).map_err(backend)?;
            txn.open_table(SNAPSHOT).map_err(backend)?;
            txn.open_table(JOBS).map_err(backend)?;
            txn.open_table(SAMPLES).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(RedbStore { db, path })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let snapshots = txn.open_table(SNAPSHOT).map_err(backend)?;
        let snapshot = snapshots
            .last()
            .map_err(backend)?
            .map(|(k, v)| (k.value(), v.value().to_vec()));
        let after = snapshot.as_ref().map_or(0, |(s, _)| *s);
        let log = txn.open_table(LOG).map_err(backend)?;
        let mut records = Vec::new();
        for (expect, entry) in ((after + 1)..).zip(log.range((after + 1)..).map_err(backend)?) {
            let (k, v) = entry.map_err(backend)?;
            if k.value() != expect {
                return Err(StoreError::Corrupt(format!(
                    "log has a gap: record {} follows {}",
                    k.value(),
                    expect - 1
                )));
            }
            records.push((k.value(), v.value().to_vec()));
        }
        let jobs_table = txn.open_table(JOBS).map_err(backend)?;
        let mut jobs = Vec::new();
        for entry in jobs_table.iter().map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            jobs.push((k.value(), v.value().to_vec()));
        }
        Ok(Loaded {
            snapshot,
            records,
            jobs,
        })
    }

    fn append(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut log = txn.open_table(LOG).map_err(backend)?;
            for (seq, bytes) in &batch.records {
                log.insert(*seq, bytes.as_slice()).map_err(backend)?;
            }
            let mut jobs = txn.open_table(JOBS).map_err(backend)?;
            for (id, bytes) in &batch.put_jobs {
                jobs.insert(*id, bytes.as_slice()).map_err(backend)?;
            }
            for id in &batch.delete_jobs {
                jobs.remove(*id).map_err(backend)?;
            }
            let mut samples = txn.open_table(SAMPLES).map_err(backend)?;
            for (at, bytes) in &batch.put_samples {
                samples.insert(*at, bytes.as_slice()).map_err(backend)?;
            }
            if let Some(before) = batch.delete_samples_before {
                samples.retain_in(..before, |_, _| false).map_err(backend)?;
            }
            for at in &batch.delete_samples {
                samples.remove(*at).map_err(backend)?;
            }
        }
        txn.commit().map_err(backend)
    }

    fn write_snapshot(&mut self, through: u64, snapshot: &[u8]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(backend)?;
        {
            let mut snapshots = txn.open_table(SNAPSHOT).map_err(backend)?;
            snapshots.retain(|_, _| false).map_err(backend)?;
            snapshots.insert(through, snapshot).map_err(backend)?;
            let mut log = txn.open_table(LOG).map_err(backend)?;
            log.retain_in(..=through, |_, _| false).map_err(backend)?;
        }
        txn.commit().map_err(backend)
    }

    fn sample_at_or_before(&self, at: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let samples = txn.open_table(SAMPLES).map_err(backend)?;
        let mut range = samples.range(..=at).map_err(backend)?;
        match range.next_back() {
            None => Ok(None),
            Some(entry) => {
                let (k, v) = entry.map_err(backend)?;
                Ok(Some((k.value(), v.value().to_vec())))
            }
        }
    }

    fn first_sample(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let samples = txn.open_table(SAMPLES).map_err(backend)?;
        Ok(samples
            .first()
            .map_err(backend)?
            .map(|(k, v)| (k.value(), v.value().to_vec())))
    }

    fn sample_times(&self, from: u64, to: u64) -> Result<Vec<u64>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let samples = txn.open_table(SAMPLES).map_err(backend)?;
        samples
            .range(from..to)
            .map_err(backend)?
            .map(|entry| entry.map(|(k, _)| k.value()).map_err(backend))
            .collect()
    }

    fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(records: &[(u64, &str)]) -> Batch {
        Batch {
            records: records
                .iter()
                .map(|(s, r)| (*s, r.as_bytes().to_vec()))
                .collect(),
            ..Batch::default()
        }
    }

    #[test]
    fn appends_survive_reopen_and_snapshots_compact_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RedbStore::open(dir.path()).unwrap();
            s.append(&batch(&[(1, "a"), (2, "b")])).unwrap();
            let mut b = batch(&[(3, "c")]);
            b.put_jobs.push((7, b"job7".to_vec()));
            b.put_samples.push((1000, b"s1".to_vec()));
            b.put_samples.push((2000, b"s2".to_vec()));
            s.append(&b).unwrap();
        }
        let mut s = RedbStore::open(dir.path()).unwrap();
        let l = s.load().unwrap();
        assert!(l.snapshot.is_none());
        assert_eq!(l.records.len(), 3);
        assert_eq!(l.jobs, vec![(7, b"job7".to_vec())]);
        s.write_snapshot(2, b"snap").unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.snapshot, Some((2, b"snap".to_vec())));
        assert_eq!(l.records, vec![(3, b"c".to_vec())]);
        assert_eq!(s.sample_at_or_before(1999).unwrap().unwrap().0, 1000);
        assert_eq!(s.sample_at_or_before(999).unwrap(), None);
        assert_eq!(s.first_sample().unwrap().unwrap().0, 1000);
        let b = Batch {
            delete_jobs: vec![7],
            delete_samples_before: Some(1500),
            ..Batch::default()
        };
        s.append(&b).unwrap();
        let l = s.load().unwrap();
        assert!(l.jobs.is_empty());
        assert_eq!(s.first_sample().unwrap().unwrap().0, 2000);
        let mut b = Batch::default();
        b.put_samples.push((3000, b"s3".to_vec()));
        b.put_samples.push((4000, b"s4".to_vec()));
        s.append(&b).unwrap();
        assert_eq!(s.sample_times(2000, 4000).unwrap(), [2000, 3000]);
        let b = Batch {
            delete_samples: vec![3000],
            ..Batch::default()
        };
        s.append(&b).unwrap();
        assert_eq!(s.sample_times(0, u64::MAX).unwrap(), [2000, 4000]);
    }

    #[test]
    fn a_gap_in_the_log_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RedbStore::open(dir.path()).unwrap();
        s.append(&batch(&[(1, "a"), (3, "c")])).unwrap();
        assert!(matches!(s.load(), Err(StoreError::Corrupt(_))));
    }
}
