//! The EC2 reservation source (aws-sdk-ec2): active reserved instances,
//! the running fleet classified by tags, and instance type facts, from one
//! or more regions. The only module in the workspace that names AWS types.
//!
//! Per region, one fetch makes
//! - `DescribeReservedInstances` (one call: the API does not paginate): only
//!   reservations in state `active` count; their start and end travel with
//!   them so the market counts them at the right instant;
//! - `DescribeInstances`, filtered to `pending` and `running` instances (both
//!   hold capacity), through the SDK's paginator with `page_size` results a
//!   page; an instance with the streaming tag is streaming demand, one with
//!   the batch tag is a batch executor host, others count nowhere;
//! - `DescribeInstanceTypes` for the types the shipped catalog lacks, so a
//!   new type is converted to IE rather than dropped.
//!
//! Regions are fetched concurrently; a fetch succeeds only if every region
//! does (the refresher then keeps the last good snapshot of all of them), so
//! a snapshot is always one consistent instant.
//!
//! Credentials follow the SDK's standard chain (environment, shared profile
//! files, web identity, ECS, instance metadata) unless `credentials_file`
//! names a shared-credentials file, which is then the only source. The region
//! of each client is its pools' region; the region chain is never consulted.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::primitives::DateTime;
use aws_sdk_ec2::types::{
    Filter, InstanceTypeInfo, OfferingClassType, ReservedInstanceState, ReservedInstances,
};
use ebb_scheduler::{Catalog, InstanceType, Timestamp};
use serde::Deserialize;
use tokio::task::JoinSet;

use super::snapshot::{
    self, FleetInstance, Inputs, Item, ItemError, OfferingClass, PoolDef, ReservationRecord, Role,
    Scope, Snapshot, Streaming,
};
use super::{BoxFuture, ReservationSource, SourceError};

/// A tag an instance must carry, key and value.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagMatch {
    /// Tag key, e.g. `ebb:role`.
    pub key: String,
    /// Tag value, e.g. `streaming`.
    pub value: String,
}

impl fmt::Display for TagMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// The EC2 source's configuration (the `[capacity.ec2]` table of the server config).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ec2Config {
    /// Pools to account for (`[[ec2.pool]]` tables, as `[[pool]]` in the
    /// static file); the regions read are their regions.
    #[serde(rename = "pool")]
    pub pools: Vec<PoolDef>,
    /// Endpoint override (an emulator, a VPC endpoint); none: AWS's.
    pub endpoint_url: Option<String>,
    /// Shared-config profile; none: the chain's default.
    pub profile: Option<String>,
    /// Read credentials only from this shared-credentials file (with
    /// `profile`, or `default`) instead of the standard chain.
    pub credentials_file: Option<PathBuf>,
    /// Instances with this tag are streaming demand.
    pub streaming_tag: TagMatch,
    /// Instances with this tag are batch executor hosts.
    pub batch_tag: TagMatch,
    /// `DescribeInstances` results per page; EC2 accepts 5 to 1000.
    pub page_size: u32,
    /// Limit on one API call including the SDK's retries.
    pub operation_timeout_ms: u64,
    /// Limit on opening a connection.
    pub connect_timeout_ms: u64,
    /// Attempts per call, the first included (the SDK retries throttling,
    /// timeouts and 5xx with exponential back-off between them).
    pub max_attempts: u32,
}

/// EC2's largest `MaxResults` for `DescribeInstances`: fewest round trips.
const DEFAULT_PAGE_SIZE: u32 = 1_000;
/// EC2's smallest `MaxResults` for `DescribeInstances`.
const MIN_PAGE_SIZE: u32 = 5;
/// 30 s covers a slow page of 1 000 instances with retries; a refresh that
/// takes longer than that is better reported as failing than waited for.
const DEFAULT_OPERATION_TIMEOUT_MS: u64 = 30_000;
/// A TCP connect to a regional endpoint takes milliseconds; 5 s means it is down.
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
/// The SDK's standard retry mode default: rides out brief throttling.
const DEFAULT_MAX_ATTEMPTS: u32 = 3;

