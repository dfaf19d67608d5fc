//! The production store: the same log, snapshot, job side data and ledger
//! samples as [`super::redb`], kept in etcd under a key prefix.
//!
//! ## Keys (under the prefix `P`, which ends in `/`)
//! ```text
//! P/format_version                 records::FORMAT_VERSION, decimal
//! P/log/<seq:020>/<part:06>        one log record, split into parts
//! P/jobs/<id:020>                  job side data (one value)
//! P/samples/<ms:020>               one ledger sample (one value)
//! P/snapshot                       "<generation> <through> <parts> <bytes>": the current snapshot
//! P/snapshot-data/<gen:020>/<part:06>
//! P/pending                        "<parts>": a staged batch that is committed but not yet applied
//! P/staged/<part:06>               that batch, encoded
//! ```
//! Numbers are zero-padded so that etcd's byte order is numeric order and a
//! range `[log/<a>, log/<b>)` is exactly the records `a..b`.
//!
//! ## Atomicity
//! etcd refuses a transaction of more than 128 operations
//! (`--max-txn-ops`) or a request over 1.5 MiB (`--max-request-bytes`).
//! A batch that fits in one transaction (the common case: a round, a
//! submission) is written as one. A larger one is **staged**: its operations
//! are encoded as one blob, written in parts under `P/staged/` (invisible to
//! [`Store::load`]), then one small transaction puts `P/pending`, which is
//! the commit point. The operations are then applied in as many transactions
//! as they need, and a last one deletes `P/pending` and the parts. A crash
//! before the commit point leaves only unreferenced parts (deleted at open);
//! a crash after it is finished at the next open ("roll forward") before
//! anything is read. Every operation is a put or a range delete, so applying
//! one twice is harmless. Putting the whole batch in one value instead would
//! not remove the need for parts (values are capped by the request limit too)
//! and would make range reads of samples impossible, hence this design.
//!
//! A snapshot is always written in parts under a new generation; one
//! transaction then switches `P/snapshot` to it and deletes the log records
//! it covers and the previous generation (range deletes are one operation
//! each, whatever they cover).
//!
//! ## Durability
//! etcd answers a write after a quorum has it in its fsynced WAL, so a write
//! is durable when [`Store::append`] returns. An error, a timeout included,
//! is returned as [`StoreError::Backend`]: the driver then stops without
//! acknowledging anything (the write may or may not have happened, which a
//! restart reads back either way).
//!
//! ## Threads
//! The driver is a plain thread, but [`Store::load`] and the first
//! [`Store::first_sample`] run inside `ebb server`'s async start-up, where
//! `Handle::block_on` panics. So the store owns a one-worker tokio runtime
//! and waits for its futures over a std channel, which works from any thread.
//!
//! ## Fencing
//! With [`EtcdOptions::fence`] set (as `ebb server` always does: see
//! [`crate::ha`]), every transaction this store sends is conditional on the
//! replica's election key still existing with the create revision it had
//! when the replica won. The key is attached to the replica's lease, so
//! once the lease expires (a crash, a long pause, a partition) and another
//! replica takes over, every later write of the old leader fails that
//! compare and returns [`StoreError::Deposed`]: a deposed leader that wakes
//! up cannot commit anything, whatever its clock says.
//!
//! ## Retries
//! A request that fails for a reason that may pass (etcd unreachable, a
//! timeout, etcd electing its own leader) is [`StoreError::Unavailable`].
//! Its outcome is unknown, so every write is safe to repeat: puts and range
//! deletes are idempotent, a staged batch first finishes or discards the
//! previous attempt's, and a snapshot re-reads which generation is current.

use std::time::Duration;

use std::path::PathBuf;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity,
    KvClient, SortOrder, SortTarget, TlsOptions, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};

use crate::records::FORMAT_VERSION;
use crate::store::{Batch, Loaded, Store, StoreError};

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// Bytes of keys and values per transaction: 1 MiB leaves a third of etcd's
/// default 1.5 MiB request limit for framing and key overhead.
pub const DEFAULT_MAX_TXN_BYTES: usize = 1 << 20;
/// Largest stored value part: small enough that a page of 1,024 parts (one
/// range read) is 64 MiB, large enough that a 100 MB snapshot is under
/// 1,600 keys.
pub const DEFAULT_PART_BYTES: usize = 64 << 10;
/// Keys per range read of single values (job side data, samples), which may
/// be as large as a transaction: at most 128 MiB a page.
const PAGE_KEYS: i64 = 128;
/// Keys per range read of parts (log, snapshot, staged batch), at most
/// [`DEFAULT_PART_BYTES`] each: 64 MiB a page, and few round trips for a
/// long log (10,000 records after a snapshot are 10 pages).
const PAGE_PARTS: i64 = 1024;
/// The client's limit on one response: above either page's worst case.
const MAX_RESPONSE_BYTES: usize = 256 << 20;
/// Connecting to etcd: a few elections' worth, so a cluster that is electing
/// a leader at our start-up is waited for.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// One request: a 1 MiB transaction on a healthy cluster takes milliseconds;
/// ten seconds is a stuck cluster, and the driver had better stop than hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to reach etcd.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client endpoints (`http://host:2379`).
    pub endpoints: Vec<String>,
    /// Key prefix; a `/` is added if it does not end in one.
    pub prefix: String,
    /// Operations per transaction.
    pub max_txn_ops: usize,
    /// Bytes of keys and values per transaction.
    pub max_txn_bytes: usize,
    /// Largest value part.
    pub part_bytes: usize,
    /// Make every write conditional on this election key (see the module
    /// doc); `None` for tools and tests that open the store on their own.
    pub fence: Option<Fence>,
    /// Connection security and credentials.
    pub access: EtcdAccess,
}

/// The election key a leader's writes are conditional on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The key etcd's election API created for this replica.
    pub key: Vec<u8>,
    /// Its create revision: a key of the same name created later (a new
    /// campaign) does not match.
    pub revision: i64,
}

