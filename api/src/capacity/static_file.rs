//! The static reservations file: pools, reservations, optional streaming
//! demand curves and instance types, in TOML. The zero-setup default source.
//!
//! ```toml
//! [[pool]]
//! id = "use1-a"
//! region = "us-east-1"
//! zone = "us-east-1a"          # optional: the whole region
//! family = "m5"                # optional: every family
//!
//! [[reservation]]
//! id = "ri-use1a-m5"           # optional: `reservation[N]`
//! instance_type = "m5.16xlarge"
//! count = 20
//! region = "us-east-1"
//! zone = "us-east-1a"          # optional: a regional reservation
//! start = 2025-01-01T00:00:00Z # optional, RFC 3339 (TOML date-time or string)
//! end = "2028-01-01T00:00:00Z" # optional, exclusive
//! offering_class = "standard"  # or "convertible"; default "standard"
//!
//! [[demand]]                   # optional: streaming demand of one pool
//! pool = "use1-a"
//! period = "24h"               # optional, default "24h"
//! points = [{ at = "0h", ie = 8.0 }, { at = "20h", ie = 16.0 }]
//!
//! [[instance_type]]            # optional: types the shipped catalog lacks
//! name = "m7i.16xlarge"
//! vcpus = 64
//! memory_gib = 256
//! network_mbps = 25000
//! on_demand_usd_per_hour = 3.2256
//! normalization_factor = 128
//! ```
//!
//! A demand curve is piecewise linear between its points and repeats every
//! `period`; offsets count from 00:00 UTC (periods are aligned to the Unix
//! epoch), so with the default period `at = "20h"` is 20:00 UTC every day.
//!
//! Unknown keys are errors in every table, and every error names the file,
//! the line and column (toml's spans) and the field, e.g.
//!
//! ```text
//! reservations.toml:12:9: invalid field `reservation[1].count`: invalid value: integer `-3`, expected u32
//! ```
//!
//! The file is re-read on every fetch, so an edit takes effect at the next
//! refresh; an edit that breaks it is an error of that fetch (the refresher
//! keeps the last good snapshot).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use ebb_scheduler::{Catalog, Ie, InstanceType, PoolId, Timestamp};
use serde::Deserialize;
use serde::de::{Deserializer, Error as _};
use toml::Spanned;

use super::snapshot::{
    self, Inputs, OfferingClass, PoolDef, ReservationRecord, Scope, Snapshot, Streaming,
};
use super::{BoxFuture, ReservationSource, SourceError};

/// A static reservations file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StaticFileError {
    /// The file could not be read.
    #[error("cannot read reservations file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid reservations file.
    #[error("{origin}:{line}:{column}: {}", describe(field.as_deref(), message))]
    Invalid {
        /// The file's path (or `<inline>`).
        origin: String,
        /// 1-based line of the offending text.
        line: usize,
        /// 1-based column of the offending text.
        column: usize,
        /// Dotted path of the offending field, e.g. `reservation[1].count`;
        /// none for a TOML syntax error.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
}

fn describe(field: Option<&str>, message: &str) -> String {
    match field {
        Some(f) => format!("invalid field `{f}`: {message}"),
        None => message.to_owned(),
    }
}

/// The static reservations file source.
#[derive(Debug)]
pub struct StaticFile {
    origin: Origin,
    catalog: Catalog,
}

#[derive(Debug)]
enum Origin {
    Path(PathBuf),
    Text(String),
}

impl StaticFile {
    /// Reads and checks `path`; later fetches read it again. `catalog` must
    /// be the market's, so that the snapshot's IE are the core's.
    pub fn load(path: impl Into<PathBuf>, catalog: Catalog) -> Result<StaticFile, StaticFileError> {
        let source = StaticFile {
            origin: Origin::Path(path.into()),
            catalog,
        };
        source.read()?;
        Ok(source)
    }

    /// A source over fixed TOML text (errors name it `<inline>`).
    pub fn from_toml(text: &str, catalog: Catalog) -> Result<StaticFile, StaticFileError> {
        let source = StaticFile {
            origin: Origin::Text(text.to_owned()),
            catalog,
        };
        source.read()?;
        Ok(source)
    }