impl Default for Ec2Config {
    fn default() -> Self {
        Ec2Config {
            pools: Vec::new(),
            endpoint_url: None,
            profile: None,
            credentials_file: None,
            streaming_tag: TagMatch {
                key: "ebb:role".into(),
                value: "streaming".into(),
            },
            batch_tag: TagMatch {
                key: "ebb:role".into(),
                value: "batch".into(),
            },
            page_size: DEFAULT_PAGE_SIZE,
            operation_timeout_ms: DEFAULT_OPERATION_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

fn config_error(field: impl Into<String>, message: impl Into<String>) -> SourceError {
    SourceError::Config {
        field: field.into(),
        message: message.into(),
    }
}

impl Ec2Config {
    /// Checks the configuration; errors name the field (`ec2.page_size`).
    pub fn validate(&self) -> Result<(), SourceError> {
        if self.pools.is_empty() {
            return Err(config_error("ec2.pool", "needs at least one [[ec2.pool]]"));
        }
        snapshot::validate_pools(&self.pools)
            .map_err(|e| config_error(format!("ec2.pool[{}].{}", e.index, e.field), e.message))?;
        if let Some(url) = &self.endpoint_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(config_error(
                "ec2.endpoint_url",
                format!("`{url}` is not an http:// or https:// URL"),
            ));
        }
        for (field, tag) in [
            ("ec2.streaming_tag.key", &self.streaming_tag),
            ("ec2.batch_tag.key", &self.batch_tag),
        ] {
            if tag.key.is_empty() {
                return Err(config_error(field, "must not be empty"));
            }
        }
        if self.streaming_tag == self.batch_tag {
            return Err(config_error(
                "ec2.batch_tag",
                format!("is the same as streaming_tag ({})", self.streaming_tag),
            ));
        }
        if !(MIN_PAGE_SIZE..=DEFAULT_PAGE_SIZE).contains(&self.page_size) {
            return Err(config_error(
                "ec2.page_size",
                format!("{} is outside EC2's 5 to 1000", self.page_size),
            ));
        }
        if self.operation_timeout_ms == 0 {
            return Err(config_error(
                "ec2.operation_timeout_ms",
                "must be greater than zero",
            ));
        }
        if self.connect_timeout_ms == 0 {
            return Err(config_error(
                "ec2.connect_timeout_ms",
                "must be greater than zero",
            ));
        }
        if self.max_attempts == 0 {
            return Err(config_error("ec2.max_attempts", "must be at least 1"));
        }
        Ok(())
    }

    /// The regions read: those of the pools, each once, in order.
    pub fn regions(&self) -> Vec<String> {
        let set: BTreeSet<&str> = self.pools.iter().map(|p| p.region.as_str()).collect();
        set.into_iter().map(str::to_owned).collect()
    }
}

/// Why an EC2 call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ec2ErrorKind {
    /// EC2 throttled us (`RequestLimitExceeded` and kin) past the retries.
    Throttled,
    /// The call or the connection timed out.
    Timeout,
    /// No credentials, or EC2 refused them.
    Credentials,
    /// The endpoint could not be reached (connection refused, DNS, TLS).
    Unreachable,
    /// EC2 answered with this error code.
    Service(String),
    /// Anything else (a response the SDK could not parse, ...).
    Other,
}

impl fmt::Display for Ec2ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ec2ErrorKind::Throttled => f.write_str("throttled"),
            Ec2ErrorKind::Timeout => f.write_str("timeout"),
            Ec2ErrorKind::Credentials => f.write_str("credentials"),
            Ec2ErrorKind::Unreachable => f.write_str("unreachable"),
            Ec2ErrorKind::Service(code) => write!(f, "service error {code}"),
            Ec2ErrorKind::Other => f.write_str("other"),
        }
    }
}

/// EC2 error codes that mean "slow down" (the SDK retries them first).
const THROTTLING_CODES: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
];

/// EC2 error codes that mean the credentials are missing, wrong or not allowed.
const CREDENTIAL_CODES: &[&str] = &[
    "AuthFailure",
    "UnauthorizedOperation",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "RequestExpired",
    "OptInRequired",
];