/// How to authenticate to etcd (all optional).
#[derive(Clone, Debug, Default)]
pub struct EtcdAccess {
    /// CA certificate (PEM) to verify etcd's TLS certificate; set it to use
    /// `https://` endpoints.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate and key (PEM), for etcd's `--client-cert-auth`.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// etcd user name and password (etcd's `auth enable`).
    pub user: Option<(String, String)>,
}

impl EtcdAccess {
    /// The client's connection options with these credentials.
    pub fn connect_options(&self) -> Result<ConnectOptions, StoreError> {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        if let Some((user, password)) = &self.user {
            o = o.with_user(user.clone(), password.clone());
        }
        if self.ca_cert.is_some() || self.client_cert.is_some() {
            // With the `ec2` feature rustls has two providers and must be
            // told which (see `install_crypto_provider`).
            crate::server::install_crypto_provider();
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.ca_cert {
                let pem = std::fs::read(ca).map_err(|e| {
                    StoreError::Backend(format!("store.etcd_ca_cert {}: {e}", ca.display()))
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = &self.client_cert {
                let c = std::fs::read(cert).map_err(|e| {
                    StoreError::Backend(format!("store.etcd_client_cert {}: {e}", cert.display()))
                })?;
                let k = std::fs::read(key).map_err(|e| {
                    StoreError::Backend(format!("store.etcd_client_key {}: {e}", key.display()))
                })?;
                tls = tls.identity(Identity::from_pem(c, k));
            }
            o = o.with_tls(tls);
        }
        Ok(o)
    }
}

impl EtcdOptions {
    /// Options with etcd's default limits.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            prefix: prefix.into(),
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
            max_txn_bytes: DEFAULT_MAX_TXN_BYTES,
            part_bytes: DEFAULT_PART_BYTES,
            fence: None,
            access: EtcdAccess::default(),
        }
    }
}

/// One write operation; a batch becomes a list of these.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    /// Deletes `[start, end)`.
    DeleteRange(Vec<u8>, Vec<u8>),
}

impl Op {
    fn bytes(&self) -> usize {
        match self {
            Op::Put(k, v) => k.len() + v.len(),
            Op::DeleteRange(s, e) => s.len() + e.len(),
        }
    }

    fn into_txn_op(self) -> TxnOp {
        match self {
            Op::Put(k, v) => TxnOp::put(k, v, None),
            Op::DeleteRange(s, e) => TxnOp::delete(s, Some(DeleteOptions::new().with_range(e))),
        }
    }
}

/// Where a test stops a write, to play a crash at that point.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashPoint {
    /// A staged batch's parts are written; the commit point is not.
    BeforeCommit,
    /// The commit point is written; the operations are not applied.
    AfterCommit,
}

/// A key and its value, as read.
type Kv = (Vec<u8>, Vec<u8>);

/// The etcd-backed [`Store`].
pub struct EtcdStore {
    /// `Some` until drop (see [`Drop`]).
    rt: Option<tokio::runtime::Runtime>,
    kv: KvClient,
    client: Client,
    opts: EtcdOptions,
    /// The prefix, ending in `/`.
    prefix: String,
    /// The current snapshot's generation (0: none yet).
    generation: u64,
    #[cfg(test)]
    crash_at: Option<CrashPoint>,
}

fn backend(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("etcd {what}: {e}"))
}

