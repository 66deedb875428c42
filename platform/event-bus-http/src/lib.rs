//! Monitoring endpoints for services built on `event-bus`, as an axum
//! [`Router`] a service mounts next to its own routes:
//!
//! * `GET /livez`: the process answers (200, always);
//! * `GET /readyz`: 200 when every check is ready, 503 otherwise, with a
//!   JSON body naming each check's verdict;
//! * `GET /status`: every check's summary and details, as JSON;
//! * `GET /`: the same as a small HTML page (server-rendered, no JavaScript);
//! * `GET /metrics`: the Prometheus exposition of the `metrics` facade, when
//!   a recorder from [`install_prometheus`] is given
//!   ([`Monitoring::metrics`]). Each scrape runs the checks first (within
//!   their timeout), so that the gauges a check samples, such as the
//!   outbox's pending rows and oldest pending age, are as fresh as the
//!   scrape even when nothing else asks for `/readyz`.
//!
//! The checks are [`StatusCheck`]s: the bus's health
//! ([`BusCheck`](event_bus::status::BusCheck)), consumer lag
//! ([`LagMonitor`](event_bus::status::LagMonitor): not ready while a
//! consumer is `STALL` or `STOP`), the outbox
//! (`event_bus_postgres::Outbox::status_check`), and anything else
//! ([`from_fn`](event_bus::status::from_fn)). Each check is bounded by a
//! timeout (default 5 s; a check that does not answer is not ready).
//! A spawned runner's check is `RunnerHandle::status_check` (not ready once
//! the runner stops).
//!
//! **Shutdown.** [`Monitoring::shutdown_handle`] gives a [`ShutdownHandle`];
//! call [`begin`](ShutdownHandle::begin) when the service starts shutting
//! down, *before* stopping its relay and runners: `/readyz` answers 503 from
//! then on (a check named `shutdown` with the reason), so that a load
//! balancer drains the instance while it finishes its work.
//!
//! ```no_run
//! # use event_bus_http::Monitoring;
//! # async fn example(runner: event_bus::runner::RunnerHandle) {
//! let monitoring = Monitoring::new().check(runner.status_check());
//! let shutdown = monitoring.shutdown_handle();
//! let app = monitoring.router();
//! // ... serve `app`; then, on SIGTERM:
//! shutdown.begin("SIGTERM received");
//! runner.shutdown().await;
//! # }
//! ```
//!
//! ```no_run
//! use event_bus::status::BusCheck;
//! use event_bus::{EventBus, InMemoryBus};
//! use event_bus_http::Monitoring;
//! use std::sync::Arc;
//!
//! # async fn example() -> std::io::Result<()> {
//! let bus: Arc<dyn EventBus> = Arc::new(InMemoryBus::new());
//! let app = Monitoring::new().check(BusCheck::new(bus)).router();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await
//! # }
//! ```

#![warn(missing_docs)]

pub use axum;
pub use metrics_exporter_prometheus::PrometheusHandle;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use event_bus::status::{CheckReport, StatusCheck};
use serde_json::json;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Marks a service as shutting down: from [`begin`](Self::begin) on, the
/// [`Monitoring`] it came from ([`Monitoring::shutdown_handle`]) answers
/// `/readyz` with 503. Clones share the mark; it cannot be undone.
#[derive(Clone, Debug, Default)]
pub struct ShutdownHandle(Arc<OnceLock<String>>);

impl ShutdownHandle {
    /// Begins the shutdown, for `reason` (shown on `/readyz`, `/status` and
    /// the page). A second call keeps the first reason.
    pub fn begin(&self, reason: impl Into<String>) {
        let _ = self.0.set(reason.into());
    }

    /// Why the service is shutting down, once [`begin`](Self::begin) was called.
    pub fn reason(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// The checks behind the endpoints; [`router`](Monitoring::router) serves
/// them.
#[derive(Clone, Default)]
pub struct Monitoring {
    checks: Vec<Arc<dyn StatusCheck>>,
    timeout: Option<Duration>,
    metrics: Option<PrometheusHandle>,
    shutdown: ShutdownHandle,
}

/// Installs a Prometheus recorder as the global `metrics` recorder, with
/// explicit buckets for the bus's duration histograms (so that they are
/// exported as histograms, not summaries), and describes the bus's
/// metrics. Call it once, before creating buses, consumers, runners and
/// relays; give the handle to [`Monitoring::metrics`]. An error when
/// another recorder is already installed.
pub fn install_prometheus() -> Result<PrometheusHandle, event_bus::BusError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        // Prometheus's naming: counters end in `_total`, units are suffixes
        // (`_seconds`), as `promtool check metrics` expects.
        .with_recommended_naming(true)
        .set_buckets_for_metric(
            Matcher::Full(event_bus::metrics::OPERATION_DURATION.to_string()),
            event_bus::metrics::DURATION_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(event_bus::metrics::PROCESS_DURATION.to_string()),
                event_bus::metrics::DURATION_BUCKETS,
            )
        })
        .and_then(|b| b.install_recorder())
        .map_err(|e| {
            event_bus::BusError::new(
                event_bus::ErrorKind::Config,
                format!("installing the Prometheus recorder: {e}"),
            )
        })?;
    event_bus::metrics::describe();
    Ok(handle)
}