fn classify<E>(err: &SdkError<E>) -> Ec2ErrorKind
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    let mut cause: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cause {
        if e.downcast_ref::<CredentialsError>().is_some() {
            return Ec2ErrorKind::Credentials;
        }
        cause = e.source();
    }
    match err {
        SdkError::TimeoutError(_) => Ec2ErrorKind::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => Ec2ErrorKind::Timeout,
        SdkError::DispatchFailure(_) => Ec2ErrorKind::Unreachable,
        _ => match err.code() {
            Some(code) if THROTTLING_CODES.contains(&code) => Ec2ErrorKind::Throttled,
            Some(code) if CREDENTIAL_CODES.contains(&code) => Ec2ErrorKind::Credentials,
            Some(code) => Ec2ErrorKind::Service(code.to_owned()),
            None => Ec2ErrorKind::Other,
        },
    }
}

fn call_error<E>(region: &str, operation: &'static str, err: &SdkError<E>) -> SourceError
where
    E: ProvideErrorMetadata + StdError + 'static,
{
    SourceError::Ec2 {
        region: region.to_owned(),
        operation,
        kind: classify(err),
        message: error_chain(err),
    }
}

/// The error and its causes, `: `-separated (the SDK's `DisplayErrorContext`
/// also appends the whole `Debug` form, response body included, which is
/// too much for a status line).
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        let text = e.to_string();
        // Wrappers often repeat their source's text; say it once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = e.source();
    }
    out
}

/// What the fetch needs besides the clients, shared with the region tasks.
#[derive(Debug)]
struct Settings {
    streaming_tag: TagMatch,
    batch_tag: TagMatch,
    page_size: i32,
}

/// The EC2 reservation source: one SDK client per region.
#[derive(Debug)]
pub struct Ec2 {
    pools: Vec<PoolDef>,
    catalog: Catalog,
    clients: Vec<(String, Client)>,
    settings: Arc<Settings>,
    endpoint_url: Option<String>,
    /// Types EC2 described, by name: an instance type's facts never change,
    /// so each is asked about once per process. Names EC2 did not know are
    /// asked again at every fetch (it may learn them; it costs one call).
    described: Mutex<BTreeMap<String, InstanceType>>,
}

