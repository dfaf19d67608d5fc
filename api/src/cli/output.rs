//! CLI output: aligned tables, CSV and JSON from the same rows.

use std::collections::BTreeMap;

use ebb_proto::v1 as pb;
use serde_json::{Value, json};

use super::{By, Format};

fn ie(micro: u64) -> Value {
    json!(micro as f64 / 1e6)
}

fn money(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// Writes rows as CSV with a header line (lowercase headers).
pub(crate) fn write_csv<W: std::io::Write>(
    out: W,
    headers: &[&str],
    rows: &[Vec<Value>],
) -> csv::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(headers.iter().map(|h| h.to_lowercase()))?;
    for r in rows {
        w.write_record(r.iter().map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }))?;
    }
    w.flush()?;
    Ok(())
}

/// Prints rows in a format.
fn emit(headers: &[&str], rows: Vec<Vec<Value>>, format: Format) {
    match format {
        Format::Json => {
            let list: Vec<Value> = rows
                .into_iter()
                .map(|r| Value::Object(headers.iter().map(|h| h.to_lowercase()).zip(r).collect()))
                .collect();
            println!("{}", serde_json::to_string_pretty(&list).expect("json"));
        }
        Format::Csv => {
            // A closed pipe (`| head`) is not worth an error message.
            let _ = write_csv(std::io::stdout(), headers, &rows);
        }
        Format::Table => {
            let cells: Vec<Vec<String>> =
                rows.iter().map(|r| r.iter().map(text).collect()).collect();
            let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
            for r in &cells {
                for (i, c) in r.iter().enumerate() {
                    widths[i] = widths[i].max(c.chars().count());
                }
            }
            let line = |cols: Vec<String>| {
                let mut s = String::new();
                for (i, c) in cols.iter().enumerate() {
                    if i + 1 == cols.len() {
                        s.push_str(c);
                    } else {
                        s.push_str(&format!("{c:<w$}  ", w = widths[i]));
                    }
                }
                println!("{}", s.trim_end());
            };
            line(headers.iter().map(|h| h.to_string()).collect());
            for r in cells {
                line(r);
            }
        }
    }
}

