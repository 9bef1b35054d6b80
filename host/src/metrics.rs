//! The Prometheus endpoint (`[host] metrics_listen`): the counters of every mount's
//! [`MountStats`] and the host's own, in the text exposition format of `prometheus-client`,
//! served over plain HTTP by one thread. The counters are read at scrape time; serving a
//! request never touches anything here.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tracing::{debug, info, warn};

use crate::metered::{BUCKET_NANOS, ERRNO_SLOTS, MountStats, OPS};

/// What the host counts about itself, and the mounts it serves.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reloads applied.
    pub reloads: AtomicU64,
    /// Reloads refused (the config had an error).
    pub reloads_refused: AtomicU64,
    /// Backends swapped under a live mountpoint.
    pub swaps: AtomicU64,
    mounts: Mutex<Vec<MountEntry>>,
    /// Plugin panics of mounts no longer served.
    retired_panics: AtomicU64,
}

#[derive(Debug)]
struct MountEntry {
    name: String,
    plugin: String,
    stats: Arc<MountStats>,
}

impl Metrics {
    /// Counts `stats` as mount `name` served by `plugin` from now on.
    pub fn add_mount(&self, name: &str, plugin: &str, stats: &Arc<MountStats>) {
        let entry = MountEntry { name: name.into(), plugin: plugin.into(), stats: Arc::clone(stats) };
        lock(&self.mounts).push(entry);
    }

    /// The mount counting into `stats` is served by `plugin` from now on (a backend swap;
    /// its counters go on).
    pub fn relabel_mount(&self, stats: &Arc<MountStats>, plugin: &str) {
        if let Some(m) = lock(&self.mounts).iter_mut().find(|m| Arc::ptr_eq(&m.stats, stats)) {
            m.plugin = plugin.into();
        }
    }

    /// The mount counting into `stats` is gone.
    pub fn remove_mount(&self, stats: &Arc<MountStats>) {
        let mut mounts = lock(&self.mounts);
        if let Some(i) = mounts.iter().position(|m| Arc::ptr_eq(&m.stats, stats)) {
            let gone = mounts.remove(i);
            self.retired_panics.fetch_add(gone.stats.plugin_panics.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, series: &[(Vec<(&str, &str)>, u64)]) -> R {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        if labels.is_empty() {
            metric.encode_counter::<NoLabelSet, _, u64>(value, None)?;
        } else {
            metric.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(value, None)?;
        }
    }
    Ok(())
}

type R = Result<(), std::fmt::Error>;

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> R {
        let mounts = lock(&self.mounts);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

        let mut gauge = encoder.encode_descriptor("plugfs_mounts", "Mounts being served.", None, MetricType::Gauge)?;
        gauge.encode_gauge(&(mounts.len() as i64))?;
        let reloads = [
            (vec![("result", "applied")], load(&self.reloads)),
            (vec![("result", "refused")], load(&self.reloads_refused)),
        ];
        counter(&mut encoder, "plugfs_reloads", "Config reloads, by result.", &reloads)?;
        counter(
            &mut encoder,
            "plugfs_backend_swaps",
            "Backends swapped under a live mountpoint.",
            &[(vec![], load(&self.swaps))],
        )?;
        let panics = load(&self.retired_panics) + mounts.iter().map(|m| load(&m.stats.plugin_panics)).sum::<u64>();
        counter(
            &mut encoder,
            "plugfs_plugin_panics",
            "Plugin calls that panicked (answered EIO).",
            &[(vec![], panics)],
        )?;

        let per_op = |f: &dyn Fn(&MountStats, usize) -> u64| {
            let mut series = Vec::new();
            for m in mounts.iter() {
                for (i, op) in OPS.iter().enumerate() {
                    let v = f(&m.stats, i);
                    if load(&m.stats.ops[i].requests) > 0 {
                        series.push((vec![("mount", m.name.as_str()), ("plugin", m.plugin.as_str()), ("op", *op)], v));
                    }
                }
            }
            series
        };
        counter(
            &mut encoder,
            "plugfs_requests",
            "Requests passed to the plugin, by mount and operation.",
            &per_op(&|s, i| load(&s.ops[i].requests)),
        )?;
        counter(
            &mut encoder,
            "plugfs_request_errors",
            "Requests the plugin failed, by mount and operation.",
            &per_op(&|s, i| load(&s.ops[i].errors)),
        )?;

        let errnos: Vec<String> = (0..ERRNO_SLOTS).map(|e| e.to_string()).collect();
        let mut by_errno = Vec::new();
        for m in mounts.iter() {
            for (e, count) in m.stats.errnos.iter().enumerate() {
                let count = load(count);
                if count > 0 {
                    by_errno.push((
                        vec![("mount", m.name.as_str()), ("plugin", m.plugin.as_str()), ("errno", errnos[e].as_str())],
                        count,
                    ));
                }
            }
        }
        counter(
            &mut encoder,
            "plugfs_errors_by_errno",
            "Failed requests by errno number (133: 133 and above).",
            &by_errno,
        )?;

        let per_mount = |f: &dyn Fn(&MountStats) -> u64| {
            mounts
                .iter()
                .map(|m| (vec![("mount", m.name.as_str()), ("plugin", m.plugin.as_str())], f(&m.stats)))
                .collect::<Vec<_>>()
        };
        counter(
            &mut encoder,
            "plugfs_read_bytes",
            "Bytes read through the mount.",
            &per_mount(&|s| load(&s.bytes_read)),
        )?;
        counter(
            &mut encoder,
            "plugfs_written_bytes",
            "Bytes written through the mount.",
            &per_mount(&|s| load(&s.bytes_written)),
        )?;

        let mut histogram = encoder.encode_descriptor(
            "plugfs_request_duration_seconds",
            "Time the plugin took to answer, by mount and operation.",
            None,
            MetricType::Histogram,
        )?;
        for m in mounts.iter() {
            for (i, op) in OPS.iter().enumerate() {
                let o = &m.stats.ops[i];
                let count = load(&o.requests);
                if count == 0 {
                    continue;
                }
                // Counts per bucket, not cumulative: the encoder adds them up.
                let mut buckets: Vec<(f64, u64)> = BUCKET_NANOS
                    .iter()
                    .enumerate()
                    .map(|(b, bound)| (*bound as f64 / 1e9, load(&o.buckets[b])))
                    .collect();
                buckets.push((f64::MAX, load(&o.buckets[BUCKET_NANOS.len()])));
                let labels = [("mount", m.name.as_str()), ("plugin", m.plugin.as_str()), ("op", *op)];
                let sum = load(&o.latency_nanos) as f64 / 1e9;
                histogram.encode_family(&labels)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        Ok(())
    }
}

/// Serves `metrics` at `http://<addr>/metrics` from a thread of its own.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(metrics));
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming() {
            match stream {
                Ok(s) => {
                    if let Err(e) = answer(s, &registry) {
                        debug!("metrics connection: {e}");
                    }
                }
                Err(e) => warn!("metrics endpoint: {e}"),
            }
        }
    })?;
    info!("metrics at http://{bound}/metrics");
    Ok(bound)
}

fn answer(stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(std::io::Read::take(stream.try_clone()?, 16 * 1024));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read the rest of the head; the body of a GET is empty.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut stream = stream;
    if method != "GET" || !(path == "/metrics" || path == "/") {
        return stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 22\r\nConnection: close\r\n\r\ntry GET /metrics here\n",
        );
    }
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, registry).map_err(std::io::Error::other)?;
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}
