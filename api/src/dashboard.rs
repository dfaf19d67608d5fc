//! The finance dashboard on the HTTP port: server-rendered HTML with inline
//! SVG charts (no JavaScript, no external CDN or font, so it works offline
//! and in any browser), CSV downloads, and a login form.
//!
//! Who may look: the finance principal and admins (everyone in dev mode),
//! authenticated by an `Authorization: Bearer <token>` header or by a
//! session cookie the login form sets. Others get 403; a browser without
//! credentials is sent to the login form.
//!
//! Safety: the session cookie is `HttpOnly; SameSite=Strict` and names a
//! random server-side session (the token itself never sits in a cookie);
//! the login form carries a CSRF token that must match a `SameSite=Strict`
//! cookie set with the form (double submit), so another site cannot log a
//! browser in; and every value rendered from data (team names, pool ids,
//! regions) goes through [`esc`].
//!
//! The figures come from the same driver request as `GetUtilization`, so
//! the dashboard, `ebb report` and the gRPC API agree.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use ebb_proto::v1 as pb;
use serde::Deserialize;

use crate::auth::{Authenticator, Principal};
use crate::cli::output::{self, Report};
use crate::driver::Request as D;
use crate::error::ApiError;
use crate::finance::Grouping;
use crate::ha::Leadership;

/// A session lasts a working day; then the login form again.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Session cookie name.
const SESSION_COOKIE: &str = "ebb_session";
/// CSRF cookie name (double submit with the form's hidden field).
const CSRF_COOKIE: &str = "ebb_csrf";

/// What the dashboard handlers share.
#[derive(Clone)]
pub struct Dashboard {
    role: Leadership,
    auth: Authenticator,
    /// Session id → (principal, expiry, the session's CSRF token for the logout form).
    sessions: Arc<Mutex<HashMap<String, Session>>>,
}

/// A logged-in browser.
struct Session {
    principal: Principal,
    expires: Instant,
    csrf: String,
}

impl Dashboard {
    /// Over the driver, authenticating with the server's tokens.
    pub fn new(role: Leadership, auth: Authenticator) -> Self {
        Dashboard {
            role,
            auth,
            sessions: Arc::default(),
        }
    }

    /// The caller's principal from a bearer header or a live session cookie.
    fn principal(&self, headers: &HeaderMap) -> Option<Principal> {
        if self.auth.is_dev_mode() {
            return Some(Principal::Dev);
        }
        if let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
        {
            return self.auth.principal_for_token(token);
        }
        self.session(headers, |s| s.principal.clone())
    }

    /// Reads the request's live session, dropping expired ones first.
    fn session<T>(&self, headers: &HeaderMap, read: impl FnOnce(&Session) -> T) -> Option<T> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.get(&id).map(read)
    }

    /// `Ok` for finance and admins, else the response to send instead.
    // The error is the handler's own response, built and returned once per
    // request; boxing it would only add noise at every call site.
    #[allow(clippy::result_large_err)]
    fn check(&self, headers: &HeaderMap) -> Result<(), Response> {
        match self.principal(headers) {
            None => Err(Redirect::to("/login").into_response()),
            Some(p) => p.check_finance().map_err(|e| {
                page(
                    StatusCode::FORBIDDEN,
                    "Not allowed",
                    &format!(
                        "<p>{}. The dashboard needs a finance or admin token. \
                         <a href=\"/login\">Log in with another token</a>.</p>",
                        esc(&e.to_string())
                    ),
                )
            }),
        }
    }
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// 32 random bytes, hex: a session id or CSRF token.
fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The dashboard's time windows.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum Window {
    /// The last day, in 15-minute steps.
    #[default]
    #[serde(rename = "24h")]
    Day,
    /// The last week, in 2-hour steps.
    #[serde(rename = "7d")]
    Week,
    /// The last 30 days, in 6-hour steps.
    #[serde(rename = "30d")]
    Month,
}

