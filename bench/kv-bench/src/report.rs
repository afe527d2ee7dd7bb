//! The benchmark's results: a table for people, JSON for scripts, an SVG chart over time.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::BenchArgs;
use super::Protocol;
use super::Sample;

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_us: u64,
    pub p90_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub min_us: u64,
    pub mean_us: f64,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds since measuring started (the start of this bucket).
    pub t: u64,
    pub ops: u64,
    pub errors: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: String,
    pub protocol: Protocol,
    pub clients: usize,
    pub value_size: usize,
    pub reads: f64,
    /// Seconds measured (warm-up excluded).
    pub seconds: f64,
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed (error replies, timeouts, lost connections).
    pub errors: u64,
    /// Successful requests per second.
    pub ops_per_sec: f64,
    /// Latency of the successful requests.
    pub latency: Latency,
    pub timeline: Vec<Second>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 1 h at 3 significant digits; values outside are clamped by `saturating_record`.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant, valid histogram bounds")
}

fn latency(h: &Histogram<u64>) -> Latency {
    Latency {
        p50_us: h.value_at_quantile(0.50),
        p90_us: h.value_at_quantile(0.90),
        p95_us: h.value_at_quantile(0.95),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
        min_us: h.min(),
        mean_us: h.mean(),
    }
}

impl Report {
    /// Summarises the samples of a run that measured for `measured`.
    pub(crate) fn build(args: &BenchArgs, samples: &[Sample], measured: Duration) -> Report {
        let mut all = histogram();
        // Whole seconds; a final fraction of a second joins the last bucket rather than showing
        // as a near-empty one.
        let secs = (measured.as_secs_f64().round() as usize).max(1);
        let mut per_sec: Vec<(Histogram<u64>, u64, u64)> =
            (0..secs).map(|_| (histogram(), 0, 0)).collect();
        let (mut ok, mut errors) = (0, 0);
        for s in samples {
            let b = &mut per_sec[((s.at_us / 1_000_000) as usize).min(secs - 1)];
            if s.ok {
                ok += 1;
                b.1 += 1;
                all.saturating_record(s.latency_us.max(1));
                b.0.saturating_record(s.latency_us.max(1));
            } else {
                errors += 1;
                b.2 += 1;
            }
        }
        let seconds = measured.as_secs_f64();
        let label = args.label.clone().unwrap_or_else(|| {
            let what = if args.reads >= 1.0 {
                "get"
            } else if args.reads > 0.0 {
                "mixed"
            } else {
                "set"
            };
            format!("{what} c={}", args.clients)
        });
        Report {
            label,
            protocol: args.protocol,
            clients: args.clients,
            value_size: args.value_size,
            reads: args.reads,
            seconds,
            ok,
            errors,
            ops_per_sec: ok as f64 / seconds.max(1e-6),
            latency: latency(&all),
            timeline: per_sec
                .iter()
                .enumerate()
                .map(|(t, (h, ops, errors))| Second {
                    t: t as u64,
                    ops: *ops,
                    errors: *errors,
                    p99_us: if h.is_empty() {
                        0
                    } else {
                        h.value_at_quantile(0.99)
                    },
                    max_us: h.max(),
                })
                .collect(),
        }
    }

