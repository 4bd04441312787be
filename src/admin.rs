//! The admin listener: `/` (an index), `/metrics`, `/healthz`, `/readyz`,
//! `/config_dump`, and `POST /reload`. Off the data path; it reads shared state, and asks
//! `run` for a reload (which `run` does, one at a time).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::bpf::Maps;
use crate::live::Live;
use crate::policy::PolicySet;

/// What a reload answers: an HTTP status and a text for `sockwarden reload`.
pub type ReloadReply = (StatusCode, String);

/// Where the admin listener asks for a reload, and gets its answer back.
pub type ReloadRequests = mpsc::Sender<oneshot::Sender<ReloadReply>>;

#[derive(Clone)]
pub struct AdminState {
    pub prometheus: PrometheusHandle,
    /// True once every program is attached and the proxy listens.
    pub ready: Arc<AtomicBool>,
    /// The configuration in force, as served by /config_dump (with its
    /// hash and generation).
    pub config: Live<serde_json::Value>,
    /// Kernel counters to refresh before each scrape.
    pub kernel: Option<(Live<Maps>, Live<PolicySet>)>,
    /// Where `POST /reload` goes.
    pub reload: Option<ReloadRequests>,
    /// The proxy, for the gauges read at each scrape (its idle upstreams).
    pub proxy: Option<Arc<crate::proxy::Proxy>>,
}

/// What `/` answers: the endpoints, one a line.
const INDEX: &str = "sockwarden admin listener
GET  /metrics      Prometheus metrics (kernel counters refreshed at each scrape)
GET  /healthz      200 while the process serves
GET  /readyz       200 once the programs are attached and the proxy listens
GET  /config_dump  the configuration in force: config_hash, generation, policy_ids, resolved
POST /reload       re-read the configuration file and put it in force whole (sockwarden reload)
";

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/", get(|| async { INDEX }))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/config_dump", get(config_dump))
        .route("/reload", post(reload))
        .with_state(state)
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    if let Some((maps, policies)) = &s.kernel {
        crate::bpf::counters::refresh_metrics(&maps.get(), &policies.get());
    }
    if let Some(proxy) = &s.proxy {
        crate::metrics::upstream_idle(proxy.idle_upstreams());
    }
    crate::metrics::process::refresh();
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
    Json(s.config.get().as_ref().clone())
}

/// Re-reads the configuration file and swaps it in whole, or says why not.
async fn reload(State(s): State<AdminState>) -> impl IntoResponse {
    let unavailable = (
        StatusCode::SERVICE_UNAVAILABLE,
        "reload: not available (sockwarden is starting or stopping)\n".to_string(),
    );
    let Some(requests) = &s.reload else {
        return unavailable;
    };
    let (tx, rx) = oneshot::channel();
    if requests.send(tx).await.is_err() {
        return unavailable;
    }
    rx.await.unwrap_or(unavailable)
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
