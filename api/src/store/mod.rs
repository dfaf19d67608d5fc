//! Durable state behind one trait, so an etcd implementation can replace the
//! embedded one without touching the services or the driver.
//!
//! The store holds bytes; the driver decides what they mean
//! ([`crate::records`]). It keeps four things:
//! - the **log**: records numbered 1, 2, 3, … in the order the driver applied
//!   them, appended in atomic batches;
//! - the **snapshot**: one blob covering the log up to a sequence number;
//!   writing one deletes the records it covers (compaction);
//! - **job side data** (container, labels, limits) by job id, put with the
//!   record that created the job and deleted with the one that forgot it;
//! - **ledger samples** by time, for range queries and finance reports
//!   (down-sampled by deleting some: they are cumulative).
//!
//! Every [`Store::append`] is durable when it returns (fsync); the driver
//! acknowledges nothing before that.
//!
//! Two implementations: [`redb::RedbStore`], one embedded file (the
//! zero-setup default), and [`etcd::EtcdStore`], for production.

pub mod etcd;
pub mod redb;

/// A store failure. The driver treats any as fatal: its core is then ahead
/// of the disk, so it stops rather than acknowledge what it cannot keep.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("store: {0}")]
    Backend(String),
    /// The data on disk is not what this version writes.
    #[error("store: {0}")]
    Corrupt(String),
    /// The store could not be reached (etcd down, a timeout, an election in
    /// etcd itself). The write may or may not have happened; every
    /// [`Store::append`] is idempotent, so the driver retries the same batch
    /// until it is durable, acknowledging nothing meanwhile.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// This replica no longer holds leadership: a fenced write was refused
    /// because the election key it was conditional on is gone (the lease
    /// expired and another replica took over). The driver stops at once.
    #[error("deposed: {0}")]
    Deposed(String),
}

/// What a restart reads back.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The latest snapshot and the last sequence number it covers.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// Records after the snapshot, in order, with their sequence numbers.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Side data of every job the store knows.
    pub jobs: Vec<(u64, Vec<u8>)>,
}

/// One atomic write.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// Records to append, with consecutive sequence numbers after the last one.
    pub records: Vec<(u64, Vec<u8>)>,
    /// Job side data to put (create, or update on cancel).
    pub put_jobs: Vec<(u64, Vec<u8>)>,
    /// Job side data to delete (forgotten jobs).
    pub delete_jobs: Vec<u64>,
    /// Ledger samples to put, by time (ms since the Unix epoch).
    pub put_samples: Vec<(u64, Vec<u8>)>,
    /// Delete ledger samples older than this.
    pub delete_samples_before: Option<u64>,
    /// Delete these ledger samples (down-sampling).
    pub delete_samples: Vec<u64>,
}

impl Batch {
    /// True if the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
            && self.put_jobs.is_empty()
            && self.delete_jobs.is_empty()
            && self.put_samples.is_empty()
            && self.delete_samples_before.is_none()
            && self.delete_samples.is_empty()
    }

    /// Bytes of records in the batch.
    pub fn record_bytes(&self) -> usize {
        self.records.iter().map(|(_, r)| r.len()).sum()
    }
}

/// Durable state (see the module doc).
pub trait Store: Send + 'static {
    /// Reads the latest snapshot, the records after it, and the job side data.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Applies a batch atomically; durable when it returns. Idempotent:
    /// applying the same batch again (after an [`StoreError::Unavailable`]
    /// whose outcome is unknown) leaves the same state.
    fn append(&mut self, batch: &Batch) -> Result<(), StoreError>;
    /// Replaces the snapshot with one covering the log through `through`,
    /// and deletes the records it covers, atomically.
    fn write_snapshot(&mut self, through: u64, snapshot: &[u8]) -> Result<(), StoreError>;
    /// The latest ledger sample at or before `at` (ms), if any.
    fn sample_at_or_before(&self, at: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
    /// The earliest ledger sample, if any.
    fn first_sample(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;
    /// The times of the ledger samples in `from..to` (ms), in order.
    fn sample_times(&self, from: u64, to: u64) -> Result<Vec<u64>, StoreError>;
    /// The size of the store on disk, in bytes (for metrics).
    fn size_bytes(&self) -> u64;
}
