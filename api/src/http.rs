//! The HTTP port: `/metrics` (Prometheus text), `/healthz` (200 while this
//! replica leads or follows, saying which; 503 once its scheduler stopped),
//! and the finance dashboard
//! ([`crate::dashboard`]: `/dashboard`, its CSV downloads, `/login`).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::dashboard::{self, Dashboard};
use crate::ha::{Leadership, RoleState};
use crate::metrics::Metrics;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    role: Leadership,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    match s.role.state() {
        RoleState::Leader(_) if s.role.driver().is_ok() => (StatusCode::OK, "ok: leader\n".into()),
        RoleState::Follower { leader } => (
            StatusCode::OK,
            format!(
                "ok: follower; leader {}\n",
                leader.as_deref().unwrap_or("not elected yet")
            ),
        ),
        RoleState::Leader(_) | RoleState::Stopped => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the scheduler driver stopped\n".to_owned(),
        ),
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics_: Arc<Metrics>,
    role: Leadership,
    dashboard: Dashboard,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let finance = Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard") }))
        .route("/dashboard", get(dashboard::overview))
        .route(
            "/dashboard/utilization.csv",
            get(dashboard::utilization_csv),
        )
        .route("/dashboard/series.csv", get(dashboard::series_csv))
        .route("/dashboard/chargeback.csv", get(dashboard::chargeback_csv))
        .route("/login", get(dashboard::login_form).post(dashboard::login))
        .route("/logout", post(dashboard::logout))
        .with_state(dashboard);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(AppState {
            metrics: metrics_,
            role,
        })
        .merge(finance);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