impl Window {
    const ALL: [Window; 3] = [Window::Day, Window::Week, Window::Month];

    fn name(self) -> &'static str {
        match self {
            Window::Day => "24h",
            Window::Week => "7d",
            Window::Month => "30d",
        }
    }

    /// (range, step) in ms. About a hundred steps per chart: enough to see
    /// the daily curve, few enough to read one sample per step quickly.
    fn range_step_ms(self) -> (u64, u64) {
        const H: u64 = 3_600_000;
        match self {
            Window::Day => (24 * H, H / 4),
            Window::Week => (7 * 24 * H, 2 * H),
            Window::Month => (30 * 24 * H, 6 * H),
        }
    }
}

/// `?range=24h|7d|30d`.
#[derive(Debug, Default, Deserialize)]
pub struct RangeQuery {
    #[serde(default)]
    range: Window,
}

impl Dashboard {
    #[allow(clippy::result_large_err)] // as `check`
    async fn report(
        &self,
        w: Window,
        by: Grouping,
    ) -> Result<pb::GetUtilizationResponse, Response> {
        let (range, step) = w.range_step_ms();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let unavailable = |e: ApiError| {
            page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                &format!("<p>{}</p>", esc(&e.to_string())),
            )
        };
        self.role
            .driver()
            .map_err(unavailable)?
            .call(|reply| D::Utilization {
                start: Some(now.saturating_sub(range)),
                end: None,
                step_ms: step,
                by,
                reply,
            })
            .await
            .map_err(unavailable)
    }
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Ebb</title><style>{STYLE}</style></head>\
         <body><header><strong>Ebb</strong> finance</header><main><h1>{title}</h1>{body}</main></body></html>",
        title = esc(title),
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing external, nothing scripted: say so to the browser.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// System fonts only (nothing to download); colours readable in print.
const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1d2430;background:#f6f7f9}\
header{background:#1d2430;color:#fff;padding:10px 24px}main{padding:8px 24px 32px;max-width:1100px}\
h1{font-size:22px}h2{font-size:17px;margin-top:28px}\
.tiles{display:flex;gap:12px;flex-wrap:wrap}.tile{background:#fff;border:1px solid #d8dde5;border-radius:6px;padding:12px 16px;min-width:180px}\
.tile .v{font-size:24px;font-weight:600}.tile .l{font-size:12px;color:#5a6473}\
table{border-collapse:collapse;background:#fff;font-size:13px}th,td{border:1px solid #d8dde5;padding:4px 8px;text-align:right}\
th:first-child,td:first-child{text-align:left}nav a{margin-right:12px}.cur{font-weight:700}\
.note{color:#5a6473;font-size:12px}.empty{background:#fff;border:1px dashed #aab3c0;padding:16px;border-radius:6px}\
.logout{float:right}svg{background:#fff;border:1px solid #d8dde5}.key span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px}";

/// The chart's layers, bottom to top, with their colours.
const LAYERS: [(&str, &str); 4] = [
    ("streaming", "#3b6fb6"),
    ("batch", "#e0892b"),
    ("headroom", "#9bb7d9"),
    ("idle", "#c9ced6"),
];

fn n(s: &str) -> u128 {
    s.parse().unwrap_or(0)
}

fn usd(micros: u64) -> String {
    format!("${:.2}", micros as f64 / 1e6)
}

fn signed_usd(micros: i64) -> String {
    format!(
        "{}${:.2}",
        if micros < 0 { "−" } else { "" },
        micros.unsigned_abs() as f64 / 1e6
    )
}

fn pct(ppm: Option<u64>) -> String {
    ppm.map_or("–".into(), |p| format!("{:.1}%", p as f64 / 10_000.0))
}

/// The overview: tiles, chart, per-pool and per-team tables, CSV links.
pub async fn overview(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Response {
    if let Err(r) = d.check(&headers) {
        return r;
    }
    let (pools, teams) = match tokio::try_join!(
        d.report(q.range, Grouping::Pool),
        d.report(q.range, Grouping::Team)
    ) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut body = String::new();
    if let Some(csrf) = d.session(&headers, |s| s.csrf.clone()) {
        let _ = write!(
            body,
            "<form class=\"logout\" method=\"post\" action=\"/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button type=\"submit\">Log out</button></form>"
        );
    }
    let _ = write!(body, "<nav>");
    for w in Window::ALL {
        let cls = if w == q.range { " class=\"cur\"" } else { "" };
        let _ = write!(
            body,
            "<a{cls} href=\"/dashboard?range={0}\">{0}</a>",
            w.name()
        );
    }
    let _ = write!(body, "</nav>");
    let reserved: u128 = pools
        .totals
        .iter()
        .map(|r| n(&r.reserved_micro_ie_ms))
        .sum();
    if reserved == 0 && teams.totals.is_empty() {
        let _ = write!(
            body,
            "<div class=\"empty\" id=\"empty\"><p><strong>No utilization recorded in the last {}.</strong></p>\
             <p>The server samples the market every <code>store.ledger_sample_interval</code> \
             (one minute by default); figures appear once pools have reservations and a sample \
             has been taken.</p></div>",
            q.range.name()
        );
        return page(StatusCode::OK, "Reservation utilization", &body);
    }
    // Tiles: the range's totals over every pool.
    let sum = |f: fn(&pb::UtilizationRow) -> u128| -> u128 { pools.totals.iter().map(f).sum() };
    let used = sum(|r| n(&r.streaming_micro_ie_ms)) + sum(|r| n(&r.leased_micro_ie_ms));
    let util_ppm = (reserved > 0).then(|| (used * 1_000_000 / reserved) as u64);
    let idle_cost: u64 = pools.totals.iter().map(|r| r.idle_cost_micros).sum();
    let idle_h: f64 = pools.totals.iter().map(|r| r.idle_ie_hours).sum();
    let savings: i64 = pools.totals.iter().map(|r| r.savings_micros).sum();
    let charges: u64 = pools.totals.iter().map(|r| r.charges_micros).sum();
    let _ = write!(
        body,
        "<div class=\"tiles\">\
         <div class=\"tile\"><div class=\"v\" id=\"utilization\">{}</div><div class=\"l\">reservation utilization (streaming + batch) ÷ reserved</div></div>\
         <div class=\"tile\"><div class=\"v\" id=\"idle-cost\">{}</div><div class=\"l\">idle cost · {:.1} idle IE-hours</div></div>\
         <div class=\"tile\"><div class=\"v\" id=\"savings\">{}</div><div class=\"l\">savings vs on-demand · internal charges {}</div></div>\
         </div>",
        pct(util_ppm),
        usd(idle_cost),
        idle_h,
        signed_usd(savings),
        usd(charges),
    );
    if pools.reserved_rate_source == "on-demand" {
        let _ = write!(
            body,
            "<p class=\"note\" id=\"rate-note\">Idle cost uses the on-demand price ({} per IE-hour): \
             no reservation rate is configured (<code>[finance] reserved_usd_per_ie_hour</code>), \
             so it is an upper bound.</p>",
            usd(pools.reserved_rate_micros)
        );
    }
    body.push_str(&chart(&pools.series));
    // Per-pool table.
    let _ = write!(
        body,
        "<h2>Pools</h2><table id=\"pools\"><tr><th>pool</th><th>reserved IE-h</th><th>streaming IE-h</th>\
         <th>batch IE-h</th><th>headroom IE-h</th><th>idle IE-h</th><th>utilization</th>\
         <th>idle cost</th><th>savings</th><th>clearing price /IE-h</th></tr>"
    );
    for r in &pools.totals {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.group),
            r.reserved_ie_hours,
            r.streaming_ie_hours,
            r.leased_ie_hours,
            r.headroom_ie_hours,
            r.idle_ie_hours,
            pct(r.utilization_ppm),
            usd(r.idle_cost_micros),
            signed_usd(r.savings_micros),
            usd(r.clearing_price_micros),
        );
    }
    body.push_str("</table>");
    // Per-team chargeback.
    let _ = write!(
        body,
        "<h2>Chargeback by team</h2><table id=\"teams\"><tr><th>team</th><th>IE-hours</th><th>charges</th>\
         <th>on-demand equivalent</th><th>savings</th><th>lost IE-h</th><th>preemptions</th><th>over budget</th></tr>"
    );
    if teams.totals.is_empty() {
        body.push_str("<tr><td colspan=\"8\">No batch work was charged in this range.</td></tr>");
    }
    for r in &teams.totals {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.group),
            r.allocated_ie_hours,
            usd(r.charges_micros),
            usd(r.on_demand_micros),
            signed_usd(r.savings_micros),
            r.lost_ie_hours,
            r.n_preemptions,
            r.n_over_budget,
        );
    }
    body.push_str("</table>");
    let _ = write!(
        body,
        "<h2>Downloads</h2><p><a id=\"csv-utilization\" href=\"/dashboard/utilization.csv?range={0}\">utilization by pool (CSV)</a> · \
         <a id=\"csv-series\" href=\"/dashboard/series.csv?range={0}\">utilization per step (CSV)</a> · \
         <a id=\"csv-chargeback\" href=\"/dashboard/chargeback.csv?range={0}\">chargeback by team (CSV)</a></p>",
        q.range.name()
    );
    page(StatusCode::OK, "Reservation utilization", &body)
}

/// A stacked area chart of average IE per step (streaming, batch, headroom,
/// idle, which add up to reserved) with the reserved line on top.
fn chart(series: &[pb::UtilizationRow]) -> String {
    const W: f64 = 960.0;
    const HGT: f64 = 260.0;
    const PAD_L: f64 = 56.0;
    const PAD_B: f64 = 24.0;
    // Sum the pools per step: micro-IE·ms per layer, and the step's length.
    let mut steps: BTreeMap<(i64, i64), [u128; 5]> = BTreeMap::new();
    let ms = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
    };
    for r in series {
        let v = steps
            .entry((ms(&r.start_time), ms(&r.end_time)))
            .or_default();
        v[0] += n(&r.streaming_micro_ie_ms);
        v[1] += n(&r.leased_micro_ie_ms);
        v[2] += n(&r.headroom_micro_ie_ms);
        v[3] += n(&r.idle_micro_ie_ms);
        v[4] += n(&r.reserved_micro_ie_ms);
    }
    if steps.is_empty() {
        return String::new();
    }
    // Average IE over each step = integral ÷ duration.
    let pts: Vec<(i64, [f64; 5])> = steps
        .iter()
        .map(|((s, e), v)| {
            let dur = ((e - s).max(1) as f64) * 1e6;
            (*e, v.map(|x| x as f64 / dur))
        })
        .collect();
    let (t0, t1) = (
        steps.keys().next().map_or(0, |k| k.0),
        pts.last().map_or(1, |p| p.0),
    );
    let max = pts
        .iter()
        .map(|p| p.1[4].max(p.1[0] + p.1[1] + p.1[2] + p.1[3]))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let x = |t: i64| PAD_L + (t - t0) as f64 / ((t1 - t0).max(1) as f64) * (W - PAD_L - 8.0);
    let y = |v: f64| HGT - PAD_B - v / max * (HGT - PAD_B - 8.0);
    let mut svg = format!(
        "<h2>Capacity, average IE per step</h2><svg id=\"chart\" role=\"img\" aria-label=\"stacked capacity chart\" \
         viewBox=\"0 0 {W} {HGT}\" width=\"{W}\" height=\"{HGT}\" xmlns=\"http://www.w3.org/2000/svg\">"
    );
    // Each point is drawn across its step: a step chart, since a sample
    // interval's figures are averages over it.
    let mut base = vec![0.0; pts.len()];
    for (layer, (name, colour)) in LAYERS.iter().enumerate() {
        let mut top = Vec::with_capacity(pts.len());
        let mut d = String::new();
        let mut prev_t = t0;
        for (i, (t, v)) in pts.iter().enumerate() {
            let h = base[i] + v[layer];
            let _ = write!(
                d,
                "{}{:.1},{:.1} L{:.1},{:.1} ",
                if i == 0 { "M" } else { "L" },
                x(prev_t),
                y(h),
                x(*t),
                y(h)
            );
            top.push(h);
            prev_t = *t;
        }
        for (i, (t, _)) in pts.iter().enumerate().rev() {
            let start = if i == 0 { t0 } else { pts[i - 1].0 };
            let _ = write!(
                d,
                "L{:.1},{:.1} L{:.1},{:.1} ",
                x(*t),
                y(base[i]),
                x(start),
                y(base[i])
            );
        }
        let _ = write!(
            svg,
            "<path class=\"layer-{name}\" d=\"{d}Z\" fill=\"{colour}\" stroke=\"none\"><title>{name}</title></path>"
        );
        base = top;
    }
    let mut line = String::new();
    let mut prev_t = t0;
    for (i, (t, v)) in pts.iter().enumerate() {
        let _ = write!(
            line,
            "{}{:.1},{:.1} L{:.1},{:.1} ",
            if i == 0 { "M" } else { "L" },
            x(prev_t),
            y(v[4]),
            x(*t),
            y(v[4])
        );
        prev_t = *t;
    }
    let _ = write!(
        svg,
        "<path id=\"reserved-line\" d=\"{line}\" fill=\"none\" stroke=\"#1d2430\" stroke-width=\"2\"><title>reserved</title></path>"
    );
    // Axes: IE on the left, the range's ends below.
    for frac in [0.0, 0.5, 1.0] {
        let v = max / 1.1 * frac;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#5a6473\">{v:.1} IE</text>",
            PAD_L - 4.0,
            y(v) + 4.0
        );
    }
    let stamp = |t: i64| {
        let st = std::time::UNIX_EPOCH + Duration::from_millis(t.max(0) as u64);
        humantime::format_rfc3339_seconds(st).to_string()
    };
    let _ = write!(
        svg,
        "<text x=\"{PAD_L}\" y=\"{:.1}\" font-size=\"11\" fill=\"#5a6473\">{}</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#5a6473\">{}</text></svg>",
        HGT - 6.0,
        stamp(t0),
        W - 8.0,
        HGT - 6.0,
        stamp(t1)
    );
    svg.push_str("<p class=\"key\">");
    for (name, colour) in LAYERS {
        let _ = write!(svg, "<span style=\"background:{colour}\"></span>{name}");
    }
    svg.push_str("<span style=\"background:#1d2430;height:2px\"></span>reserved</p>");
    svg
}

/// `/dashboard/{utilization,series,chargeback}.csv`: the same rows as
/// `ebb report … --format csv`.
async fn csv(
    d: &Dashboard,
    headers: &HeaderMap,
    w: Window,
    kind: Report,
    series: bool,
    name: &str,
) -> Response {
    if let Err(r) = d.check(headers) {
        return r;
    }
    let by = if kind == Report::Chargeback {
        Grouping::Team
    } else {
        Grouping::Pool
    };
    let r = match d.report(w, by).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let rows = if series { &r.series } else { &r.totals };
    let (heads, rows) = output::report_rows(rows, kind, series);
    let mut buf = Vec::new();
    if let Err(e) = output::write_csv(&mut buf, &heads, &rows) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    let disposition = format!("attachment; filename=\"ebb-{name}-{}.csv\"", w.name());
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_str(&disposition)
                    .unwrap_or(HeaderValue::from_static("attachment")),
            ),
        ],
        buf,
    )
        .into_response()
}

