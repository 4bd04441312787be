//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `/config_dump`.
//! Off the data path; it only reads shared state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::bpf::Maps;
use crate::policy::PolicySet;

#[derive(Clone)]
pub struct AdminState {
    pub prometheus: PrometheusHandle,
    /// True once every program is attached and the proxy listens.
    pub ready: Arc<AtomicBool>,
    /// The effective configuration, as served by /config_dump.
    pub config: Arc<serde_json::Value>,
    /// Kernel counters to refresh before each scrape.
    pub kernel: Option<(Arc<Maps>, Arc<PolicySet>)>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/config_dump", get(config_dump))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    if let Some((maps, policies)) = &s.kernel {
        crate::bpf::counters::refresh_metrics(maps, policies);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.prometheus.render(),
    )
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    if s.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: programs not attached yet\n",
        )
    }
}

async fn config_dump(State(s): State<AdminState>) -> impl IntoResponse {
    Json(s.config.as_ref().clone())
}

/// Serves the admin API until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            while shutdown.changed().await.is_ok() {
                if *shutdown.borrow() {
                    break;
                }
            }
        })
        .await
}