impl Ec2 {
    /// Checks `config` and builds one client per region. Makes no call to
    /// EC2 and resolves no credentials yet (the first fetch does).
    ///
    /// `catalog` must be the market's (same reference type and overrides as
    /// the core's `MarketConfig`), so that the snapshot's IE are the core's.
    pub async fn new(config: Ec2Config, catalog: Catalog) -> Result<Ec2, SourceError> {
        config.validate()?;
        let mut clients = Vec::new();
        for region in config.regions() {
            let mut loader = aws_config::defaults(BehaviorVersion::latest())
                .region(aws_config::Region::new(region.clone()))
                .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts))
                .timeout_config(
                    TimeoutConfig::builder()
                        .operation_timeout(Duration::from_millis(config.operation_timeout_ms))
                        .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
                        .build(),
                );
            if let Some(url) = &config.endpoint_url {
                loader = loader.endpoint_url(url);
            }
            if let Some(profile) = &config.profile {
                loader = loader.profile_name(profile);
            }
            if let Some(file) = &config.credentials_file {
                // Only this file: neither ~/.aws nor the rest of the chain
                // (instance metadata included) is consulted.
                let files = EnvConfigFiles::builder()
                    .with_file(EnvConfigFileKind::Credentials, file)
                    .build();
                let mut provider = aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .profile_files(files.clone());
                if let Some(profile) = &config.profile {
                    provider = provider.profile_name(profile);
                }
                loader = loader
                    .profile_files(files)
                    .credentials_provider(provider.build());
            }
            let sdk = loader.load().await;
            clients.push((region, Client::new(&sdk)));
        }
        Ok(Ec2 {
            pools: config.pools,
            catalog,
            clients,
            settings: Arc::new(Settings {
                streaming_tag: config.streaming_tag,
                batch_tag: config.batch_tag,
                // validate() bounds it to 5..=1000.
                page_size: i32::try_from(config.page_size).unwrap_or(1_000),
            }),
            endpoint_url: config.endpoint_url,
            described: Mutex::new(BTreeMap::new()),
        })
    }

    async fn fetch_all(&self, now: Timestamp) -> Result<Snapshot, SourceError> {
        let mut tasks = JoinSet::new();
        for (region, client) in &self.clients {
            let (region, client, settings) =
                (region.clone(), client.clone(), Arc::clone(&self.settings));
            tasks.spawn(async move {
                let data = fetch_region(&client, &region, &settings).await;
                (region, client, data)
            });
        }
        let mut regions = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            // A panic in a region task is a bug: let it propagate. (Tasks are
            // never cancelled while the set is alive.)
            let (region, client, data) = match joined {
                Ok(done) => done,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            };
            // Returning early drops the JoinSet, which aborts the other regions.
            regions.insert(region, (client, data?));
        }

        let mut reservations = Vec::new();
        let mut fleet = Vec::new();
        let mut errors = Vec::new();
        let mut n_untagged = 0;
        let mut used: BTreeSet<String> = BTreeSet::new();
        for (region, (client, data)) in regions {
            let region_types: BTreeSet<String> = data
                .reservations
                .iter()
                .map(|r| r.instance_type.clone())
                .chain(data.fleet.iter().map(|i| i.instance_type.clone()))
                .filter(|t| self.catalog.get(t).is_none())
                .collect();
            let unknown: BTreeSet<String> = {
                let described = self.described.lock().expect("described types lock");
                region_types
                    .iter()
                    .filter(|t| !described.contains_key(*t))
                    .cloned()
                    .collect()
            };
            if !unknown.is_empty() {
                let (types, type_errors) = describe_types(&client, &region, unknown).await?;
                errors.extend(type_errors);
                // Keep only types the catalog accepts; one it refuses (say,
                // no vCPUs) is an error and its items stay unknown.
                let reference = &self.catalog.reference().name;
                let mut described = self.described.lock().expect("described types lock");
                for t in types {
                    match self
                        .catalog
                        .with_overrides(std::slice::from_ref(&t), reference)
                    {
                        Ok(_) => {
                            described.insert(t.name.clone(), t);
                        }
                        Err(e) => errors.push(ItemError::InstanceFacts {
                            instance_type: t.name.clone(),
                            message: e.to_string(),
                        }),
                    }
                }
            }
            used.extend(region_types);
            reservations.extend(data.reservations);
            fleet.extend(data.fleet);
            errors.extend(data.errors);
            n_untagged += data.n_untagged;
        }

        let learned: Vec<InstanceType> = {
            let described = self.described.lock().expect("described types lock");
            used.iter()
                .filter_map(|t| described.get(t).cloned())
                .collect()
        };
        let catalog = self
            .catalog
            .with_overrides(&learned, &self.catalog.reference().name)
            .expect("each learned type was accepted on its own");
        Ok(snapshot::build(Inputs {
            source: self.describe(),
            fetched_at: now,
            pools: &self.pools,
            catalog: &catalog,
            learned_types: learned,
            reservations,
            fleet,
            streaming: Streaming::Fleet,
            n_untagged_instances: n_untagged,
            errors,
        }))
    }
}

impl ReservationSource for Ec2 {
    fn describe(&self) -> String {
        let regions: Vec<&str> = self.clients.iter().map(|(r, _)| r.as_str()).collect();
        match &self.endpoint_url {
            Some(url) => format!("ec2 {} at {url}", regions.join(",")),
            None => format!("ec2 {}", regions.join(",")),
        }
    }

    fn fetch(&self, now: Timestamp) -> BoxFuture<'_, Result<Snapshot, SourceError>> {
        Box::pin(self.fetch_all(now))
    }
}

/// What one region returned, before pools.
struct RegionData {
    reservations: Vec<ReservationRecord>,
    fleet: Vec<FleetInstance>,
    errors: Vec<ItemError>,
    n_untagged: u32,
}

