//! Reservation sources: where the market's reserved capacity, streaming
//! demand and batch fleet come from, as one plain [`Snapshot`] per refresh.
//!
//! ```text
//!   StaticFile (TOML, zero setup) ─┐                        ┌─▶ status(): last good
//!                                  ├─▶ Snapshot ─▶ Refresher┤   snapshot, age, stale
//!   Ec2 (feature `ec2`): Describe- ┘   per pool:            └─▶ subscribe(): changes
//!   ReservedInstances, Instances,      reservations (start/end), reserved IE,
//!   InstanceTypes, several regions     streaming IE, batch fleet, item errors
//! ```
//!
//! A source only gathers records; [`snapshot`] assigns them to pools and
//! converts them to instance equivalents with the market's
//! [`ebb_scheduler::Catalog`] (extended with the types the source described),
//! so both sources follow one set of rules. Items that cannot be counted
//! (an unknown instance type, no pool for a zone) are listed in
//! [`Snapshot::errors`], never counted as zero silently.
//!
//! The shell turns a snapshot into core inputs: per pool,
//! [`PoolCapacity::core_reservations_at`] at `now` and again at every
//! [`Snapshot::next_change_after`] (a reservation starting or ending), and
//! [`PoolCapacity::streaming_ie`] as streaming demand when no demand feed is
//! configured.
//!
//! **Architecture Invariant:** no AWS SDK type appears outside `ec2.rs`; the
//! rest of the workspace sees only the plain types of this module.

pub mod feed;
pub mod refresh;
pub mod snapshot;
pub mod static_file;

#[cfg(feature = "ec2")]
pub mod ec2;

use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use ebb_scheduler::Timestamp;

pub use refresh::{CapacityStatus, RefreshReport, Refresher};
pub use snapshot::{
    BatchInstance, FleetInstance, Item, ItemError, OfferingClass, PoolCapacity, PoolDef,
    PoolReservation, ReservationRecord, Role, Scope, Snapshot, apportion_regional,
    to_core_reservation,
};
pub use static_file::{StaticFile, StaticFileError};

#[cfg(feature = "ec2")]
pub use ec2::{Ec2, Ec2Config, Ec2ErrorKind, TagMatch};

/// A boxed future, so that sources can be used as `dyn ReservationSource`
/// (the server picks one at run time from its configuration).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Something that can say, now, what is reserved, what streaming uses and
/// which batch hosts run, per pool.
pub trait ReservationSource: Send + Sync {
    /// A short description for logs and status, e.g. `ec2 us-east-1,us-west-2`.
    fn describe(&self) -> String;

    /// Reads the source. `now` (ms since the Unix epoch) becomes the
    /// snapshot's `fetched_at`: reservations and demand curves are evaluated
    /// at that instant.
    fn fetch(&self, now: Timestamp) -> BoxFuture<'_, Result<Snapshot, SourceError>>;
}

/// A fetch that failed as a whole (per-item problems are [`ItemError`]s).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The static reservations file could not be read or is invalid.
    #[error(transparent)]
    StaticFile(#[from] StaticFileError),
    /// The source's configuration is invalid.
    #[error("invalid field `{field}`: {message}")]
    Config {
        /// Dotted path of the offending field.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// An EC2 call failed (after the SDK's retries).
    #[cfg(feature = "ec2")]
    #[error("ec2 {operation} in {region} failed ({kind}): {message}")]
    Ec2 {
        /// The region called.
        region: String,
        /// The API operation, e.g. `DescribeInstances`.
        operation: &'static str,
        /// What kind of failure.
        kind: Ec2ErrorKind,
        /// The SDK's error with its causes.
        message: String,
    },
}

/// The wall clock as a core timestamp (ms since the Unix epoch), for the
/// server and the refresher task.
pub fn unix_now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp::from_millis(ms)
}