/// Per-pool totals as CSV.
pub async fn utilization_csv(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Response {
    csv(
        &d,
        &headers,
        q.range,
        Report::Utilization,
        false,
        "utilization",
    )
    .await
}

/// Per-pool, per-step series as CSV.
pub async fn series_csv(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Response {
    csv(&d, &headers, q.range, Report::Utilization, true, "series").await
}

/// Per-team chargeback as CSV.
pub async fn chargeback_csv(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(q): Query<RangeQuery>,
) -> Response {
    csv(
        &d,
        &headers,
        q.range,
        Report::Chargeback,
        false,
        "chargeback",
    )
    .await
}

fn login_page(status: StatusCode, message: &str) -> Response {
    let csrf = random_token();
    let body = format!(
        "{message}<form method=\"post\" action=\"/login\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <p><label>Finance token <input type=\"password\" name=\"token\" autocomplete=\"off\" required></label></p>\
         <p><button type=\"submit\">Log in</button></p></form>"
    );
    let mut r = page(status, "Log in", &body);
    let c = format!("{CSRF_COOKIE}={csrf}; Path=/login; HttpOnly; SameSite=Strict");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// `GET /login`: the form, with a fresh CSRF token.
pub async fn login_form() -> Response {
    login_page(StatusCode::OK, "")
}

/// The login form's fields.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
    csrf: String,
}

/// `POST /login`: checks the CSRF token against its cookie and the token's
/// principal, then starts a session.
pub async fn login(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, CSRF_COOKIE);
    if expected.is_none_or(|c| c.is_empty() || c != f.csrf) {
        return login_page(
            StatusCode::FORBIDDEN,
            "<p>The form expired or came from another site (CSRF check failed); please log in again.</p>",
        );
    }
    let Some(p) = d.auth.principal_for_token(&f.token) else {
        return login_page(StatusCode::UNAUTHORIZED, "<p>Unknown token.</p>");
    };
    if let Err(e) = p.check_finance() {
        return login_page(
            StatusCode::FORBIDDEN,
            &format!("<p>{}.</p>", esc(&e.to_string())),
        );
    }
    let id = random_token();
    let session = Session {
        principal: p,
        expires: Instant::now() + SESSION_TTL,
        csrf: random_token(),
    };
    d.sessions
        .lock()
        .expect("sessions lock")
        .insert(id.clone(), session);
    let mut r = Redirect::to("/dashboard").into_response();
    let c = format!(
        "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// The logout form's field.
#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    csrf: String,
}

/// `POST /logout`: ends the session if the form's CSRF token is the
/// session's own, and clears the cookie.
pub async fn logout(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Response {
    let Some(id) = cookie(&headers, SESSION_COOKIE) else {
        return Redirect::to("/login").into_response();
    };
    let mut sessions = d.sessions.lock().expect("sessions lock");
    if sessions.get(&id).is_some_and(|s| s.csrf != f.csrf) {
        return page(
            StatusCode::FORBIDDEN,
            "Not logged out",
            "<p>The form came from another site (CSRF check failed).</p>",
        );
    }
    sessions.remove(&id);
    let mut r = Redirect::to("/login").into_response();
    let c = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_attribute_quotes() {
        assert_eq!(
            esc(r#"<img src=x onerror="a('b')">&"#),
            "&lt;img src=x onerror=&quot;a(&#39;b&#39;)&quot;&gt;&amp;"
        );
    }

    #[test]
    fn cookies_are_found_among_several_headers() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; ebb_session=xyz"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("ebb_csrf=c"));
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&h, CSRF_COOKIE).as_deref(), Some("c"));
        assert_eq!(cookie(&h, "b"), None);
    }
}
