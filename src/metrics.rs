//! The service's Prometheus metrics: one process-wide registry
//! ([`metrics`]), updated by the RPCs and the projector, and served as the
//! Prometheus text format on `serve --metrics-listen` ([`serve_metrics`]).

use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of an append: the RPC and its outcome (a gRPC code name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppendLabels {
    /// The RPC, e.g. `NotifyClsUpdated`.
    pub rpc: String,
    /// `ok` or the gRPC code in snake case (`invalid_argument`).
    pub outcome: String,
}

/// Labels of an evaluated marker: `adopted` (evaluated once, ahead of its
/// append) or `evaluated` (folded from the stream).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MarkerLabels {
    /// `adopted` or `evaluated`.
    pub how: String,
}

/// Labels of a store error: its kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `unavailable`, `wrong_expected_version`, … (see `StoreError::kind`).
    pub kind: String,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Notifier calls through gRPC, by RPC and outcome.
    pub appends: Family<AppendLabels, Counter>,
    /// How long a Notifier call took (validation and durable append).
    pub append_seconds: Histogram,
    /// Events the projector folded.
    pub events_folded: Counter,
    /// Markers the projector folded, by how.
    pub markers: Family<MarkerLabels, Counter>,
    /// How long evaluating one marker took.
    pub evaluation_seconds: Histogram,
    /// Events in the store the projector has not processed yet (stores that
    /// can say where their head is).
    pub lag_events: Gauge,
    /// Seconds since the projector was last caught up (0 when it is).
    pub lag_seconds: Gauge<f64, AtomicU64>,
    /// Project states held in memory.
    pub projects_in_memory: Gauge,
    /// Projects quarantined (their stream holds an event the fold rejects).
    pub projects_quarantined: Gauge,
    /// Snapshots written.
    pub snapshot_writes: Counter,
    /// Store errors met by the service and the projector, by kind.
    pub store_errors: Family<ErrorLabels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("prjmanager");
        let appends = Family::<AppendLabels, Counter>::default();
        registry.register(
            "appends",
            "Notifier calls through gRPC, by RPC and outcome",
            appends.clone(),
        );
        let append_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        registry.register(
            "append_duration_seconds",
            "How long a Notifier call took: validation and durable append",
            append_seconds.clone(),
        );
        let events_folded = Counter::default();
        registry.register(
            "events_folded",
            "Events the projector folded",
            events_folded.clone(),
        );
        let markers = Family::<MarkerLabels, Counter>::default();
        registry.register(
            "markers_evaluated",
            "Markers the projector folded: adopted (evaluated once, ahead of the append) or evaluated from the stream",
            markers.clone(),
        );
        let evaluation_seconds = Histogram::new(exponential_buckets(0.000_05, 2.0, 18));
        registry.register(
            "evaluation_duration_seconds",
            "How long evaluating one marker took",
            evaluation_seconds.clone(),
        );
        let lag_events = Gauge::default();
        registry.register(
            "projector_lag_events",
            "Events in the store the projector has not processed yet",
            lag_events.clone(),
        );
        let lag_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "projector_lag_seconds",
            "Seconds since the projector was last caught up with the store (0: it is)",
            lag_seconds.clone(),
        );
        let projects_in_memory = Gauge::default();
        registry.register(
            "projects_in_memory",
            "Project states held in memory",
            projects_in_memory.clone(),
        );
        let projects_quarantined = Gauge::default();
        registry.register(
            "projects_quarantined",
            "Projects whose stream holds an event the fold rejects",
            projects_quarantined.clone(),
        );
        let snapshot_writes = Counter::default();
        registry.register(
            "snapshot_writes",
            "Project snapshots written",
            snapshot_writes.clone(),
        );
        let store_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "store_errors",
            "Store errors met by the service and the projector, by kind",
            store_errors.clone(),
        );
        Self {
            registry,
            appends,
            append_seconds,
            events_folded,
            markers,
            evaluation_seconds,
            lag_events,
            lag_seconds,
            projects_in_memory,
            projects_quarantined,
            snapshot_writes,
            store_errors,
        }
    }

    /// Counts an append.
    pub fn append(&self, rpc: &str, outcome: &str, seconds: f64) {
        self.appends
            .get_or_create(&AppendLabels {
                rpc: rpc.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        self.append_seconds.observe(seconds);
    }

    /// Counts a store error of this kind.
    pub fn store_error(&self, kind: &str) {
        self.store_errors
            .get_or_create(&ErrorLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts a folded marker.
    pub fn marker(&self, adopted: bool) {
        let how = if adopted { "adopted" } else { "evaluated" };
        self.markers
            .get_or_create(&MarkerLabels { how: how.into() })
            .inc();
    }

    /// The Prometheus text format of every metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until
/// `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )],
                metrics().render(),
            )
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