    /// The results as a small table.
    pub fn table(&self) -> String {
        let ms = |us: u64| format!("{:.2}", us as f64 / 1000.0);
        let l = &self.latency;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16} {:>8} {:>11} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
            "run", "clients", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "errors"
        );
        let _ = write!(
            out,
            "{:<16} {:>8} {:>11.0} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
            self.label,
            self.clients,
            self.ops_per_sec,
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.p999_us),
            ms(l.max_us),
            self.errors
        );
        out
    }

    /// The results in `redis-benchmark --csv`'s columns (header and one row), so scripts read
    /// both tools alike.
    pub fn csv(&self) -> String {
        let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
        let l = &self.latency;
        format!(
            "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"{}\",\"{:.2}\",\"{:.3}\",\"{}\",\"{}\",\"{}\",\"{}\",\"{}\"",
            self.label.to_uppercase(),
            self.ops_per_sec,
            l.mean_us / 1000.0,
            ms(l.min_us),
            ms(l.p50_us),
            ms(l.p95_us),
            ms(l.p99_us),
            ms(l.max_us)
        )
    }

    /// The results as JSON.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Throughput and p99/max latency per second as an SVG chart.
    pub fn svg(&self) -> String {
        const W: f64 = 900.0;
        const PANEL: f64 = 200.0;
        const LEFT: f64 = 80.0;
        const TOP: f64 = 40.0;
        const GAP: f64 = 60.0;
        let plot_w = W - LEFT - 20.0;
        let n = self.timeline.len().max(1) as f64;
        let x = |i: usize| LEFT + plot_w * (i as f64 + 0.5) / n;
        let max_ops = self
            .timeline
            .iter()
            .map(|s| s.ops)
            .max()
            .unwrap_or(0)
            .max(1) as f64;
        let max_lat = self
            .timeline
            .iter()
            .map(|s| s.max_us)
            .max()
            .unwrap_or(0)
            .max(1) as f64
            / 1000.0;
        let line = |values: Vec<f64>, top: f64, max: f64| -> String {
            values
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{:.1},{:.1}", x(i), top + PANEL - PANEL * v / max))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let lat_top = TOP + PANEL + GAP;
        let height = lat_top + PANEL + 50.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{LEFT}" y="20" font-size="14">{} — {:.0} ops/s, p99 {:.2} ms, {} errors</text>"#,
            escape(&self.label),
            self.ops_per_sec,
            self.latency.p99_us as f64 / 1000.0,
            self.errors
        );
        for (top, max, unit) in [(TOP, max_ops, "ops/s"), (lat_top, max_lat, "ms")] {
            let _ = writeln!(
                s,
                r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#999"/>"##
            );
            for k in 0..=4 {
                let y = top + PANEL - PANEL * k as f64 / 4.0;
                let _ = writeln!(
                    s,
                    r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.1}</text>"##,
                    LEFT + plot_w,
                    LEFT - 6.0,
                    y + 4.0,
                    max * k as f64 / 4.0
                );
            }
            let _ = writeln!(
                s,
                r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{unit}</text>"#,
                top + PANEL / 2.0,
                top + PANEL / 2.0
            );
        }
        let ops: Vec<f64> = self.timeline.iter().map(|s| s.ops as f64).collect();
        let p99: Vec<f64> = self
            .timeline
            .iter()
            .map(|s| s.p99_us as f64 / 1000.0)
            .collect();
        let max: Vec<f64> = self
            .timeline
            .iter()
            .map(|s| s.max_us as f64 / 1000.0)
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{}"/>"##,
            line(ops, TOP, max_ops)
        );
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#d62728" stroke-width="1.5" points="{}"/>"##,
            line(max, lat_top, max_lat)
        );
        let _ = writeln!(
            s,
            r##"<polyline fill="none" stroke="#ff7f0e" stroke-width="2" points="{}"/>"##,
            line(p99, lat_top, max_lat)
        );
        for (i, sec) in self.timeline.iter().enumerate() {
            if sec.errors > 0 {
                let _ = writeln!(
                    s,
                    r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#d62728"><title>{} errors</title></circle>"##,
                    x(i),
                    TOP + PANEL,
                    sec.errors
                );
            }
        }
        let bottom = lat_top + PANEL + 20.0;
        let _ = writeln!(
            s,
            r##"<text x="{LEFT}" y="{bottom}">seconds 0–{} · throughput (blue, top) · p99 (orange) and max (red) latency per second (bottom) · red dots: seconds with errors</text>"##,
            self.timeline.len()
        );
        s.push_str("</svg>\n");
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