/// A job phase's name.
pub fn phase_name(p: i32) -> &'static str {
    match pb::JobPhase::try_from(p) {
        Ok(pb::JobPhase::Queued) => "queued",
        Ok(pb::JobPhase::Running) => "running",
        Ok(pb::JobPhase::Succeeded) => "succeeded",
        Ok(pb::JobPhase::Failed) => "failed",
        Ok(pb::JobPhase::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// True for phases after which nothing changes.
pub fn phase_ended(p: i32) -> bool {
    matches!(
        pb::JobPhase::try_from(p),
        Ok(pb::JobPhase::Succeeded | pb::JobPhase::Failed | pb::JobPhase::Cancelled)
    )
}

fn state_name(s: i32) -> &'static str {
    match pb::TaskState::try_from(s) {
        Ok(pb::TaskState::Pending) => "pending",
        Ok(pb::TaskState::Assigned) => "assigned",
        Ok(pb::TaskState::Running) => "running",
        Ok(pb::TaskState::Stopping) => "stopping",
        Ok(pb::TaskState::Completed) => "completed",
        Ok(pb::TaskState::Failed) => "failed",
        Ok(pb::TaskState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// `pending 3  running 5  ...`
pub fn counts_line(c: &pb::TaskCounts) -> String {
    format!(
        "pending {}  running {}  stopping {}  completed {}  failed {}  cancelled {}",
        c.pending, c.running, c.stopping, c.completed, c.failed, c.cancelled
    )
}

fn time(t: &Option<prost_types::Timestamp>) -> Value {
    match t {
        None => Value::Null,
        Some(t) => {
            let st = std::time::UNIX_EPOCH
                + std::time::Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32);
            json!(humantime::format_rfc3339_seconds(st).to_string())
        }
    }
}

/// `ebb capacity`.
pub fn capacity(pools: &[pb::Pool], format: Format) {
    let rows = pools
        .iter()
        .map(|p| {
            vec![
                json!(p.pool),
                json!(p.region),
                ie(p.reserved_micro_ie),
                ie(p.streaming_micro_ie),
                ie(p.headroom_micro_ie),
                ie(p.supply_micro_ie),
                ie(p.leased_micro_ie),
                ie(p.idle_micro_ie),
                json!(p.n_hosts),
                json!(p.n_leased_hosts),
            ]
        })
        .collect();
    emit(
        &[
            "POOL",
            "REGION",
            "RESERVED_IE",
            "STREAMING_IE",
            "HEADROOM_IE",
            "SUPPLY_IE",
            "LEASED_IE",
            "IDLE_IE",
            "HOSTS",
            "LEASED_HOSTS",
        ],
        rows,
        format,
    );
}

/// The reservation source under `ebb capacity`: its name, the age of the
/// snapshot in use, whether it is stale and why, and the items it left out.
/// On stdout after a table; on stderr with CSV or JSON, so the data stays
/// machine-readable.
pub fn capacity_source(source: Option<&pb::CapacitySource>, format: Format) {
    let Some(s) = source else { return };
    let now = std::time::SystemTime::now();
    let age = s
        .fetched_time
        .and_then(|t| std::time::SystemTime::try_from(t).ok())
        .map(|t| {
            let secs = now.duration_since(t).map_or(0, |d| d.as_secs());
            format!(
                "snapshot {} old",
                humantime::format_duration(std::time::Duration::from_secs(secs))
            )
        })
        .unwrap_or_else(|| "no snapshot yet".to_owned());
    let mut lines = vec![format!("source: {} ({age})", s.name)];
    if s.stale {
        lines.push(format!(
            "STALE: the last {} refresh(es) failed: {}; the market uses the last good snapshot",
            s.consecutive_failures.max(1),
            if s.last_error.is_empty() {
                "no snapshot yet"
            } else {
                &s.last_error
            }
        ));
    }
    for e in &s.item_errors {
        lines.push(format!("left out: {e}"));
    }
    for l in lines {
        match format {
            Format::Table => println!("{l}"),
            Format::Csv | Format::Json => eprintln!("{l}"),
        }
    }
}

/// `ebb price`.
pub fn prices(pools: &[pb::Pool], format: Format) {
    let rows = pools
        .iter()
        .map(|p| {
            vec![
                json!(p.pool),
                json!(money(p.clearing_price_micros_per_ie_hour)),
                ie(p.supply_micro_ie),
                ie(p.leased_micro_ie),
            ]
        })
        .collect();
    emit(
        &["POOL", "PRICE_PER_IE_HOUR", "SUPPLY_IE", "LEASED_IE"],
        rows,
        format,
    );
}

/// `ebb ledger`, grouped by pool or team.
pub fn ledger(r: &pb::GetLedgerResponse, by: By, format: Format) {
    #[derive(Default)]
    struct Row {
        held: u128,
        lost: u128,
        charges: u64,
        n_preemptions: u64,
        n_over_budget: u64,
    }
    let mut groups: BTreeMap<String, Row> = BTreeMap::new();
    for e in &r.entries {
        let key = match by {
            By::Pool => e.pool.clone(),
            By::Team => e.team.clone(),
        };
        let g = groups.entry(key).or_default();
        g.held += e.held_micro_ie_ms.parse::<u128>().unwrap_or(0);
        g.lost += e.lost_micro_ie_ms.parse::<u128>().unwrap_or(0);
        g.charges += e.charges_micros;
        g.n_preemptions += e.n_preemptions;
        g.n_over_budget += e.n_over_budget;
    }
    // micro-IE × ms per IE-hour.
    let hours = |v: u128| v as f64 / 3.6e12;
    let rows = groups
        .into_iter()
        .map(|(k, g)| {
            vec![
                json!(k),
                json!(hours(g.held)),
                json!(money(g.charges)),
                json!(hours(g.lost)),
                json!(g.n_preemptions),
                json!(g.n_over_budget),
            ]
        })
        .collect();
    let key = match by {
        By::Pool => "POOL",
        By::Team => "TEAM",
    };
    if format == Format::Table {
        println!(
            "from {} to {}",
            text(&time(&r.start_time)),
            text(&time(&r.end_time))
        );
    }
    emit(
        &[
            key,
            "IE_HOURS",
            "CHARGES",
            "LOST_IE_HOURS",
            "PREEMPTIONS",
            "OVER_BUDGET",
        ],
        rows,
        format,
    );
}

fn job_row(j: &pb::Job) -> Vec<Value> {
    let s = j.spec.clone().unwrap_or_default();
    let c = j.counts.unwrap_or_default();
    let tier = match pb::Tier::try_from(s.tier) {
        Ok(pb::Tier::Critical) => "critical",
        Ok(pb::Tier::Flex) => "flex",
        _ => "?",
    };
    vec![
        json!(j.job_id),
        json!(s.name),
        json!(s.team),
        json!(tier),
        json!(phase_name(j.phase)),
        json!(c.pending),
        json!(c.running),
        json!(c.completed),
        json!(c.failed + c.cancelled),
        time(&j.create_time),
    ]
}

const JOB_HEADERS: [&str; 10] = [
    "ID",
    "NAME",
    "TEAM",
    "TIER",
    "PHASE",
    "PENDING",
    "RUNNING",
    "COMPLETED",
    "FAILED",
    "CREATED",
];

/// `ebb job list`.
pub fn jobs(jobs: &[pb::Job], format: Format) {
    emit(&JOB_HEADERS, jobs.iter().map(job_row).collect(), format);
}

/// `ebb job get`.
pub fn job(j: &pb::Job, format: Format) {
    if format != Format::Table {
        return emit(&JOB_HEADERS, vec![job_row(j)], format);
    }
    let s = j.spec.clone().unwrap_or_default();
    let c = j.counts.unwrap_or_default();
    println!("job {}  {}  (team {})", j.job_id, s.name, s.team);
    println!("phase    {}", phase_name(j.phase));
    println!("tasks    {}  {}", s.n_tasks, counts_line(&c));
    if let Some(k) = &s.container {
        println!("image    {}", k.image);
    }
    println!("created  {}", text(&time(&j.create_time)));
    if j.finish_time.is_some() {
        println!("finished {}", text(&time(&j.finish_time)));
    }
    if !j.pending_reasons.is_empty() {
        println!("pending because:");
        for r in &j.pending_reasons {
            println!("  {}", reason_text(r));
        }
    }
}

fn reason_text(r: &pb::PendingReason) -> String {
    let hosts = if r.n_hosts > 0 {
        format!(
            " on {} host{}",
            r.n_hosts,
            if r.n_hosts == 1 { "" } else { "s" }
        )
    } else {
        String::new()
    };
    let fix = if r.resolvable_by_preemption {
        " (preemption could resolve)"
    } else {
        ""
    };
    format!("{}{hosts}{fix} [{}]", r.message, r.code_name)
}

/// `ebb job tasks`.
pub fn tasks(tasks: &[pb::Task], format: Format) {
    let rows = tasks
        .iter()
        .map(|t| {
            vec![
                json!(t.task_index),
                json!(state_name(t.state)),
                json!(if t.host_id.is_empty() {
                    "-".to_owned()
                } else {
                    t.host_id.clone()
                }),
                json!(t.run.as_ref().map_or(0, |r| r.attempt)),
                json!(t.n_failures),
                json!(t.n_preemptions),
                json!(
                    t.pending_reasons
                        .first()
                        .map(reason_text)
                        .unwrap_or_else(|| "-".into())
                ),
            ]
        })
        .collect();
    emit(
        &[
            "TASK",
            "STATE",
            "HOST",
            "ATTEMPT",
            "FAILURES",
            "PREEMPTIONS",
            "REASON",
        ],
        rows,
        format,
    );
}

/// `ebb job why`.
pub fn why(r: &pb::ExplainPendingResponse) {
    match r.task_index {
        Some(t) => println!("job {} task {t}: {}", r.job_id, r.summary),
        None => println!(
            "job {}: {} ready task(s) pending, {} backing off: {}",
            r.job_id, r.n_pending, r.n_backing_off, r.summary
        ),
    }
    for reason in &r.reasons {
        println!("  {}", reason_text(reason));
    }
    if !r.reasons.is_empty() {
        if r.resolvable_by_preemption {
            println!("preempting lower-ranked work could resolve some of these");
        } else {
            println!("preemption cannot resolve these");
        }
    }
}

/// Which finance report.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// Capacity: reserved, streaming, batch, headroom, idle, utilization, idle cost, savings.
    Utilization,
    /// Batch: IE-hours, charges, on-demand equivalent, savings, lost work.
    Chargeback,
}

fn usd(micros: u64) -> Value {
    json!(money(micros))
}

fn signed_usd(micros: i64) -> Value {
    let sign = if micros < 0 { "-" } else { "" };
    json!(format!("{sign}{}", money(micros.unsigned_abs())))
}

/// The headers (with units) and rows of a finance report, shared by the CLI
/// and the dashboard's CSV downloads so both print the same figures.
pub(crate) fn report_rows(
    rows: &[pb::UtilizationRow],
    kind: Report,
    with_times: bool,
) -> (Vec<&'static str>, Vec<Vec<Value>>) {
    let mut headers: Vec<&'static str> = Vec::new();
    if with_times {
        headers.extend(["START", "END"]);
    }
    headers.push("GROUP");
    match kind {
        Report::Utilization => headers.extend([
            "RESERVED_IE_HOURS",
            "STREAMING_IE_HOURS",
            "BATCH_IE_HOURS",
            "HEADROOM_IE_HOURS",
            "IDLE_IE_HOURS",
            "UTILIZATION_PCT",
            "IDLE_COST_USD",
            "SAVINGS_USD",
            "CLEARING_PRICE_USD_PER_IE_HOUR",
        ]),
        Report::Chargeback => headers.extend([
            "IE_HOURS",
            "CHARGES_USD",
            "ON_DEMAND_USD",
            "SAVINGS_USD",
            "LOST_IE_HOURS",
            "PREEMPTIONS",
            "OVER_BUDGET",
        ]),
    }
    let out = rows
        .iter()
        .map(|r| {
            let mut row = Vec::new();
            if with_times {
                row.push(time(&r.start_time));
                row.push(time(&r.end_time));
            }
            row.push(json!(r.group));
            match kind {
                Report::Utilization => row.extend([
                    json!(r.reserved_ie_hours),
                    json!(r.streaming_ie_hours),
                    json!(r.leased_ie_hours),
                    json!(r.headroom_ie_hours),
                    json!(r.idle_ie_hours),
                    r.utilization_ppm.map_or(Value::Null, |p| {
                        json!(format!("{:.2}", p as f64 / 10_000.0))
                    }),
                    usd(r.idle_cost_micros),
                    signed_usd(r.savings_micros),
                    usd(r.clearing_price_micros),
                ]),
                Report::Chargeback => row.extend([
                    json!(r.allocated_ie_hours),
                    usd(r.charges_micros),
                    usd(r.on_demand_micros),
                    signed_usd(r.savings_micros),
                    json!(r.lost_ie_hours),
                    json!(r.n_preemptions),
                    json!(r.n_over_budget),
                ]),
            }
            row
        })
        .collect();
    (headers, out)
}

/// `ebb report utilization|chargeback`: the series (one row per step and
/// group) or the totals over the range.
pub fn report(r: &pb::GetUtilizationResponse, series: bool, kind: Report, format: Format) {
    let rows = if series { &r.series } else { &r.totals };

    if format == Format::Table {
        println!(
            "from {} to {}",
            text(&time(&r.start_time)),
            text(&time(&r.end_time))
        );
        if kind == Report::Utilization && r.reserved_rate_source == "on-demand" {
            println!(
                "idle cost at the on-demand price ({} USD per IE-hour): no reservation rate is configured ([finance] reserved_usd_per_ie_hour)",
                money(r.reserved_rate_micros)
            );
        }
    }
    let (headers, rows) = report_rows(rows, kind, series);
    emit(&headers, rows, format);
}