async fn fetch_region(
    client: &Client,
    region: &str,
    settings: &Settings,
) -> Result<RegionData, SourceError> {
    let mut errors = Vec::new();

    let out = client
        .describe_reserved_instances()
        .send()
        .await
        .map_err(|e| call_error(region, "DescribeReservedInstances", &e))?;
    let reservations: Vec<ReservationRecord> = out
        .reserved_instances()
        .iter()
        .enumerate()
        .filter_map(|(i, ri)| reservation_record(region, i, ri, &mut errors))
        .collect();

    let mut fleet = Vec::new();
    let mut n_untagged = 0;
    let mut n_pages = 0;
    let mut pages = client
        .describe_instances()
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .build(),
        )
        .into_paginator()
        .page_size(settings.page_size)
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| call_error(region, "DescribeInstances", &e))?;
        n_pages += 1;
        for instance in page.reservations().iter().flat_map(|r| r.instances()) {
            let id = instance.instance_id().unwrap_or("(no id)").to_owned();
            let tagged = |m: &TagMatch| {
                instance
                    .tags()
                    .iter()
                    .any(|t| t.key() == Some(m.key.as_str()) && t.value() == Some(m.value.as_str()))
            };
            let role = match (tagged(&settings.streaming_tag), tagged(&settings.batch_tag)) {
                (true, true) => {
                    // Streaming is the safe reading: it lowers supply.
                    errors.push(ItemError::BothRoles {
                        instance_id: id.clone(),
                    });
                    Role::Streaming
                }
                (true, false) => Role::Streaming,
                (false, true) => Role::Batch,
                (false, false) => {
                    n_untagged += 1;
                    continue;
                }
            };
            let item = || match role {
                Role::Streaming => Item::StreamingInstance(id.clone()),
                Role::Batch => Item::BatchInstance(id.clone()),
            };
            if instance.instance_id().is_none() {
                errors.push(ItemError::MissingField {
                    item: item(),
                    field: "instanceId",
                });
                continue;
            }
            let Some(instance_type) = instance.instance_type().map(|t| t.as_str().to_owned())
            else {
                errors.push(ItemError::MissingField {
                    item: item(),
                    field: "instanceType",
                });
                continue;
            };
            let Some(zone) = instance
                .placement()
                .and_then(|p| p.availability_zone())
                .map(str::to_owned)
            else {
                errors.push(ItemError::MissingField {
                    item: item(),
                    field: "placement.availabilityZone",
                });
                continue;
            };
            fleet.push(FleetInstance {
                id,
                region: region.to_owned(),
                zone,
                instance_type,
                role,
            });
        }
    }
    tracing::debug!(
        region,
        n_reservations = reservations.len(),
        n_instances = fleet.len(),
        n_untagged,
        n_pages,
        "ec2 region read"
    );
    Ok(RegionData {
        reservations,
        fleet,
        errors,
        n_untagged,
    })
}

fn timestamp(t: Option<&DateTime>) -> Result<Option<Timestamp>, String> {
    let Some(t) = t else { return Ok(None) };
    let ms = t.to_millis().map_err(|e| e.to_string())?;
    u64::try_from(ms)
        .map(|ms| Some(Timestamp::from_millis(ms)))
        .map_err(|_| format!("{t} is before 1970"))
}