/// An etcd client error: [`StoreError::Unavailable`] where retrying may
/// succeed (no connection, a timeout, etcd between leaders), otherwise
/// [`StoreError::Backend`] (a refused request, bad credentials).
pub fn rpc_error(what: &str, e: etcd_client::Error) -> StoreError {
    use tonic::Code;
    let transient = match &e {
        etcd_client::Error::GRpcStatus(s) => !matches!(
            s.code(),
            Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::ResourceExhausted
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::Unimplemented
                | Code::NotFound
                | Code::AlreadyExists
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    };
    if transient {
        StoreError::Unavailable(format!("etcd {what}: {e}"))
    } else {
        backend(what, e)
    }
}

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdStore {
    /// Connects, checks the format version (writing it on first use), and
    /// finishes or discards a batch or snapshot a crash interrupted.
    pub fn open(opts: EtcdOptions) -> Result<EtcdStore, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Backend(
                "store.etcd_endpoints is empty: name at least one etcd endpoint".into(),
            ));
        }
        if opts.prefix.is_empty() {
            return Err(StoreError::Backend(
                "store.etcd_prefix is empty: use e.g. \"/ebb/\"".into(),
            ));
        }
        let mut prefix = opts.prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ebb-etcd")
            .enable_all()
            .build()
            .map_err(|e| backend("runtime", e))?;
        let endpoints = opts.endpoints.clone();
        let connect = opts.access.connect_options()?;
        let client = wait(&rt, async move {
            Client::connect(endpoints, Some(connect)).await
        })?
        .map_err(|e| rpc_error(&format!("connecting to {}", opts.endpoints.join(",")), e))?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let mut store = EtcdStore {
            rt: Some(rt),
            kv,
            client,
            opts,
            prefix,
            generation: 0,
            #[cfg(test)]
            crash_at: None,
        };
        store.check_version()?;
        store.recover()?;
        Ok(store)
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.prefix).into_bytes()
    }

    fn log_key(&self, seq: u64) -> Vec<u8> {
        self.key(&format!("log/{seq:020}"))
    }

    fn job_key(&self, id: u64) -> Vec<u8> {
        self.key(&format!("jobs/{id:020}"))
    }

    fn sample_key(&self, at: u64) -> Vec<u8> {
        self.key(&format!("samples/{at:020}"))
    }

    fn snapshot_data(&self, generation: u64) -> Vec<u8> {
        self.key(&format!("snapshot-data/{generation:020}/"))
    }

    /// Runs a future on the store's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        wait(self.rt.as_ref().expect("runtime until drop"), fut)
    }

    fn get(&self, key: Vec<u8>, opts: GetOptions) -> Result<Vec<Kv>, StoreError> {
        let mut kv = self.kv.clone();
        let mut resp = self
            .run(async move { kv.get(key, Some(opts)).await })?
            .map_err(|e| rpc_error("get", e))?;
        Ok(resp
            .take_kvs()
            .into_iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect())
    }

    fn get_one(&self, key: Vec<u8>) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .get(key, GetOptions::new())?
            .into_iter()
            .next()
            .map(|(_, v)| v))
    }

    /// Every key in `[start, end)` with its value, in key order, read in
    /// pages of `page` keys.
    fn get_range(&self, start: Vec<u8>, end: Vec<u8>, page: i64) -> Result<Vec<Kv>, StoreError> {
        let mut out = Vec::new();
        let mut from = start;
        loop {
            let kvs = self.get(
                from.clone(),
                GetOptions::new().with_range(end.clone()).with_limit(page),
            )?;
            let full = kvs.len() as i64 == page;
            if let Some((last, _)) = kvs.last() {
                // The next key after `last`.
                from = last.clone();
                from.push(0);
            }
            out.extend(kvs);
            if !full {
                return Ok(out);
            }
        }
    }

    /// One transaction, fenced (see the module doc); an unacknowledged one
    /// is an error. `Ok(false)`: one of `when` did not hold.
    fn txn(&self, ops: Vec<Op>, mut when: Vec<Compare>) -> Result<bool, StoreError> {
        let own = !when.is_empty();
        if let Some(f) = &self.opts.fence {
            when.insert(
                0,
                Compare::create_revision(f.key.clone(), CompareOp::Equal, f.revision),
            );
        }
        let mut kv = self.kv.clone();
        let txn = Txn::new()
            .when(when)
            .and_then(ops.into_iter().map(Op::into_txn_op).collect::<Vec<_>>());
        let resp = self
            .run(async move { kv.txn(txn).await })?
            .map_err(|e| rpc_error("transaction", e))?;
        if resp.succeeded() {
            return Ok(true);
        }
        if let Some(f) = &self.opts.fence
            && (!own || !self.fence_holds(f)?)
        {
            return Err(StoreError::Deposed(format!(
                "the election key {} (revision {}) is gone: another replica leads; this one wrote nothing",
                String::from_utf8_lossy(&f.key),
                f.revision
            )));
        }
        Ok(false)
    }

    /// True if the fence's election key still exists with its revision.
    fn fence_holds(&self, f: &Fence) -> Result<bool, StoreError> {
        let mut kv = self.kv.clone();
        let key = f.key.clone();
        let resp = self
            .run(async move { kv.get(key, None).await })?
            .map_err(|e| rpc_error("get", e))?;
        Ok(resp
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == f.revision))
    }

    /// Applies `ops` in as few transactions as the limits allow (each
    /// operation is idempotent; see the module doc for when that is atomic).
    fn apply_in_groups(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let mut group = Vec::new();
        let mut bytes = 0;
        for op in ops {
            if !group.is_empty()
                && (group.len() == self.opts.max_txn_ops
                    || bytes + op.bytes() > self.opts.max_txn_bytes)
            {
                self.txn(std::mem::take(&mut group), vec![])?;
                bytes = 0;
            }
            bytes += op.bytes();
            group.push(op);
        }
        if !group.is_empty() {
            self.txn(group, vec![])?;
        }
        Ok(())
    }

    /// `key/<part:06>` puts of `value` split into parts.
    fn part_ops(&self, base: &[u8], value: &[u8], ops: &mut Vec<Op>) -> usize {
        let mut n = 0;
        for (i, part) in value.chunks(self.opts.part_bytes.max(1)).enumerate() {
            let mut k = base.to_vec();
            k.extend_from_slice(format!("{i:06}").as_bytes());
            ops.push(Op::Put(k, part.to_vec()));
            n += 1;
        }
        if n == 0 {
            // An empty value still has one (empty) part, so it exists.
            let mut k = base.to_vec();
            k.extend_from_slice(b"000000");
            ops.push(Op::Put(k, Vec::new()));
            n = 1;
        }
        n
    }

    /// Joins `base<part:06>` parts read back; checks that none is missing.
    fn join_parts(what: &str, kvs: Vec<Kv>, base_len: usize) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        for (i, (k, v)) in kvs.into_iter().enumerate() {
            if k.get(base_len..) != Some(format!("{i:06}").as_bytes()) {
                return Err(StoreError::Corrupt(format!(
                    "{what}: part {i} is missing (found {})",
                    String::from_utf8_lossy(&k)
                )));
            }
            out.extend_from_slice(&v);
        }
        Ok(out)
    }

    fn check_version(&self) -> Result<(), StoreError> {
        let key = self.key("format_version");
        let ours = FORMAT_VERSION.to_string().into_bytes();
        // Put it if absent, atomically with the check.
        let created = self.txn(
            vec![Op::Put(key.clone(), ours.clone())],
            vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)],
        )?;
        if created {
            return Ok(());
        }
        match self.get_one(key)? {
            Some(v) if v == ours => Ok(()),
            v => Err(StoreError::Corrupt(format!(
                "{}format_version is {}; this server reads version {FORMAT_VERSION}",
                self.prefix,
                v.map_or("missing".into(), |v| String::from_utf8_lossy(&v)
                    .into_owned())
            ))),
        }
    }

    /// Finishes a committed staged batch, deletes uncommitted parts and
    /// snapshot generations that are not current, and reads the generation.
    fn recover(&mut self) -> Result<(), StoreError> {
        self.roll_forward()?;
        let staged = self.key("staged/");
        self.txn(
            vec![Op::DeleteRange(staged.clone(), prefix_end(&staged))],
            vec![],
        )?;
        self.generation = self.current_snapshot()?.map_or(0, |m| m.generation);
        // Generations other than the current one are leftovers of a
        // snapshot write that crashed before its switch.
        let all = self.key("snapshot-data/");
        let current = self.snapshot_data(self.generation);
        self.txn(
            vec![
                Op::DeleteRange(all.clone(), current.clone()),
                Op::DeleteRange(prefix_end(&current), prefix_end(&all)),
            ],
            vec![],
        )?;
        Ok(())
    }

    /// Applies the committed staged batch, if there is one.
    fn roll_forward(&self) -> Result<(), StoreError> {
        let pending = self.key("pending");
        let Some(n) = self.get_one(pending.clone())? else {
            return Ok(());
        };
        let n: usize = String::from_utf8_lossy(&n)
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("{}pending: {e}", self.prefix)))?;
        let staged = self.key("staged/");
        let kvs = self.get_range(staged.clone(), prefix_end(&staged), PAGE_PARTS)?;
        if kvs.len() != n {
            return Err(StoreError::Corrupt(format!(
                "{}pending names {n} staged parts; {} exist",
                self.prefix,
                kvs.len()
            )));
        }
        let bytes = Self::join_parts("staged batch", kvs, staged.len())?;
        let ops: Vec<Op> = postcard::from_bytes(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("staged batch: {e}")))?;
        tracing::info!(
            n_ops = ops.len(),
            "etcd store: applying a committed staged batch"
        );
        self.apply_in_groups(ops)?;
        self.txn(
            vec![
                Op::DeleteRange(pending.clone(), prefix_end(&pending)),
                Op::DeleteRange(staged.clone(), prefix_end(&staged)),
            ],
            vec![],
        )?;
        Ok(())
    }

    /// The batch as puts and range deletes, none overlapping another (etcd
    /// refuses a transaction that puts and deletes the same key), with the
    /// embedded store's order: puts, then deletes, so a delete wins.
    fn batch_ops(&self, batch: &Batch) -> Result<Vec<Op>, StoreError> {
        let mut ops = Vec::new();
        for (seq, bytes) in &batch.records {
            let mut base = self.log_key(*seq);
            base.push(b'/');
            self.part_ops(&base, bytes, &mut ops);
        }
        let mut jobs = std::collections::BTreeMap::new();
        for (id, bytes) in &batch.put_jobs {
            jobs.insert(*id, Some(bytes.clone()));
        }
        for id in &batch.delete_jobs {
            jobs.insert(*id, None);
        }
        for (id, bytes) in jobs {
            let key = self.job_key(id);
            match bytes {
                Some(v) => {
                    self.check_value_size(&format!("job {id} side data"), &key, &v)?;
                    ops.push(Op::Put(key, v));
                }
                None => {
                    let end = prefix_end(&key);
                    ops.push(Op::DeleteRange(key, end));
                }
            }
        }
        let before = batch.delete_samples_before.unwrap_or(0);
        let mut samples = std::collections::BTreeMap::new();
        for (at, bytes) in &batch.put_samples {
            samples.insert(*at, Some(bytes.clone()));
        }
        for at in &batch.delete_samples {
            samples.insert(*at, None);
        }
        for (at, bytes) in samples {
            if at < before {
                continue; // the range delete below covers it
            }
            let key = self.sample_key(at);
            match bytes {
                Some(v) => {
                    self.check_value_size(&format!("ledger sample at {at} ms"), &key, &v)?;
                    ops.push(Op::Put(key, v));
                }
                None => {
                    let end = prefix_end(&key);
                    ops.push(Op::DeleteRange(key, end));
                }
            }
        }
        if before > 0 {
            ops.push(Op::DeleteRange(
                self.key("samples/"),
                self.sample_key(before),
            ));
        }
        Ok(ops)
    }

    /// Job side data and samples are single values (they are overwritten,
    /// and parts of an overwritten value could outlive it).
    fn check_value_size(&self, what: &str, key: &[u8], v: &[u8]) -> Result<(), StoreError> {
        if key.len() + v.len() > self.opts.max_txn_bytes {
            return Err(StoreError::Backend(format!(
                "{what} is {} bytes; the etcd store keeps values up to {} bytes",
                v.len(),
                self.opts.max_txn_bytes - key.len()
            )));
        }
        Ok(())
    }

    fn fits_one_txn(&self, ops: &[Op]) -> bool {
        ops.len() <= self.opts.max_txn_ops
            && ops.iter().map(Op::bytes).sum::<usize>() <= self.opts.max_txn_bytes
    }

    /// Writes a batch too large for one transaction (see the module doc).
    fn append_staged(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        // A previous attempt (one that failed with an unknown outcome) is
        // finished if it reached its commit point, discarded if not.
        self.roll_forward()?;
        let staged = self.key("staged/");
        self.txn(
            vec![Op::DeleteRange(staged.clone(), prefix_end(&staged))],
            vec![],
        )?;
        let blob = postcard::to_stdvec(&ops).map_err(|e| backend("encoding a batch", e))?;
        let mut puts = Vec::new();
        let n = self.part_ops(&staged, &blob, &mut puts);
        self.apply_in_groups(puts)?;
        #[cfg(test)]
        if self.crash_at == Some(CrashPoint::BeforeCommit) {
            return Err(StoreError::Backend("test crash before commit".into()));
        }
        // The commit point. Conditional on there being no pending batch: a
        // second one would mean this store lost track of its own writes.
        let pending = self.key("pending");
        let committed = self.txn(
            vec![Op::Put(pending.clone(), n.to_string().into_bytes())],
            vec![Compare::create_revision(pending, CompareOp::Equal, 0)],
        )?;
        if !committed {
            return Err(StoreError::Corrupt(format!(
                "{}pending exists before a staged batch's commit",
                self.prefix
            )));
        }
        #[cfg(test)]
        if self.crash_at == Some(CrashPoint::AfterCommit) {
            return Err(StoreError::Backend("test crash after commit".into()));
        }
        self.roll_forward()
    }

    fn current_snapshot(&self) -> Result<Option<Manifest>, StoreError> {
        let key = self.key("snapshot");
        let Some(v) = self.get_one(key)? else {
            return Ok(None);
        };
        Manifest::parse(&v).map(Some).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "{}snapshot: {:?}",
                self.prefix,
                String::from_utf8_lossy(&v)
            ))
        })
    }
}