    /// The snapshot at `now`: reservations with their terms, and the demand
    /// curves evaluated at `now`.
    pub fn snapshot_at(&self, now: Timestamp) -> Result<Snapshot, StaticFileError> {
        let parsed = self.read()?;
        let demand = parsed
            .curves
            .iter()
            .map(|(pool, curve)| (pool.clone(), curve.at(now)))
            .collect();
        Ok(snapshot::build(Inputs {
            source: self.name(),
            fetched_at: now,
            pools: &parsed.pools,
            catalog: &parsed.catalog,
            learned_types: parsed.instance_types,
            reservations: parsed.reservations,
            fleet: Vec::new(),
            streaming: Streaming::Curves(demand),
            n_untagged_instances: 0,
            errors: Vec::new(),
        }))
    }

    fn name(&self) -> String {
        match &self.origin {
            Origin::Path(p) => format!("static file {}", p.display()),
            Origin::Text(_) => "static file <inline>".to_owned(),
        }
    }

    fn read(&self) -> Result<Parsed, StaticFileError> {
        match &self.origin {
            Origin::Path(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| StaticFileError::Read {
                        path: path.clone(),
                        source,
                    })?;
                parse(&text, &path.display().to_string(), &self.catalog)
            }
            Origin::Text(text) => parse(text, "<inline>", &self.catalog),
        }
    }

    /// The file's path, if it was loaded from one.
    pub fn path(&self) -> Option<&Path> {
        match &self.origin {
            Origin::Path(p) => Some(p),
            Origin::Text(_) => None,
        }
    }
}

impl ReservationSource for StaticFile {
    fn describe(&self) -> String {
        self.name()
    }

    fn fetch(&self, now: Timestamp) -> BoxFuture<'_, Result<Snapshot, SourceError>> {
        let result = self.snapshot_at(now).map_err(SourceError::from);
        Box::pin(async move { result })
    }
}

/// A streaming demand curve: piecewise linear, repeating every period.
#[derive(Clone, Debug, PartialEq, Eq)]
struct DemandCurve {
    period_ms: u64,
    /// `(offset_ms, micro-IE)`, offsets strictly increasing and `< period_ms`.
    points: Vec<(u64, u64)>,
}

impl DemandCurve {
    /// Demand at `t`: linear between the points around `t`'s phase in the
    /// period, wrapping from the last point to the first of the next period.
    fn at(&self, t: Timestamp) -> Ie {
        let p = &self.points;
        if p.len() == 1 {
            return Ie::from_micro(p[0].1);
        }
        let period = i128::from(self.period_ms);
        let phase = i128::from(t.as_millis() % self.period_ms);
        let wide = |(at, ie): (u64, u64)| (i128::from(at), i128::from(ie));
        let after = p.partition_point(|&(at, _)| i128::from(at) <= phase);
        let ((t0, v0), (t1, v1)) = if after == 0 {
            let (t_last, v_last) = wide(p[p.len() - 1]);
            ((t_last - period, v_last), wide(p[0]))
        } else if after == p.len() {
            let (t_first, v_first) = wide(p[0]);
            (wide(p[p.len() - 1]), (t_first + period, v_first))
        } else {
            (wide(p[after - 1]), wide(p[after]))
        };
        // Integer interpolation: exact to the micro-IE, no float drift.
        let v = v0 + (v1 - v0) * (phase - t0) / (t1 - t0);
        Ie::from_micro(u64::try_from(v).unwrap_or(0))
    }
}