/// One active reserved instance as a record; `None` if it does not count
/// (not `active`) or cannot be read (then with an error).
fn reservation_record(
    region: &str,
    index: usize,
    ri: &ReservedInstances,
    errors: &mut Vec<ItemError>,
) -> Option<ReservationRecord> {
    let id = ri
        .reserved_instances_id()
        .map_or_else(|| format!("#{index} in {region}"), str::to_owned);
    let item = || Item::Reservation(id.clone());
    if ri.state() != Some(&ReservedInstanceState::Active) {
        return None;
    }
    let mut missing = |field| {
        errors.push(ItemError::MissingField {
            item: item(),
            field,
        });
        None
    };
    if ri.reserved_instances_id().is_none() {
        return missing("reservedInstancesId");
    }
    let Some(instance_type) = ri.instance_type().map(|t| t.as_str().to_owned()) else {
        return missing("instanceType");
    };
    let Some(count) = ri.instance_count() else {
        return missing("instanceCount");
    };
    let zone = ri.availability_zone().filter(|z| !z.is_empty());
    let scope = match (ri.scope(), zone) {
        (Some(aws_sdk_ec2::types::Scope::Regional), _) => Scope::Region,
        (Some(aws_sdk_ec2::types::Scope::AvailabilityZone) | None, Some(z)) => {
            Scope::Zone(z.to_owned())
        }
        (Some(aws_sdk_ec2::types::Scope::AvailabilityZone), None) => {
            return missing("availabilityZone");
        }
        (None, None) => Scope::Region,
        (Some(other), _) => {
            errors.push(ItemError::BadField {
                item: item(),
                field: "scope",
                value: format!("`{}`", other.as_str()),
            });
            return None;
        }
    };
    let bad = |field, value: String| ItemError::BadField {
        item: item(),
        field,
        value,
    };
    let Ok(count) = u32::try_from(count) else {
        errors.push(bad("instanceCount", format!("{count}")));
        return None;
    };
    if count == 0 {
        errors.push(bad("instanceCount", "0".into()));
        return None;
    }
    let (start, end) = match (timestamp(ri.start()), timestamp(ri.end())) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(why), _) => {
            errors.push(bad("start", why));
            return None;
        }
        (_, Err(why)) => {
            errors.push(bad("end", why));
            return None;
        }
    };
    let offering_class = match ri.offering_class() {
        None | Some(OfferingClassType::Standard) => OfferingClass::Standard,
        Some(OfferingClassType::Convertible) => OfferingClass::Convertible,
        Some(other) => {
            errors.push(bad("offeringClass", format!("`{}`", other.as_str())));
            return None;
        }
    };
    Some(ReservationRecord {
        id,
        region: region.to_owned(),
        scope,
        instance_type,
        count,
        start,
        end,
        offering_class,
    })
}

/// EC2's code for a type name it does not know.
const INVALID_INSTANCE_TYPE: &str = "InvalidInstanceType";

/// Describes `names` in `region`: the facts of the types EC2 knows, and an
/// error for each it does not. EC2 refuses the whole call if one name is
/// unknown, so on that error every name is asked about on its own.
async fn describe_types(
    client: &Client,
    region: &str,
    names: BTreeSet<String>,
) -> Result<(Vec<InstanceType>, Vec<ItemError>), SourceError> {
    match describe_type_batch(client, region, &names).await {
        Ok(found) => Ok(facts(found, &names)),
        Err(TypeLookup::Unknown) => {
            let mut found = Vec::new();
            for name in &names {
                match describe_type_batch(client, region, &BTreeSet::from([name.clone()])).await {
                    Ok(infos) => found.extend(infos),
                    Err(TypeLookup::Unknown) => {}
                    Err(TypeLookup::Failed(e)) => return Err(e),
                }
            }
            Ok(facts(found, &names))
        }
        Err(TypeLookup::Failed(e)) => Err(e),
    }
}

enum TypeLookup {
    /// EC2 does not know (at least one of) the names.
    Unknown,
    /// The call failed for another reason.
    Failed(SourceError),
}

async fn describe_type_batch(
    client: &Client,
    region: &str,
    names: &BTreeSet<String>,
) -> Result<Vec<InstanceTypeInfo>, TypeLookup> {
    let mut request = client.describe_instance_types();
    for name in names {
        request = request.instance_types(aws_sdk_ec2::types::InstanceType::from(name.as_str()));
    }
    let mut pages = request.into_paginator().send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        match page {
            Ok(page) => found.extend(page.instance_types().iter().cloned()),
            Err(e) if e.code() == Some(INVALID_INSTANCE_TYPE) => return Err(TypeLookup::Unknown),
            Err(e) => {
                return Err(TypeLookup::Failed(call_error(
                    region,
                    "DescribeInstanceTypes",
                    &e,
                )));
            }
        }
    }
    Ok(found)
}