/// `P/snapshot`: which generation is current and what it holds.
#[derive(Debug)]
struct Manifest {
    generation: u64,
    through: u64,
    parts: usize,
    bytes: usize,
}

impl Manifest {
    fn parse(v: &[u8]) -> Option<Manifest> {
        let s = std::str::from_utf8(v).ok()?;
        let mut it = s.split(' ').map(str::parse::<u64>);
        let m = Manifest {
            generation: it.next()?.ok()?,
            through: it.next()?.ok()?,
            parts: it.next()?.ok()? as usize,
            bytes: it.next()?.ok()? as usize,
        };
        it.next().is_none().then_some(m)
    }

    fn encode(&self) -> Vec<u8> {
        format!(
            "{} {} {} {}",
            self.generation, self.through, self.parts, self.bytes
        )
        .into_bytes()
    }
}

/// Runs `fut` on `rt` and blocks this thread (runtime worker or not) until
/// it is done.
fn wait<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv()
        .map_err(|_| StoreError::Backend("etcd runtime stopped".into()))
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside another runtime
        // (a store dropped by a failed async start-up); this does not block.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Store for EtcdStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let snapshot = match self.current_snapshot()? {
            None => None,
            Some(m) => {
                let base = self.snapshot_data(m.generation);
                let kvs = self.get_range(base.clone(), prefix_end(&base), PAGE_PARTS)?;
                if kvs.len() != m.parts {
                    return Err(StoreError::Corrupt(format!(
                        "snapshot generation {} has {} parts; its manifest says {}",
                        m.generation,
                        kvs.len(),
                        m.parts
                    )));
                }
                let bytes = Self::join_parts("snapshot", kvs, base.len())?;
                if bytes.len() != m.bytes {
                    return Err(StoreError::Corrupt(format!(
                        "snapshot generation {} is {} bytes; its manifest says {}",
                        m.generation,
                        bytes.len(),
                        m.bytes
                    )));
                }
                Some((m.through, bytes))
            }
        };
        let after = snapshot.as_ref().map_or(0, |(s, _)| *s);
        let log = self.key("log/");
        let kvs = self.get_range(self.log_key(after + 1), prefix_end(&log), PAGE_PARTS)?;
        // Group parts by sequence number: `<log>/<seq:020>/<part:06>`.
        let mut records: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut parts: Vec<Kv> = Vec::new();
        let mut current: Option<u64> = None;
        let base_len = log.len() + 21;
        let mut finish = |seq: u64, parts: Vec<Kv>| -> Result<(), StoreError> {
            let bytes = Self::join_parts(&format!("record {seq}"), parts, base_len)?;
            let expect = records.last().map_or(after + 1, |(s, _)| s + 1);
            if seq != expect {
                return Err(StoreError::Corrupt(format!(
                    "log has a gap: record {seq} follows {}",
                    expect - 1
                )));
            }
            records.push((seq, bytes));
            Ok(())
        };
        for (k, v) in kvs {
            let seq = std::str::from_utf8(k.get(log.len()..log.len() + 20).unwrap_or_default())
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    StoreError::Corrupt(format!("log key {}", String::from_utf8_lossy(&k)))
                })?;
            if current.is_some_and(|c| c != seq) {
                finish(current.unwrap_or_default(), std::mem::take(&mut parts))?;
            }
            current = Some(seq);
            parts.push((k, v));
        }
        if let Some(seq) = current {
            finish(seq, parts)?;
        }
        let jobs_prefix = self.key("jobs/");
        let mut jobs = Vec::new();
        for (k, v) in self.get_range(jobs_prefix.clone(), prefix_end(&jobs_prefix), PAGE_KEYS)? {
            jobs.push((parse_id(&k, jobs_prefix.len())?, v));
        }
        Ok(Loaded {
            snapshot,
            records,
            jobs,
        })
    }

    fn append(&mut self, batch: &Batch) -> Result<(), StoreError> {
        let ops = self.batch_ops(batch)?;
        if ops.is_empty() {
            return Ok(());
        }
        if self.fits_one_txn(&ops) {
            self.txn(ops, vec![])?;
            Ok(())
        } else {
            self.append_staged(ops)
        }
    }

    fn write_snapshot(&mut self, through: u64, snapshot: &[u8]) -> Result<(), StoreError> {
        // Re-read the current generation: a previous attempt may have
        // switched to the next one before failing with an unknown outcome,
        // and its data must not be taken for leftovers.
        self.generation = self.current_snapshot()?.map_or(0, |m| m.generation);
        let generation = self.generation + 1;
        let base = self.snapshot_data(generation);
        // Leftovers of a crashed attempt at this generation.
        self.txn(
            vec![Op::DeleteRange(base.clone(), prefix_end(&base))],
            vec![],
        )?;
        let mut puts = Vec::new();
        let parts = self.part_ops(&base, snapshot, &mut puts);
        self.apply_in_groups(puts)?;
        let manifest = Manifest {
            generation,
            through,
            parts,
            bytes: snapshot.len(),
        };
        let old = self.snapshot_data(self.generation);
        self.txn(
            vec![
                Op::Put(self.key("snapshot"), manifest.encode()),
                Op::DeleteRange(self.key("log/"), self.log_key(through + 1)),
                Op::DeleteRange(old.clone(), prefix_end(&old)),
            ],
            vec![],
        )?;
        self.generation = generation;
        Ok(())
    }

    fn sample_at_or_before(&self, at: u64) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let start = self.key("samples/");
        let kvs = self.get(
            start.clone(),
            GetOptions::new()
                .with_range(self.sample_key(at.saturating_add(1)))
                .with_sort(SortTarget::Key, SortOrder::Descend)
                .with_limit(1),
        )?;
        kvs.into_iter()
            .next()
            .map(|(k, v)| Ok((parse_id(&k, start.len())?, v)))
            .transpose()
    }

    fn first_sample(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let start = self.key("samples/");
        let kvs = self.get(
            start.clone(),
            GetOptions::new()
                .with_range(prefix_end(&start))
                .with_sort(SortTarget::Key, SortOrder::Ascend)
                .with_limit(1),
        )?;
        kvs.into_iter()
            .next()
            .map(|(k, v)| Ok((parse_id(&k, start.len())?, v)))
            .transpose()
    }

    fn sample_times(&self, from: u64, to: u64) -> Result<Vec<u64>, StoreError> {
        if from >= to {
            return Ok(Vec::new());
        }
        let start = self.key("samples/");
        let mut out = Vec::new();
        let mut next = self.sample_key(from);
        let end = self.sample_key(to);
        loop {
            let kvs = self.get(
                next.clone(),
                GetOptions::new()
                    .with_range(end.clone())
                    .with_keys_only()
                    .with_limit(PAGE_KEYS * 8),
            )?;
            let full = kvs.len() as i64 == PAGE_KEYS * 8;
            for (k, _) in &kvs {
                out.push(parse_id(k, start.len())?);
            }
            match kvs.last() {
                Some((k, _)) if full => {
                    next = k.clone();
                    next.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    fn size_bytes(&self) -> u64 {
        // The endpoint's database size; a metric, so a failure reads as 0.
        let mut client = self.client.clone();
        match self.run(async move { client.status().await }) {
            Ok(Ok(status)) => status.db_size().max(0) as u64,
            _ => 0,
        }
    }
}

/// The number after `prefix_len` bytes of a `…/<n:020>` key.
fn parse_id(key: &[u8], prefix_len: usize) -> Result<u64, StoreError> {
    key.get(prefix_len..)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("etcd key {}", String::from_utf8_lossy(key))))
}

#[cfg(test)]
mod tests {
    //! Against a real etcd (`scripts/etcd.sh start` exports
    //! `EBB_ETCD_ENDPOINT`; `scripts/test.sh` does it). Each test uses its
    //! own key prefix, so they run in parallel on one etcd.
    use super::*;

    /// The etcd endpoint of the test environment; panics (never skips) when
    /// it is not set.
    fn endpoint() -> String {
        std::env::var("EBB_ETCD_ENDPOINT").unwrap_or_else(|_| {
            panic!(
                "EBB_ETCD_ENDPOINT is not set: the etcd store tests need a real etcd. \
                 Run `eval \"$(scripts/etcd.sh start)\"` first (scripts/test.sh does)."
            )
        })
    }

    fn opts(test: &str) -> EtcdOptions {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        EtcdOptions::new(
            vec![endpoint()],
            format!("/ebb-test/{test}-{}-{nanos}", std::process::id()),
        )
    }

    fn batch(records: &[(u64, &str)]) -> Batch {
        Batch {
            records: records
                .iter()
                .map(|(s, r)| (*s, r.as_bytes().to_vec()))
                .collect(),
            ..Batch::default()
        }
    }

    /// Every key under the store's prefix (to check that nothing is left
    /// behind).
    fn keys(s: &EtcdStore, under: &str) -> Vec<String> {
        let start = s.key(under);
        s.get_range(start.clone(), prefix_end(&start), PAGE_KEYS)
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect()
    }

    /// The embedded store's round trip, on etcd: appends survive a reopen,
    /// a snapshot compacts the log, job and sample puts and deletes.
    #[test]
    fn appends_survive_reopen_and_snapshots_compact_the_log() {
        let o = opts("roundtrip");
        {
            let mut s = EtcdStore::open(o.clone()).unwrap();
            s.append(&batch(&[(1, "a"), (2, "b")])).unwrap();
            let mut b = batch(&[(3, "c")]);
            b.put_jobs.push((7, b"job7".to_vec()));
            b.put_samples.push((1000, b"s1".to_vec()));
            b.put_samples.push((2000, b"s2".to_vec()));
            s.append(&b).unwrap();
        }
        let mut s = EtcdStore::open(o.clone()).unwrap();
        let l = s.load().unwrap();
        assert!(l.snapshot.is_none());
        assert_eq!(
            l.records,
            vec![(1, b"a".to_vec()), (2, b"b".to_vec()), (3, b"c".to_vec())]
        );
        assert_eq!(l.jobs, vec![(7, b"job7".to_vec())]);
        s.write_snapshot(2, b"snap").unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.snapshot, Some((2, b"snap".to_vec())));
        assert_eq!(l.records, vec![(3, b"c".to_vec())]);
        assert_eq!(s.sample_at_or_before(1999).unwrap().unwrap().0, 1000);
        assert_eq!(s.sample_at_or_before(2000).unwrap().unwrap().0, 2000);
        assert_eq!(s.sample_at_or_before(999).unwrap(), None);
        assert_eq!(s.first_sample().unwrap().unwrap().0, 1000);
        s.append(&Batch {
            delete_jobs: vec![7],
            delete_samples_before: Some(1500),
            ..Batch::default()
        })
        .unwrap();
        assert!(s.load().unwrap().jobs.is_empty());
        assert_eq!(s.first_sample().unwrap().unwrap().0, 2000);
        let mut b = Batch::default();
        b.put_samples.push((3000, b"s3".to_vec()));
        b.put_samples.push((4000, b"s4".to_vec()));
        s.append(&b).unwrap();
        assert_eq!(s.sample_times(2000, 4000).unwrap(), [2000, 3000]);
        s.append(&Batch {
            delete_samples: vec![3000],
            ..Batch::default()
        })
        .unwrap();
        assert_eq!(s.sample_times(0, u64::MAX).unwrap(), [2000, 4000]);
        // A second snapshot replaces the first and its data.
        s.write_snapshot(3, b"snap2").unwrap();
        drop(s);
        let s = EtcdStore::open(o).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.snapshot, Some((3, b"snap2".to_vec())));
        assert!(l.records.is_empty());
        assert_eq!(
            keys(&s, "snapshot-data/").len(),
            1,
            "old generation deleted"
        );
        assert!(keys(&s, "log/").is_empty(), "compacted log");
    }

    #[test]
    fn a_gap_in_the_log_is_corruption() {
        let mut s = EtcdStore::open(opts("gap")).unwrap();
        s.append(&batch(&[(1, "a"), (3, "c")])).unwrap();
        assert!(matches!(s.load(), Err(StoreError::Corrupt(_))));
    }

    /// A batch of 1,000 records and 300 jobs (far over etcd's 128
    /// operations per transaction) and a 3 MiB record (over its 1.5 MiB
    /// request limit) is staged, and read back whole (across several pages
    /// of reads), leaving no staging keys.
    #[test]
    fn batches_over_the_txn_limits_are_written_whole() {
        let o = opts("large");
        let mut s = EtcdStore::open(o.clone()).unwrap();
        let big = vec![7u8; 3 << 20];
        let mut b = Batch::default();
        for seq in 1..=1000 {
            b.records.push((seq, format!("r{seq}").into_bytes()));
        }
        b.records.push((1001, big.clone()));
        // More jobs than one page of single values.
        for id in 1..=300 {
            b.put_jobs.push((id, format!("j{id}").into_bytes()));
        }
        s.append(&b).unwrap();
        drop(s);
        let s = EtcdStore::open(o).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.records.len(), 1001);
        assert_eq!(l.records[499], (500, b"r500".to_vec()));
        assert_eq!(l.records[1000].1, big);
        assert_eq!(l.jobs.len(), 300);
        assert_eq!(l.jobs[299], (300, b"j300".to_vec()));
        assert!(keys(&s, "staged/").is_empty());
        assert!(keys(&s, "pending").is_empty());
    }

    /// The crash points of a staged batch: before its commit point nothing
    /// of it is visible after a reopen (and its parts are gone); after it,
    /// the reopen finishes it and all of it is visible.
    /// Puts `key` under a fresh lease, as etcd's election API does for a
    /// campaign, and returns its fence and the lease.
    fn elect(s: &EtcdStore, key: &str) -> (Fence, i64) {
        let mut c = s.client.clone();
        let key = s.key(key);
        let k = key.clone();
        s.run(async move {
            let lease = c.lease_grant(30, None).await.unwrap().id();
            c.put(
                k.clone(),
                "me",
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
            let rev = c.get(k.clone(), None).await.unwrap().kvs()[0].create_revision();
            (
                Fence {
                    key: k,
                    revision: rev,
                },
                lease,
            )
        })
        .unwrap()
    }

    #[test]
    fn a_fenced_store_writes_nothing_once_its_election_key_is_gone() {
        let o = opts("fence");
        let plain = EtcdStore::open(o.clone()).unwrap();
        let (fence, lease) = elect(&plain, "leader/a");
        let mut fo = o.clone();
        fo.fence = Some(fence.clone());
        let mut leader = EtcdStore::open(fo.clone()).unwrap();
        leader.append(&batch(&[(1, "a")])).unwrap();
        leader.write_snapshot(1, b"snap-1").unwrap();
        // The lease expires (revoked here): the key is gone. Every kind of
        // write is refused as Deposed, small, staged or snapshot, and
        // nothing reaches etcd.
        let mut c = plain.client.clone();
        plain
            .run(async move { c.lease_revoke(lease).await.unwrap() })
            .unwrap();
        let before = keys(&plain, "");
        assert!(matches!(
            leader.append(&batch(&[(2, "b")])),
            Err(StoreError::Deposed(_))
        ));
        let mut large = Batch::default();
        for seq in 2..=301 {
            large.records.push((seq, vec![7; 100]));
        }
        assert!(matches!(leader.append(&large), Err(StoreError::Deposed(_))));
        assert!(matches!(
            leader.write_snapshot(1, b"snap-2"),
            Err(StoreError::Deposed(_))
        ));
        assert_eq!(keys(&plain, ""), before, "a deposed leader wrote nothing");
        // A new campaign creates the same-named key again, with a later
        // revision: the old fence still does not match.
        let (newer, _) = elect(&plain, "leader/a");
        assert!(newer.revision > fence.revision);
        assert!(matches!(
            leader.append(&batch(&[(2, "b")])),
            Err(StoreError::Deposed(_))
        ));
        assert!(keys(&plain, "log/").is_empty(), "record 2 was not written");
        // Opening fenced on a gone key is refused too (open writes).
        let mut stale = o.clone();
        stale.fence = Some(Fence {
            key: fence.key.clone(),
            revision: fence.revision,
        });
        assert!(matches!(
            EtcdStore::open(stale),
            Err(StoreError::Deposed(_))
        ));
        // The new leader's fence works, and reads what the old one wrote.
        let mut no = o;
        no.fence = Some(newer);
        let mut new_leader = EtcdStore::open(no).unwrap();
        new_leader.append(&batch(&[(2, "b")])).unwrap();
        let l = new_leader.load().unwrap();
        assert_eq!(l.snapshot, Some((1, b"snap-1".to_vec())));
        assert_eq!(l.records, vec![(2, b"b".to_vec())]);
    }

    #[test]
    fn repeating_a_write_whose_outcome_was_unknown_changes_nothing() {
        let o = opts("repeat");
        let mut s = EtcdStore::open(o.clone()).unwrap();
        let mut large = Batch::default();
        for seq in 1..=300 {
            large.records.push((seq, format!("r{seq}").into_bytes()));
        }
        large.put_jobs.push((4, b"j4".to_vec()));
        large.put_samples.push((1000, b"s".to_vec()));
        let small = {
            let mut b = batch(&[(301, "last")]);
            b.delete_jobs.push(4);
            b
        };
        // Each write applied, then applied again (the answer "was lost").
        s.append(&large).unwrap();
        s.append(&large).unwrap();
        s.append(&small).unwrap();
        s.append(&small).unwrap();
        s.write_snapshot(300, b"snap").unwrap();
        s.write_snapshot(300, b"snap").unwrap();
        // A staged attempt that reached its commit point and failed after
        // it, then repeated: the first is finished, the repeat is harmless.
        let mut more = Batch::default();
        for seq in 302..=500 {
            more.records.push((seq, format!("r{seq}").into_bytes()));
        }
        s.crash_at = Some(CrashPoint::AfterCommit);
        assert!(s.append(&more).is_err());
        s.crash_at = None;
        s.append(&more).unwrap();
        // And one that failed before its commit point, then repeated.
        let mut last = Batch::default();
        for seq in 501..=700 {
            last.records.push((seq, format!("r{seq}").into_bytes()));
        }
        s.crash_at = Some(CrashPoint::BeforeCommit);
        assert!(s.append(&last).is_err());
        s.crash_at = None;
        s.append(&last).unwrap();
        drop(s);
        let s = EtcdStore::open(o).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.snapshot, Some((300, b"snap".to_vec())));
        let seqs: Vec<u64> = l.records.iter().map(|(q, _)| *q).collect();
        assert_eq!(seqs, (301..=700).collect::<Vec<_>>());
        assert_eq!(l.records[0].1, b"last".to_vec());
        assert!(l.jobs.is_empty());
        assert_eq!(s.sample_times(0, u64::MAX).unwrap(), vec![1000]);
        assert!(keys(&s, "staged/").is_empty());
        assert!(keys(&s, "pending").is_empty());
        assert_eq!(keys(&s, "snapshot-data/").len(), 1, "one generation left");
    }

    #[test]
    fn an_unreachable_etcd_is_unavailable_and_a_refused_request_is_not() {
        let e = rpc_error(
            "get",
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("no leader")),
        );
        assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
        let e = rpc_error(
            "txn",
            etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument(
                "etcdserver: too many operations in txn request",
            )),
        );
        assert!(matches!(e, StoreError::Backend(_)), "{e}");
        let e = rpc_error(
            "get",
            etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded("timeout")),
        );
        assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    }

    #[test]
    fn a_staged_batch_is_all_or_nothing_across_a_crash() {
        let large = || {
            let mut b = Batch::default();
            for seq in 2..=301 {
                b.records.push((seq, format!("r{seq}").into_bytes()));
            }
            b.put_jobs.push((9, b"j9".to_vec()));
            b
        };
        // Crash before the commit point.
        let o = opts("crash-before");
        let mut s = EtcdStore::open(o.clone()).unwrap();
        s.append(&batch(&[(1, "first")])).unwrap();
        s.crash_at = Some(CrashPoint::BeforeCommit);
        assert!(s.append(&large()).is_err());
        assert!(!keys(&s, "staged/").is_empty(), "parts were written");
        drop(s);
        let s = EtcdStore::open(o).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.records, vec![(1, b"first".to_vec())]);
        assert!(l.jobs.is_empty());
        assert!(keys(&s, "staged/").is_empty(), "uncommitted parts deleted");
        // Crash after the commit point.
        let o = opts("crash-after");
        let mut s = EtcdStore::open(o.clone()).unwrap();
        s.append(&batch(&[(1, "first")])).unwrap();
        s.crash_at = Some(CrashPoint::AfterCommit);
        assert!(s.append(&large()).is_err());
        assert_eq!(s.load().unwrap().records.len(), 1, "not applied yet");
        drop(s);
        let s = EtcdStore::open(o).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.records.len(), 301);
        assert_eq!(l.records[300], (301, b"r301".to_vec()));
        assert_eq!(l.jobs, vec![(9, b"j9".to_vec())]);
        assert!(keys(&s, "staged/").is_empty());
        assert!(keys(&s, "pending").is_empty());
    }

    /// A 5 MiB snapshot (dozens of parts, several transactions) round trips,
    /// and a snapshot write that crashed before its switch leaves the
    /// previous one in place.
    #[test]
    fn large_snapshots_round_trip_and_a_torn_one_is_invisible() {
        let o = opts("snapshot");
        let mut s = EtcdStore::open(o.clone()).unwrap();
        s.append(&batch(&[(1, "a"), (2, "b")])).unwrap();
        let snap: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 251) as u8).collect();
        s.write_snapshot(1, &snap).unwrap();
        // A torn write of the next generation: parts, no switch.
        let base = s.snapshot_data(s.generation + 1);
        let mut puts = Vec::new();
        s.part_ops(&base, b"torn", &mut puts);
        s.apply_in_groups(puts).unwrap();
        drop(s);
        let s = EtcdStore::open(o).unwrap();
        let l = s.load().unwrap();
        assert_eq!(l.snapshot.as_ref().map(|(t, _)| *t), Some(1));
        assert!(l.snapshot.unwrap().1 == snap);
        assert_eq!(l.records, vec![(2, b"b".to_vec())]);
        let data = keys(&s, "snapshot-data/");
        assert!(
            data.iter()
                .all(|k| k.contains(&format!("{:020}", s.generation)))
        );
    }

    #[test]
    fn a_wrong_format_version_is_refused() {
        let o = opts("version");
        let s = EtcdStore::open(o.clone()).unwrap();
        s.txn(
            vec![Op::Put(s.key("format_version"), b"999".to_vec())],
            vec![],
        )
        .unwrap();
        drop(s);
        let err = EtcdStore::open(o).err().expect("refused");
        assert!(err.to_string().contains("format_version is 999"), "{err}");
    }

    #[test]
    fn an_unreachable_etcd_is_an_error_not_a_hang() {
        let mut o = opts("unreachable");
        // Port 1 on loopback: nothing listens there.
        o.endpoints = vec!["http://127.0.0.1:1".into()];
        let t = std::time::Instant::now();
        let r = EtcdStore::open(o);
        assert!(r.is_err());
        assert!(t.elapsed() < Duration::from_secs(30));
    }
}