/// The file after parsing and checking.
struct Parsed {
    pools: Vec<PoolDef>,
    reservations: Vec<ReservationRecord>,
    curves: BTreeMap<PoolId, DemandCurve>,
    instance_types: Vec<InstanceType>,
    /// The market's catalog extended with `instance_types`.
    catalog: Catalog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    pool: Vec<Spanned<PoolDef>>,
    #[serde(default)]
    reservation: Vec<Spanned<ReservationEntry>>,
    #[serde(default)]
    demand: Vec<Spanned<DemandEntry>>,
    #[serde(default)]
    instance_type: Vec<Spanned<InstanceTypeEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReservationEntry {
    id: Option<Spanned<String>>,
    instance_type: Spanned<String>,
    count: Spanned<u32>,
    region: Spanned<String>,
    zone: Option<Spanned<String>>,
    start: Option<Spanned<TimeField>>,
    end: Option<Spanned<TimeField>>,
    #[serde(default)]
    offering_class: OfferingClass,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DemandEntry {
    pool: Spanned<String>,
    period: Option<Spanned<OffsetField>>,
    points: Vec<Spanned<PointEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PointEntry {
    at: OffsetField,
    ie: f64,
}

/// The catalog's [`InstanceType`] with unknown keys refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceTypeEntry {
    name: String,
    vcpus: u32,
    memory_gib: u32,
    network_mbps: u64,
    #[serde(default)]
    gpus: u32,
    #[serde(default)]
    gpu_model: Option<String>,
    on_demand_usd_per_hour: f64,
    normalization_factor: f64,
}

/// The default demand period: streaming demand is diurnal.
const DAY_MS: u64 = 24 * 3_600_000;

/// An RFC 3339 timestamp, written as a TOML offset date-time or a string.
struct TimeField(Timestamp);

impl<'de> Deserialize<'de> for TimeField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = match toml::Value::deserialize(d)? {
            toml::Value::String(s) => s,
            toml::Value::Datetime(dt) => dt.to_string(),
            other => {
                return Err(D::Error::custom(format!(
                    "expected an RFC 3339 timestamp such as 2025-01-01T00:00:00Z, found {}",
                    other.type_str()
                )));
            }
        };
        parse_rfc3339(&text)
            .map(TimeField)
            .map_err(D::Error::custom)
    }
}

/// Milliseconds since the Unix epoch of an RFC 3339 timestamp (an offset is
/// required: a local time would mean something else on every server).
fn parse_rfc3339(text: &str) -> Result<Timestamp, String> {
    let t: jiff::Timestamp = text.parse().map_err(|e| {
        format!("`{text}` is not an RFC 3339 timestamp such as 2025-01-01T00:00:00Z: {e}")
    })?;
    u64::try_from(t.as_millisecond())
        .map(Timestamp::from_millis)
        .map_err(|_| format!("`{text}` is before 1970-01-01T00:00:00Z"))
}

/// A non-negative time offset such as `"20h"`, `"90m"` or `"1h30m"`.
struct OffsetField(u64);

impl<'de> Deserialize<'de> for OffsetField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let invalid = |why: String| {
            D::Error::custom(format!(
                "`{text}` is not a time offset such as \"20h\" or \"1h30m\": {why}"
            ))
        };
        let duration: jiff::SignedDuration = text.parse().map_err(|e| invalid(format!("{e}")))?;
        if duration.is_negative() {
            return Err(invalid("it is negative".into()));
        }
        u64::try_from(duration.as_millis())
            .map(OffsetField)
            .map_err(|_| invalid("it is too large".into()))
    }
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

struct Ctx<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Ctx<'_> {
    fn err(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        message: impl fmt::Display,
    ) -> StaticFileError {
        let (line, column) = line_col(self.text, span.start);
        StaticFileError::Invalid {
            origin: self.origin.to_owned(),
            line,
            column,
            field: Some(field.into()),
            message: message.to_string(),
        }
    }
}

/// serde_path_to_error's path without toml's internal `Spanned` keys.
fn clean_path(path: &serde_path_to_error::Path) -> String {
    path.to_string()
        .split('.')
        .filter(|seg| !seg.starts_with("$__"))
        .collect::<Vec<_>>()
        .join(".")
}