/// Converts what EC2 described; the names it did not describe are left for
/// [`snapshot::build`] to report, item by item, as unknown types.
fn facts(
    found: Vec<InstanceTypeInfo>,
    asked: &BTreeSet<String>,
) -> (Vec<InstanceType>, Vec<ItemError>) {
    let mut types = Vec::new();
    let mut errors = Vec::new();
    for info in found {
        let Some(name) = info.instance_type().map(|t| t.as_str().to_owned()) else {
            continue;
        };
        if !asked.contains(&name) {
            continue;
        }
        match instance_type_from(&name, &info) {
            Ok(t) => types.push(t),
            Err(message) => errors.push(ItemError::InstanceFacts {
                instance_type: name,
                message,
            }),
        }
    }
    (types, errors)
}

/// An EC2 instance type description as a catalog entry.
///
/// - vCPUs: `vCpuInfo.defaultVCpus`; memory: `memoryInfo.sizeInMiB`
///   rounded to whole GiB (the catalog's unit), at least 1;
/// - network: the network cards' peak bandwidth (the "up to" figure the
///   catalog uses), else the baseline, else the `networkPerformance` text
///   ("Up to 12.5 Gigabit"), else 0;
/// - GPUs: the count and lowercase name of `gpuInfo.gpus`;
/// - on-demand price: EC2 does not say (that is the Pricing API), so 0:
///   finance reports show no on-demand price for such types;
/// - normalization factor: AWS's size table (see [`normalization_factor`]).
fn instance_type_from(name: &str, info: &InstanceTypeInfo) -> Result<InstanceType, String> {
    let vcpus = info
        .v_cpu_info()
        .and_then(|v| v.default_v_cpus())
        .ok_or("no vCpuInfo.defaultVCpus")?;
    let vcpus = u32::try_from(vcpus).map_err(|_| format!("vCPUs {vcpus}"))?;
    let memory_mib = info
        .memory_info()
        .and_then(|m| m.size_in_mib())
        .ok_or("no memoryInfo.sizeInMiB")?;
    let memory_gib = u32::try_from((memory_mib + 512) / 1024)
        .map_err(|_| format!("memory {memory_mib} MiB"))?
        .max(1);
    let network_mbps = info.network_info().map_or(0, network_mbps);
    let (gpus, gpu_model) = info.gpu_info().map_or((0, None), |g| {
        let n: i32 = g.gpus().iter().filter_map(|d| d.count()).sum();
        let model = g
            .gpus()
            .first()
            .and_then(|d| d.name())
            .map(str::to_lowercase);
        (u32::try_from(n).unwrap_or(0), model)
    });
    let size = name.split_once('.').map_or("", |(_, s)| s);
    Ok(InstanceType {
        name: name.to_owned(),
        vcpus,
        memory_gib,
        network_mbps,
        gpus,
        gpu_model: if gpus > 0 { gpu_model } else { None },
        on_demand_usd_per_hour: 0.0,
        normalization_factor: normalization_factor(size, vcpus),
    })
}

fn network_mbps(n: &aws_sdk_ec2::types::NetworkInfo) -> u64 {
    let cards = n.network_cards();
    let gbps: f64 = cards
        .iter()
        .map(|c| {
            c.peak_bandwidth_in_gbps()
                .or(c.baseline_bandwidth_in_gbps())
                .unwrap_or(0.0)
        })
        .sum();
    if gbps > 0.0 {
        return (gbps * 1_000.0).round() as u64;
    }
    n.network_performance().map_or(0, parse_network_performance)
}

/// `"Up to 12.5 Gigabit"` → 12 500; `"100 Megabit"` → 100; words such as
/// `"Moderate"` → 0 (no figure).
fn parse_network_performance(text: &str) -> u64 {
    let mut words = text
        .split_whitespace()
        .skip_while(|w| w.parse::<f64>().is_err());
    let (Some(n), Some(unit)) = (words.next(), words.next()) else {
        return 0;
    };
    let n: f64 = n.parse().unwrap_or(0.0);
    match unit {
        "Gigabit" => (n * 1_000.0).round() as u64,
        "Megabit" => n.round() as u64,
        _ => 0,
    }
}

