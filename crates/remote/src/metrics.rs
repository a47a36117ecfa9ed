//! Prometheus metrics of one replica (`serve --metrics-bind ADDR` serves them at `/metrics`):
//! tool calls by tool and outcome, inference latency, ciphertext and key bytes in and out,
//! decoded key sets cached, inferences running and queued. Labels are tool names and error codes
//! only: no client id, token, session or ciphertext ever becomes a label.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a tool call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    tool: String,
    /// `ok`, or the error code the call returned.
    outcome: String,
}

/// The metrics a replica keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    inference_seconds: Histogram,
    bytes_in: Counter,
    bytes_out: Counter,
    key_sets_cached: Gauge,
    inferences_running: Gauge,
    inferences_queued: Gauge,
    queued: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cipherinfer");
        let calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "tool_calls",
            "Tool calls by tool and outcome (ok or the error code)",
            calls.clone(),
        );
        // 5 ms to about 80 s.
        let inference_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        registry.register(
            "inference_seconds",
            "Time of remote_inference_cnn calls that returned a result, queueing included",
            inference_seconds.clone(),
        );
        let bytes_in = Counter::default();
        registry.register(
            "received_bytes",
            "Decoded bytes of ciphertext and key-bundle chunks accepted, re-sent ones included",
            bytes_in.clone(),
        );
        let bytes_out = Counter::default();
        registry.register(
            "sent_bytes",
            "Bytes of encrypted results returned, inline or by chunk",
            bytes_out.clone(),
        );
        let key_sets_cached = Gauge::default();
        registry.register(
            "key_sets_cached",
            "Decoded evaluation-key sets held in memory",
            key_sets_cached.clone(),
        );
        let inferences_running = Gauge::default();
        registry.register(
            "inferences_running",
            "Inferences evaluating now",
            inferences_running.clone(),
        );
        let inferences_queued = Gauge::default();
        registry.register(
            "inferences_queued",
            "Inferences waiting for a slot",
            inferences_queued.clone(),
        );
        Self {
            registry,
            calls,
            inference_seconds,
            bytes_in,
            bytes_out,
            key_sets_cached,
            inferences_running,
            inferences_queued,
            queued: AtomicI64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one tool call and its outcome (`None`: success).
    pub fn call(&self, tool: &str, error_code: Option<&str>) {
        self.calls
            .get_or_create(&CallLabels {
                tool: tool.to_string(),
                outcome: error_code.unwrap_or("ok").to_string(),
            })
            .inc();
    }

    /// Records the time of an inference that returned a result.
    pub fn inference(&self, seconds: f64) {
        self.inference_seconds.observe(seconds);
    }

    /// Counts accepted chunk bytes.
    pub fn received(&self, bytes: u64) {
        self.bytes_in.inc_by(bytes);
    }

    /// Counts returned result bytes.
    pub fn sent(&self, bytes: u64) {
        self.bytes_out.inc_by(bytes);
    }

    /// A request starts waiting for an inference slot; the guard ends the wait.
    pub(crate) fn queued(&self) -> QueuedGuard<'_> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        QueuedGuard(&self.queued)
    }

    /// The metrics in the Prometheus text format, with the gauges read now.
    pub fn encode(&self, running: i64, key_sets_cached: i64) -> String {
        self.inferences_running.set(running);
        self.key_sets_cached.set(key_sets_cached);
        self.inferences_queued
            .set(self.queued.load(Ordering::Relaxed));
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Ends a wait for an inference slot when dropped.
pub(crate) struct QueuedGuard<'a>(&'a AtomicI64);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
