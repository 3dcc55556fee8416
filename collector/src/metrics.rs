//! The collector's own metrics, rendered in the Prometheus text format at `/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histograms, seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram (cumulative buckets, sum, count).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{b}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_us.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// Counters and gauges shared by the ingest, the writer and the API.
#[derive(Debug, Default)]
pub struct Metrics {
    /// MQTT messages received on subscribed topics.
    pub received: AtomicU64,
    /// Events and statuses newly stored.
    pub accepted: AtomicU64,
    /// Events already stored (acknowledged, not applied again).
    pub duplicate: AtomicU64,
    /// Confirmations published on devices' `ack` topics (one per contiguous run of events).
    pub confirms_published: AtomicU64,
    /// Confirmations not published because the MQTT request queue was full (the device resends
    /// after its stall timer, and the resend is confirmed).
    pub confirms_dropped: AtomicU64,
    /// Telemetry samples passed to the time series.
    pub telemetry: AtomicU64,
    /// QoS 1 messages acknowledged to the broker (after commit).
    pub acked: AtomicU64,
    /// Messages waiting for the ledger writer.
    pub queue_depth: AtomicU64,
    /// Ledger transactions committed.
    pub commits: AtomicU64,
    /// Ledger commit failures (the batch is retried, nothing is acknowledged).
    pub commit_errors: AtomicU64,
    /// MQTT connections established.
    pub connects: AtomicU64,
    /// MQTT connection attempts that failed or connections that broke.
    pub connection_errors: AtomicU64,
    /// Whether the broker connection is up.
    pub mqtt_up: AtomicBool,
    /// Whether the site's subscriptions are in place on this connection (SUBACK received, or the
    /// broker kept the session).
    pub subscribed: AtomicBool,
    /// Device configs published (retained) by the collector.
    pub configs_published: AtomicU64,
    /// Maintenance alerts published on MQTT.
    pub alerts_published: AtomicU64,
    /// Alerts delivered to the webhook.
    pub webhook_delivered: AtomicU64,
    /// Webhook attempts that failed (each is retried until the attempts run out).
    pub webhook_errors: AtomicU64,
    /// Alerts the webhook never took (attempts exhausted, or the queue was full).
    pub webhook_dropped: AtomicU64,
    /// Packets over `mqtt.max_packet_bytes` that failed the connection (unreadable, redelivered).
    pub oversized_packets: AtomicU64,
    /// Rejections by reason (dead letters).
    rejected: Mutex<BTreeMap<String, u64>>,
    /// Why the last ledger commit failed, while commits fail (`None` once one succeeds).
    ledger_failure: Mutex<Option<String>>,
    /// Reception to acknowledgement.
    pub ack_latency: Histogram,
    /// Duration of ledger transactions.
    pub commit_time: Histogram,
}

impl Metrics {
    /// Counts one rejected message.
    pub fn reject(&self, reason: &str) {
        let mut m = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(reason.to_owned()).or_default() += 1;
    }

    /// Records that ledger commits fail (`Some(reason)`) or succeed again (`None`).
    pub fn set_ledger_failure(&self, failure: Option<String>) {
        let mut f = self
            .ledger_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if *f != failure {
            *f = failure;
        }
    }

    /// Why ledger commits fail, while they do.
    pub fn ledger_failure(&self) -> Option<String> {
        self.ledger_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rejections by reason.
    pub fn rejected(&self) -> BTreeMap<String, u64> {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The Prometheus text exposition; `extra` appends gauges owned by other parts.
    pub fn render(&self, extra: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "fabmeter_received_total",
            "MQTT messages received",
            self.received.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_accepted_total",
            "events and statuses newly stored",
            self.accepted.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_duplicate_total",
            "events already stored, acknowledged again",
            self.duplicate.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_confirms_published_total",
            "confirmations published to devices (one per contiguous run of events in the ledger)",
            self.confirms_published.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_confirms_dropped_total",
            "confirmations not published: the MQTT request queue was full",
            self.confirms_dropped.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_telemetry_total",
            "telemetry samples passed to the time series",
            self.telemetry.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_acked_total",
            "QoS 1 messages acknowledged after commit",
            self.acked.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_commits_total",
            "ledger transactions",
            self.commits.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_commit_errors_total",
            "failed ledger transactions",
            self.commit_errors.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_mqtt_connects_total",
            "MQTT connections established",
            self.connects.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_mqtt_connection_errors_total",
            "failed or broken MQTT connections",
            self.connection_errors.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_mqtt_oversized_packets_total",
            "packets over mqtt.max_packet_bytes that failed the connection (the broker must refuse them)",
            self.oversized_packets.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_configs_published_total",
            "device configs published by the collector",
            self.configs_published.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_alerts_published_total",
            "maintenance alerts published on MQTT",
            self.alerts_published.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_webhook_delivered_total",
            "alerts delivered to the webhook",
            self.webhook_delivered.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_webhook_errors_total",
            "failed webhook attempts (retried)",
            self.webhook_errors.load(Relaxed),
        );
        counter(
            &mut out,
            "fabmeter_webhook_dropped_total",
            "alerts the webhook never took (attempts exhausted or queue full)",
            self.webhook_dropped.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP fabmeter_rejected_total messages refused, by reason (kept as dead letters)\n# TYPE fabmeter_rejected_total counter"
        );
        for (reason, n) in self.rejected() {
            let _ = writeln!(out, "fabmeter_rejected_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP fabmeter_queue_depth messages waiting for the ledger writer\n# TYPE fabmeter_queue_depth gauge\nfabmeter_queue_depth {}",
            self.queue_depth.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP fabmeter_mqtt_up whether the broker connection is up\n# TYPE fabmeter_mqtt_up gauge\nfabmeter_mqtt_up {}",
            u8::from(self.mqtt_up.load(Relaxed))
        );
        let _ = writeln!(
            out,
            "# HELP fabmeter_mqtt_subscribed whether the site's subscriptions are in place\n# TYPE fabmeter_mqtt_subscribed gauge\nfabmeter_mqtt_subscribed {}",
            u8::from(self.subscribed.load(Relaxed))
        );
        self.ack_latency.render(
            &mut out,
            "fabmeter_ack_latency_seconds",
            "from reception to acknowledgement after commit",
        );
        self.commit_time.render(
            &mut out,
            "fabmeter_commit_seconds",
            "ledger transaction time",
        );
        for (name, help, v) in extra {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_rejections_and_histograms() {
        let m = Metrics::default();
        m.received.fetch_add(3, Relaxed);
        m.reject("syntax");
        m.reject("syntax");
        m.reject("unknown_machine");
        m.ack_latency.observe(Duration::from_millis(3));
        let text = m.render(&[("fabmeter_backlog_bytes", "backlog size", 12.0)]);
        assert!(text.contains("fabmeter_received_total 3\n"), "{text}");
        assert!(text.contains("fabmeter_rejected_total{reason=\"syntax\"} 2\n"));
        assert!(text.contains("fabmeter_rejected_total{reason=\"unknown_machine\"} 1\n"));
        assert!(text.contains("fabmeter_ack_latency_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("fabmeter_ack_latency_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("fabmeter_ack_latency_seconds_count 1\n"));
        assert!(text.contains("fabmeter_backlog_bytes 12\n"));
    }
}