fn parse(text: &str, origin: &str, base: &Catalog) -> Result<Parsed, StaticFileError> {
    let ctx = Ctx { text, origin };
    let syntax = |e: toml::de::Error| {
        let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
        StaticFileError::Invalid {
            origin: origin.to_owned(),
            line,
            column,
            field: None,
            message: e.message().to_owned(),
        }
    };
    let de = toml::Deserializer::parse(text).map_err(syntax)?;
    let doc: FileDoc = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = clean_path(e.path());
        let inner = e.into_inner();
        let (line, column) = line_col(text, inner.span().map_or(0, |s| s.start));
        StaticFileError::Invalid {
            origin: origin.to_owned(),
            line,
            column,
            field: (!field.is_empty() && field != "?").then_some(field),
            message: inner.message().to_owned(),
        }
    })?;

    // Instance types first: reservations may use them.
    let reference = base.reference().name.clone();
    let mut instance_types = Vec::new();
    for (i, entry) in doc.instance_type.iter().enumerate() {
        let e = entry.get_ref();
        let t = InstanceType {
            name: e.name.clone(),
            vcpus: e.vcpus,
            memory_gib: e.memory_gib,
            network_mbps: e.network_mbps,
            gpus: e.gpus,
            gpu_model: e.gpu_model.clone(),
            on_demand_usd_per_hour: e.on_demand_usd_per_hour,
            normalization_factor: e.normalization_factor,
        };
        base.with_overrides(std::slice::from_ref(&t), &reference)
            .map_err(|err| match err {
                ebb_scheduler::InputError::InvalidField { field, message } => ctx.err(
                    entry.span(),
                    format!(
                        "instance_type[{i}].{}",
                        field.trim_start_matches("instance_type.")
                    ),
                    message,
                ),
                other => ctx.err(entry.span(), format!("instance_type[{i}]"), other),
            })?;
        instance_types.push(t);
    }
    let catalog = base
        .with_overrides(&instance_types, &reference)
        .expect("each type was checked on its own");

    let pools: Vec<PoolDef> = doc.pool.iter().map(|p| p.get_ref().clone()).collect();
    snapshot::validate_pools(&pools).map_err(|e| {
        ctx.err(
            doc.pool[e.index].span(),
            format!("pool[{}].{}", e.index, e.field),
            e.message,
        )
    })?;

    let mut reservations = Vec::new();
    let mut ids = BTreeMap::new();
    for (i, entry) in doc.reservation.into_iter().enumerate() {
        let span = entry.span();
        let r = entry.into_inner();
        let field = |name: &str| format!("reservation[{i}].{name}");
        let id = match &r.id {
            Some(id) if id.get_ref().trim().is_empty() => {
                return Err(ctx.err(id.span(), field("id"), "must not be empty"));
            }
            Some(id) => id.get_ref().clone(),
            None => format!("reservation[{i}]"),
        };
        if let Some(first) = ids.insert(id.clone(), i) {
            let at = r.id.as_ref().map_or(span.clone(), Spanned::span);
            return Err(ctx.err(
                at,
                field("id"),
                format!("reservation `{id}` is already defined (reservation[{first}])"),
            ));
        }
        let ty = r.instance_type.get_ref();
        if catalog.get(ty).is_none() {
            return Err(ctx.err(
                r.instance_type.span(),
                field("instance_type"),
                format!(
                    "unknown instance type `{ty}`: add an [[instance_type]] table for it, \
                     or use one of the catalog's types"
                ),
            ));
        }
        if *r.count.get_ref() == 0 {
            return Err(ctx.err(r.count.span(), field("count"), "must be at least 1"));
        }
        let region = r.region.get_ref();
        if region.trim().is_empty() {
            return Err(ctx.err(r.region.span(), field("region"), "must not be empty"));
        }
        let scope = match &r.zone {
            Some(z)
                if !(z.get_ref().starts_with(region.as_str())
                    && z.get_ref().len() > region.len()) =>
            {
                return Err(ctx.err(
                    z.span(),
                    field("zone"),
                    format!("`{}` is not a zone of region `{region}`", z.get_ref()),
                ));
            }
            Some(z) => Scope::Zone(z.get_ref().clone()),
            None => Scope::Region,
        };
        let start = r.start.as_ref().map(|s| s.get_ref().0);
        let end = r.end.as_ref().map(|e| e.get_ref().0);
        if let (Some(s), Some(e), Some(end_field)) = (start, end, &r.end)
            && e <= s
        {
            return Err(ctx.err(end_field.span(), field("end"), "must be after `start`"));
        }
        let record = ReservationRecord {
            id,
            region: region.clone(),
            scope,
            instance_type: ty.clone(),
            count: *r.count.get_ref(),
            start,
            end,
            offering_class: r.offering_class,
        };
        if !snapshot::has_pool(&pools, &record) {
            return Err(ctx.err(
                span,
                format!("reservation[{i}]"),
                format!(
                    "no [[pool]] covers {} {} in {}",
                    record.instance_type,
                    match &record.scope {
                        Scope::Zone(_) => "instances",
                        Scope::Region => "regional reservations",
                    },
                    match &record.scope {
                        Scope::Zone(z) => z.clone(),
                        Scope::Region => format!("region {region}"),
                    }
                ),
            ));
        }
        reservations.push(record);
    }

    let mut curves = BTreeMap::new();
    for (i, entry) in doc.demand.into_iter().enumerate() {
        let span = entry.span();
        let d = entry.into_inner();
        let field = |name: &str| format!("demand[{i}].{name}");
        let pool: PoolId = d.pool.get_ref().as_str().into();
        if !pools.iter().any(|p| p.id == pool) {
            return Err(ctx.err(
                d.pool.span(),
                field("pool"),
                format!("no [[pool]] has id `{pool}`"),
            ));
        }
        let period_ms = d.period.as_ref().map_or(DAY_MS, |p| p.get_ref().0);
        if period_ms == 0 {
            let span = d.period.as_ref().map_or(0..0, Spanned::span);
            return Err(ctx.err(span, field("period"), "must be longer than zero"));
        }
        let entries = d.points;
        if entries.is_empty() {
            return Err(ctx.err(span, field("points"), "needs at least one point"));
        }
        let mut points: Vec<(u64, u64)> = Vec::with_capacity(entries.len());
        for (j, p) in entries.iter().enumerate() {
            let point = p.get_ref();
            if point.at.0 >= period_ms {
                return Err(ctx.err(
                    p.span(),
                    field(&format!("points[{j}].at")),
                    format!("must be less than the period ({period_ms} ms)"),
                ));
            }
            if points.last().is_some_and(|&(prev, _)| point.at.0 <= prev) {
                return Err(ctx.err(
                    p.span(),
                    field(&format!("points[{j}].at")),
                    "offsets must increase from point to point",
                ));
            }
            if !(point.ie.is_finite() && point.ie >= 0.0) {
                return Err(ctx.err(
                    p.span(),
                    field(&format!("points[{j}].ie")),
                    "must be a finite, non-negative number of IE",
                ));
            }
            points.push((point.at.0, Ie::from_f64(point.ie).as_micro()));
        }
        if curves
            .insert(pool.clone(), DemandCurve { period_ms, points })
            .is_some()
        {
            return Err(ctx.err(
                d.pool.span(),
                field("pool"),
                format!("pool `{pool}` already has a demand curve"),
            ));
        }
    }

    Ok(Parsed {
        pools,
        reservations,
        curves,
        instance_types,
        catalog,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<StaticFile, StaticFileError> {
        StaticFile::from_toml(text, Catalog::builtin())
    }

    fn error(text: &str) -> String {
        load(text)
            .expect_err("the file should be refused")
            .to_string()
    }

    /// 2025-01-01T00:00:00Z in ms since the Unix epoch (20 089 days × 86 400 000).
    const JAN_1_2025_MS: u64 = 1_735_689_600_000;

    const GOOD: &str = r#"
[[pool]]
id = "use1-a"
region = "us-east-1"
zone = "us-east-1a"

[[pool]]
id = "use1-b"
region = "us-east-1"
zone = "us-east-1b"

[[reservation]]
id = "ri-a"
instance_type = "m5.16xlarge"
count = 6
region = "us-east-1"
zone = "us-east-1a"
start = 2025-01-01T00:00:00Z
end = "2025-01-02T00:00:00Z"

[[reservation]]
instance_type = "m7i.16xlarge"
count = 2
region = "us-east-1"
zone = "us-east-1b"
offering_class = "convertible"

[[reservation]]
id = "ri-regional"
instance_type = "c5.9xlarge"
count = 4
region = "us-east-1"

[[demand]]
pool = "use1-a"
points = [{ at = "0h", ie = 2.0 }, { at = "12h", ie = 6.0 }]

[[instance_type]]
name = "m7i.16xlarge"
vcpus = 64
memory_gib = 256
network_mbps = 25000
on_demand_usd_per_hour = 3.2256
normalization_factor = 128
"#;

    #[test]
    fn a_good_file_gives_hand_computed_figures() {
        let src = load(GOOD).unwrap();
        // 06:00 UTC on 2025-01-01: inside ri-a's one-day term.
        let t = Timestamp::from_millis(JAN_1_2025_MS + 6 * 3_600_000);
        let s = src.snapshot_at(t).unwrap();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        let a = s.pool(&"use1-a".into()).unwrap();
        let b = s.pool(&"use1-b".into()).unwrap();
        // Zonal: a = 6 × 1 IE = 6; b = 2 × m7i.16xlarge (64/64 vCPU) = 2.
        // Regional 4 × c5.9xlarge split 6 : 2 → 3, 1 (quotas 3, 1 exactly).
        // a = 6 + 3 × 0.5625 = 7.6875 IE; b = 2 + 1 × 0.5625 = 2.5625 IE.
        assert_eq!(a.reserved_ie, Ie::from_f64(7.6875));
        assert_eq!(b.reserved_ie, Ie::from_f64(2.5625));
        // Demand at 06:00 is halfway from 2 IE (00:00) to 6 IE (12:00): 4 IE.
        assert_eq!(a.streaming_ie, Some(Ie::from_whole(4)));
        assert_eq!(b.streaming_ie, None, "no curve, no figure");
        assert_eq!(s.instance_types.len(), 1);
        assert_eq!(s.instance_types[0].name, "m7i.16xlarge");
        let unnamed = &b.reservations[0];
        assert_eq!(unnamed.reservation_id, "reservation[1]");
        assert_eq!(unnamed.offering_class, OfferingClass::Convertible);
        let ri_a = &a.reservations[0];
        assert_eq!(ri_a.start, Some(Timestamp::from_millis(JAN_1_2025_MS)));
        assert_eq!(
            ri_a.end,
            Some(Timestamp::from_millis(JAN_1_2025_MS + DAY_MS))
        );
        // After ri-a's end only the regional share (3 × 0.5625) is left in a.
        let next_day = Timestamp::from_millis(JAN_1_2025_MS + DAY_MS);
        assert_eq!(a.reserved_ie_at(next_day), Ie::from_f64(1.6875));
        assert_eq!(s.next_change_after(t), Some(next_day));
        assert_eq!(s.source, "static file <inline>");
    }

    #[test]
    fn demand_curves_interpolate_and_wrap() {
        let curve = DemandCurve {
            period_ms: DAY_MS,
            points: vec![
                (6 * 3_600_000, Ie::from_whole(10).as_micro()),
                (18 * 3_600_000, Ie::from_whole(4).as_micro()),
            ],
        };
        let h = |hours: u64| Timestamp::from_millis(JAN_1_2025_MS + hours * 3_600_000);
        assert_eq!(curve.at(h(6)), Ie::from_whole(10));
        // 12:00 is halfway from 10 (06:00) to 4 (18:00): 7.
        assert_eq!(curve.at(h(12)), Ie::from_whole(7));
        // 00:00 is halfway from 4 (18:00) to 10 (06:00 next day): 7.
        assert_eq!(curve.at(h(0)), Ie::from_whole(7));
        // 21:00 is a quarter of the way from 4 to 10: 5.5.
        assert_eq!(curve.at(h(21)), Ie::from_f64(5.5));
        // 03:00 is three quarters of the way: 8.5.
        assert_eq!(curve.at(h(3)), Ie::from_f64(8.5));
        // The curve repeats daily.
        assert_eq!(curve.at(h(24 + 12)), Ie::from_whole(7));
        let flat = DemandCurve {
            period_ms: DAY_MS,
            points: vec![(0, Ie::from_whole(3).as_micro())],
        };
        assert_eq!(flat.at(h(17)), Ie::from_whole(3));
    }

    #[test]
    fn errors_name_the_line_and_the_field() {
        let cases = [
            (
                "unknown top-level key",
                "[[pools]]\nid = \"a\"\n".to_owned(),
                "<inline>:1:3: invalid field `pools`: unknown field `pools`",
            ),
            (
                "unknown key in a pool",
                "[[pool]]\nid = \"a\"\nregion = \"us-east-1\"\nzonee = \"us-east-1a\"\n".to_owned(),
                "<inline>:4:1: invalid field `pool[0].zonee`: unknown field `zonee`",
            ),
            (
                "unknown key in a demand point",
                with_pool("[[demand]]\npool = \"a\"\npoints = [{ at = \"0h\", ie = 1.0, iee = 2 }]\n"),
                "<inline>:7:34: invalid field `demand[0].points[0].iee`: unknown field `iee`",
            ),
            (
                "negative count",
                with_pool("[[reservation]]\ninstance_type = \"m5.large\"\ncount = -3\nregion = \"us-east-1\"\n"),
                "<inline>:7:9: invalid field `reservation[0].count`: invalid value: integer `-3`, expected u32",
            ),
            (
                "zero count",
                with_pool("[[reservation]]\ninstance_type = \"m5.large\"\ncount = 0\nregion = \"us-east-1\"\n"),
                "<inline>:7:9: invalid field `reservation[0].count`: must be at least 1",
            ),
            (
                "bad timestamp",
                with_pool("[[reservation]]\ninstance_type = \"m5.large\"\ncount = 1\nregion = \"us-east-1\"\nstart = \"2025-13-01T00:00:00Z\"\n"),
                "<inline>:9:9: invalid field `reservation[0].start`: `2025-13-01T00:00:00Z` is not an RFC 3339 timestamp",
            ),
            (
                "timestamp without offset",
                with_pool("[[reservation]]\ninstance_type = \"m5.large\"\ncount = 1\nregion = \"us-east-1\"\nend = 2025-01-01T00:00:00\n"),
                "<inline>:9:7: invalid field `reservation[0].end`: `2025-01-01T00:00:00` is not an RFC 3339 timestamp",
            ),
            (
                "end before start",
                with_pool("[[reservation]]\ninstance_type = \"m5.large\"\ncount = 1\nregion = \"us-east-1\"\nstart = 2025-02-01T00:00:00Z\nend = 2025-01-01T00:00:00Z\n"),
                "<inline>:10:7: invalid field `reservation[0].end`: must be after `start`",
            ),
            (
                "unknown instance type",
                with_pool("[[reservation]]\ninstance_type = \"x1.weird\"\ncount = 1\nregion = \"us-east-1\"\n"),
                "<inline>:6:17: invalid field `reservation[0].instance_type`: unknown instance type `x1.weird`",
            ),
            (
                "bad offering class",
                with_pool("[[reservation]]\ninstance_type = \"m5.large\"\ncount = 1\nregion = \"us-east-1\"\noffering_class = \"premium\"\n"),
                "<inline>:9:18: invalid field `reservation[0].offering_class`: unknown variant `premium`, expected `standard` or `convertible`",
            ),
            (
                "zone outside its region",
                with_pool("[[reservation]]\ninstance_type = \"m5.large\"\ncount = 1\nregion = \"us-east-1\"\nzone = \"us-west-2a\"\n"),
                "<inline>:9:8: invalid field `reservation[0].zone`: `us-west-2a` is not a zone of region `us-east-1`",
            ),
            (
                "no pool covers it",
                with_pool("[[reservation]]\ninstance_type = \"m5.large\"\ncount = 1\nregion = \"us-east-1\"\nzone = \"us-east-1c\"\n"),
                "<inline>:5:1: invalid field `reservation[0]`: no [[pool]] covers m5.large instances in us-east-1c",
            ),
            (
                "duplicate pool",
                with_pool("[[pool]]\nid = \"a\"\nregion = \"us-west-2\"\n"),
                "<inline>:5:1: invalid field `pool[1].id`: pool `a` is already defined (pool 0)",
            ),
            (
                "demand for an unknown pool",
                with_pool("[[demand]]\npool = \"b\"\npoints = [{ at = \"0h\", ie = 1.0 }]\n"),
                "<inline>:6:8: invalid field `demand[0].pool`: no [[pool]] has id `b`",
            ),
            (
                "negative demand",
                with_pool("[[demand]]\npool = \"a\"\npoints = [{ at = \"0h\", ie = -1.0 }]\n"),
                "<inline>:7:11: invalid field `demand[0].points[0].ie`: must be a finite, non-negative number of IE",
            ),
            (
                "offsets out of order",
                with_pool("[[demand]]\npool = \"a\"\npoints = [{ at = \"5h\", ie = 1.0 }, { at = \"2h\", ie = 1.0 }]\n"),
                "<inline>:7:36: invalid field `demand[0].points[1].at`: offsets must increase",
            ),
            (
                "offset beyond the period",
                with_pool("[[demand]]\npool = \"a\"\nperiod = \"1h\"\npoints = [{ at = \"2h\", ie = 1.0 }]\n"),
                "<inline>:8:11: invalid field `demand[0].points[0].at`: must be less than the period",
            ),
            (
                "bad offset",
                with_pool("[[demand]]\npool = \"a\"\npoints = [{ at = \"soon\", ie = 1.0 }]\n"),
                "<inline>:7:18: invalid field `demand[0].points[0].at`: `soon` is not a time offset",
            ),
            (
                "bad instance type facts",
                "[[instance_type]]\nname = \"z9.big\"\nvcpus = 0\nmemory_gib = 4\nnetwork_mbps = 1\non_demand_usd_per_hour = 1.0\nnormalization_factor = 8\n".to_owned(),
                "<inline>:1:1: invalid field `instance_type[0].vcpus`: z9.big: must be greater than zero",
            ),
            (
                "TOML syntax",
                "[[pool]\n".to_owned(),
                "<inline>:1:8: ",
            ),
        ];
        let mut wrong = Vec::new();
        for (name, text, want) in cases {
            let got = error(&text);
            if !got.starts_with(want) {
                wrong.push(format!("{name}:\n got: {got}\nwant: {want}…"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// A four-line pool `a` in us-east-1a, then `rest` (so `rest` starts at line 5).
    const POOL_A: &str = "[[pool]]\nid = \"a\"\nregion = \"us-east-1\"\nzone = \"us-east-1a\"\n";

    fn with_pool(rest: &str) -> String {
        POOL_A.to_owned() + rest
    }

    #[test]
    fn an_empty_file_is_an_empty_source() {
        let s = load("").unwrap().snapshot_at(Timestamp::ZERO).unwrap();
        assert!(s.pools.is_empty() && s.errors.is_empty());
    }

    #[test]
    fn the_shipped_example_gives_the_figures_its_comments_claim() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/reservations.toml");
        let src = StaticFile::load(path, Catalog::builtin()).unwrap();
        let s = src
            .snapshot_at(Timestamp::from_millis(JAN_1_2025_MS))
            .unwrap();
        assert!(s.errors.is_empty(), "{:?}", s.errors);
        let pool = |id: &str| s.pool(&id.into()).unwrap();
        // use1-a: 40 + 16 × 36/64 = 49 IE zonal, plus 13 of the 20 regional
        // m5.8xlarge (20 × 49/73 = 13.42 → 13) × 0.5 = 6.5 IE.
        assert_eq!(pool("use1-a").reserved_ie, Ie::from_f64(55.5));
        // use1-b: 24 IE zonal plus 7 × 0.5 = 3.5 IE (20 × 24/73 = 6.58 → 7).
        assert_eq!(pool("use1-b").reserved_ie, Ie::from_f64(27.5));
        // usw2: 30 m7i.16xlarge, 64/64 vCPU each, until 2025-09-01.
        assert_eq!(pool("usw2").reserved_ie, Ie::from_whole(30));
        // 00:00 UTC lies 11 h into the 12 h rise from 12 IE (13:00) to
        // 42 IE (01:00 next day): 12 + 30 × 11/12 = 39.5 IE.
        assert_eq!(pool("use1-a").streaming_ie, Some(Ie::from_f64(39.5)));
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let e = StaticFile::load("/nonexistent/reservations.toml", Catalog::builtin()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read reservations file /nonexistent/reservations.toml: "),
            "{e}"
        );
    }

    #[test]
    fn the_file_is_read_again_on_every_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.toml");
        std::fs::write(&path, POOL_A).unwrap();
        let src = StaticFile::load(&path, Catalog::builtin()).unwrap();
        let now = Timestamp::ZERO;
        assert_eq!(src.snapshot_at(now).unwrap().pools.len(), 1);
        std::fs::write(
            &path,
            with_pool("[[pool]]\nid = \"b\"\nregion = \"us-west-2\"\n"),
        )
        .unwrap();
        assert_eq!(src.snapshot_at(now).unwrap().pools.len(), 2);
        std::fs::write(&path, "[[pool]]\nidd = 1\n").unwrap();
        assert!(src.snapshot_at(now).is_err());
    }
}