impl std::fmt::Debug for Monitoring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitoring")
            .field(
                "checks",
                &self
                    .checks
                    .iter()
                    .map(|c| c.name().to_string())
                    .collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout())
            .field("metrics", &self.metrics.is_some())
            .field("shutting_down", &self.shutdown.reason())
            .finish()
    }
}

/// The default bound on each check.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// One check's verdict, as the endpoints report it.
#[derive(Clone, Debug)]
struct Verdict {
    name: String,
    report: CheckReport,
}

impl Monitoring {
    /// No checks yet (`/readyz` is then ready).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a check.
    pub fn check(mut self, check: impl StatusCheck + 'static) -> Self {
        self.checks.push(Arc::new(check));
        self
    }

    /// Adds a shared check (e.g. an `Arc<LagMonitor>` the service also reads).
    pub fn shared_check(mut self, check: Arc<dyn StatusCheck>) -> Self {
        self.checks.push(check);
        self
    }

    /// Serves `handle`'s exposition on `/metrics`, after running the checks
    /// (which refresh the gauges they sample).
    pub fn metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }

    /// Bounds each check (default [`DEFAULT_CHECK_TIMEOUT`]).
    pub fn check_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The handle that marks this service as shutting down (`/readyz` 503
    /// from then on); take it before [`router`](Self::router).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_CHECK_TIMEOUT)
    }

    /// Runs every check concurrently, each within the timeout; once the
    /// shutdown has begun, a failing `shutdown` verdict comes first.
    async fn run(&self) -> Vec<Verdict> {
        let timeout = self.timeout();
        let shutdown = self.shutdown.reason().map(|reason| Verdict {
            name: "shutdown".to_string(),
            report: CheckReport::new(
                false,
                format!("shutting down: {reason}"),
                json!({ "reason": reason }),
            ),
        });
        let checks = futures::future::join_all(self.checks.iter().map(|c| async move {
            let report = match tokio::time::timeout(timeout, c.check()).await {
                Ok(report) => report,
                Err(_) => CheckReport::new(
                    false,
                    format!("no answer within {} ms", timeout.as_millis()),
                    serde_json::Value::Null,
                ),
            };
            Verdict {
                name: c.name().to_string(),
                report,
            }
        }))
        .await;
        shutdown.into_iter().chain(checks).collect()
    }

    /// The router: `/livez`, `/readyz`, `/status`, `/` and, with a
    /// [`metrics`](Self::metrics) handle, `/metrics`.
    pub fn router(self) -> Router {
        Router::new()
            .route("/livez", get(|| async { "alive\n" }))
            .route("/readyz", get(readyz))
            .route("/status", get(status))
            .route("/metrics", get(metrics))
            .route("/", get(page))
            .with_state(Arc::new(self))
    }
}

async fn metrics(State(m): State<Arc<Monitoring>>) -> Response {
    match &m.metrics {
        Some(handle) => {
            // The checks set the gauges they sample (outbox, health); their
            // verdicts are `/readyz`'s business, not the exposition's.
            let _ = m.run().await;
            handle.run_upkeep();
            (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                handle.render(),
            )
                .into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            "no metrics recorder: install one with event_bus_http::install_prometheus() and pass it to Monitoring::metrics\n",
        )
            .into_response(),
    }
}

async fn readyz(State(m): State<Arc<Monitoring>>) -> Response {
    let verdicts = m.run().await;
    let ready = verdicts.iter().all(|v| v.report.ready);
    let body = json!({
        "ready": ready,
        "checks": verdicts.iter().map(|v| json!({
            "name": v.name,
            "ready": v.report.ready,
            "summary": v.report.summary,
        })).collect::<Vec<_>>(),
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn status(State(m): State<Arc<Monitoring>>) -> Response {
    let verdicts = m.run().await;
    let body = json!({
        "ready": verdicts.iter().all(|v| v.report.ready),
        "checks": verdicts.iter().map(|v| json!({
            "name": v.name,
            "ready": v.report.ready,
            "summary": v.report.summary,
            "details": v.report.details,
        })).collect::<Vec<_>>(),
    });
    Json(body).into_response()
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
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

async fn page(State(m): State<Arc<Monitoring>>) -> Response {
    let verdicts = m.run().await;
    let ready = verdicts.iter().all(|v| v.report.ready);
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>event-bus status</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.3em .8em;text-align:left;vertical-align:top}}\
         .ok{{background:#d4f4d4;color:#060}}.bad{{background:#c00;color:#fff}}h1 span,td.ok,td.bad{{padding:.1em .5em;border-radius:.3em}}pre{{margin:0;font-size:.85em}}</style></head><body>\
         <h1>event-bus status: <span class=\"{}\">{}</span></h1>\
         <table><tr><th>check</th><th>verdict</th><th>summary</th><th>details</th></tr>",
        if ready { "ok" } else { "bad" },
        if ready { "READY" } else { "NOT READY" }
    );
    for v in &verdicts {
        let details = serde_json::to_string_pretty(&v.report.details).unwrap_or_default();
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td><pre>{}</pre></td></tr>",
            esc(&v.name),
            if v.report.ready { "ok" } else { "bad" },
            if v.report.ready { "ready" } else { "not ready" },
            esc(&v.report.summary),
            esc(&details)
        );
    }
    html.push_str("</table></body></html>");
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}