/// AWS's instance size normalization factor: nano 0.25, micro 0.5, small 1,
/// medium 2, large 4, xlarge 8, N·xlarge 8·N. Sizes outside the table
/// (`metal`, `metal-48xl`) get twice their vCPUs, which is what the table
/// gives for the two-vCPU large (4) and its multiples in the families
/// Ebb accounts for (m5.metal: 96 vCPUs, like m5.24xlarge, factor 192).
fn normalization_factor(size: &str, vcpus: u32) -> f64 {
    match size {
        "nano" => 0.25,
        "micro" => 0.5,
        "small" => 1.0,
        "medium" => 2.0,
        "large" => 4.0,
        "xlarge" => 8.0,
        s => s
            .strip_suffix("xlarge")
            .and_then(|n| n.parse::<f64>().ok())
            .map_or(2.0 * f64::from(vcpus), |n| 8.0 * n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_get_aws_normalization_factors() {
        let cases = [
            ("nano", 2, 0.25),
            ("large", 2, 4.0),
            ("xlarge", 4, 8.0),
            ("16xlarge", 64, 128.0),
            ("24xlarge", 96, 192.0),
            ("metal", 96, 192.0),
            ("metal-48xl", 192, 384.0),
        ];
        for (size, vcpus, want) in cases {
            assert_eq!(normalization_factor(size, vcpus), want, "{size}");
        }
    }

    #[test]
    fn network_performance_text_is_read() {
        assert_eq!(parse_network_performance("Up to 12.5 Gigabit"), 12_500);
        assert_eq!(parse_network_performance("25 Gigabit"), 25_000);
        assert_eq!(parse_network_performance("100 Megabit"), 100);
        assert_eq!(parse_network_performance("Moderate"), 0);
    }

    #[test]
    fn config_errors_name_the_field() {
        let pool = PoolDef {
            id: "a".into(),
            region: "us-east-1".into(),
            zone: None,
            family: None,
        };
        let with = |f: &dyn Fn(&mut Ec2Config)| {
            let mut c = Ec2Config {
                pools: vec![pool.clone()],
                ..Ec2Config::default()
            };
            f(&mut c);
            c.validate().err().map(|e| e.to_string())
        };
        assert_eq!(with(&|_| {}), None);
        type Edit<'a> = &'a dyn Fn(&mut Ec2Config);
        let cases: [(&str, Edit<'_>); 6] = [
            (
                "invalid field `ec2.pool`: needs at least one [[ec2.pool]]",
                &|c| c.pools.clear(),
            ),
            (
                "invalid field `ec2.page_size`: 4 is outside EC2's 5 to 1000",
                &|c| c.page_size = 4,
            ),
            (
                "invalid field `ec2.max_attempts`: must be at least 1",
                &|c| c.max_attempts = 0,
            ),
            (
                "invalid field `ec2.endpoint_url`: `127.0.0.1:5000` is not an http:// or https:// URL",
                &|c| c.endpoint_url = Some("127.0.0.1:5000".into()),
            ),
            (
                "invalid field `ec2.batch_tag`: is the same as streaming_tag (ebb:role=streaming)",
                &|c| c.batch_tag = c.streaming_tag.clone(),
            ),
            (
                "invalid field `ec2.pool[0].zone`: `eu-west-1a` is not a zone of region `us-east-1`",
                &|c| c.pools[0].zone = Some("eu-west-1a".into()),
            ),
        ];
        for (want, f) in cases {
            assert_eq!(with(f).as_deref(), Some(want));
        }
    }

    #[test]
    fn the_config_refuses_unknown_keys() {
        let e = toml::from_str::<Ec2Config>(
            "page_size = 10\nstreaming_tag = { key = \"a\", valeu = \"b\" }\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `valeu`"), "{e}");
        let c: Ec2Config =
            toml::from_str("page_size = 10\n[[pool]]\nid = \"a\"\nregion = \"us-east-1\"\n")
                .unwrap();
        assert_eq!(
            (c.page_size, c.max_attempts, c.regions()),
            (10, 3, vec!["us-east-1".to_owned()])
        );
    }
}
