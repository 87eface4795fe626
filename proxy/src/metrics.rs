//! Prometheus metrics. Everything touched per request is a plain atomic: no metric-family
//! lock and no histogram mutex on the hot path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::table::Backend;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Kubernetes Service name; empty when the proxy answered without a route.
    pub service: String,
    /// `2xx`, `3xx`, ...
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upstream failure kinds, the `kind` label of `upstream_errors_total`.
#[derive(Debug, Clone, Copy)]
pub enum UpstreamErrorKind {
    ConnectRefused,
    ConnectTimeout,
    Reset,
    Timeout,
    /// The upstream answered something that must not be relayed (an unasked-for 101, a
    /// transfer coding other than chunked).
    Protocol,
    Other,
}

impl UpstreamErrorKind {
    fn label(self) -> &'static str {
        match self {
            Self::ConnectRefused => "connect_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::Reset => "reset",
            Self::Timeout => "timeout",
            Self::Protocol => "protocol",
            Self::Other => "other",
        }
    }
}

/// The proxy's metrics and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// Counters for requests answered without a backend, one per class.
    unrouted: [Counter; 5],
    pub duration: AtomicHistogram,
    pub in_flight: Gauge,
    pub connections: Gauge,
    pub routes: Gauge,
    upstream_errors: Family<KindLabels, Counter>,
    pub rejected_connections: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("gatehouse");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered, by Kubernetes Service and status class", requests.clone());
        let duration = AtomicHistogram::new(&[
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ]);
        registry.register(
            "request_duration_seconds",
            "Time from receiving a request to sending the response head",
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("in_flight_requests", "Requests being served", in_flight.clone());
        let connections = Gauge::default();
        registry.register("open_connections", "Open client connections", connections.clone());
        let routes = Gauge::default();
        registry.register("routes", "Routable (edge, Service) pairs in the current route table", routes.clone());
        let upstream_errors = Family::<KindLabels, Counter>::default();
        registry.register("upstream_errors", "Failed upstream attempts, by kind", upstream_errors.clone());
        let rejected_connections = Counter::default();
        registry.register(
            "rejected_connections",
            "Connections answered 503 because max_connections was reached",
            rejected_connections.clone(),
        );
        let unrouted =
            CLASSES.map(|class| requests.get_or_create_owned(&RequestLabels { service: String::new(), class }));
        Self {
            registry,
            requests,
            unrouted,
            duration,
            in_flight,
            connections,
            routes,
            upstream_errors,
            rejected_connections,
        }
    }

    /// Counts one answered request.
    pub fn record(&self, backend: Option<&Backend>, status: u16, elapsed: Duration) {
        let class = (usize::from(status / 100).clamp(1, 5)) - 1;
        match backend {
            None => {
                self.unrouted[class].inc();
            }
            Some(b) => {
                b.request_counters[class]
                    .get_or_init(|| {
                        self.requests.get_or_create_owned(&RequestLabels {
                            service: b.service_name.to_string(),
                            class: CLASSES[class],
                        })
                    })
                    .inc();
            }
        }
        self.duration.observe(elapsed);
    }

    pub fn upstream_error(&self, kind: UpstreamErrorKind) {
        self.upstream_errors.get_or_create(&KindLabels { kind: kind.label() }).inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A histogram of durations made of atomics: prometheus-client's own histogram takes a
/// mutex on every observation, which every request would contend on.
#[derive(Debug, Clone)]
pub struct AtomicHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    bounds_micros: Vec<u64>,
    bounds: Vec<f64>,
    /// One per bound plus the overflow bucket; not cumulative (the encoder sums them).
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    pub fn new(bounds_seconds: &[f64]) -> Self {
        let bounds_micros = bounds_seconds.iter().map(|s| (s * 1e6) as u64).collect();
        let buckets = (0..=bounds_seconds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            inner: Arc::new(HistogramInner {
                bounds_micros,
                bounds: bounds_seconds.to_vec(),
                buckets,
                sum_micros: AtomicU64::new(0),
            }),
        }
    }

    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = self.inner.bounds_micros.partition_point(|&b| b < micros);
        self.inner.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &self.inner;
        let buckets: Vec<(f64, u64)> = h
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(h.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
