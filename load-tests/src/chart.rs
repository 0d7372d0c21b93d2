//! SVG charts of a run: throughput and latency percentiles over time, from (time, latency) samples.

use std::fmt::Write;
use std::path::Path;

/// Width and height of one panel, in SVG user units.
const W: f64 = 720.0;
const H: f64 = 240.0;
const MARGIN: f64 = 56.0;

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

/// Writes two panels: operations per second per bucket, and p50/p99 latency per bucket.
/// `samples` are (seconds since start, latency in ms).
pub fn write(path: &Path, title: &str, unit: &str, samples: &[(f64, f64)]) -> std::io::Result<()> {
    let end = samples.iter().map(|s| s.0).fold(0.0, f64::max);
    let bucket = if end > 20.0 { 1.0 } else { 0.25 };
    let n = (end / bucket).floor() as usize + 1;
    let mut buckets: Vec<Vec<f64>> = vec![Vec::new(); n];
    for (t, l) in samples {
        buckets[((t / bucket).floor() as usize).min(n - 1)].push(*l);
    }
    let mut rate = Vec::new();
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for (i, b) in buckets.iter_mut().enumerate() {
        let t = i as f64 * bucket;
        rate.push((t, b.len() as f64 / bucket));
        if !b.is_empty() {
            b.sort_by(|a, c| a.total_cmp(c));
            p50.push((t, b[(b.len() - 1) / 2]));
            p99.push((t, b[((b.len() - 1) as f64 * 0.99).round() as usize]));
        }
    }
    let mut svg = String::new();
    let total_h = 2.0 * (H + MARGIN) + 40.0;
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{total_h}" font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/><text x="{x}" y="22" font-size="15">{title}</text>"#,
        w = W + 2.0 * MARGIN,
        x = MARGIN
    );
    panel(
        &mut svg,
        40.0,
        &format!("{unit} per second"),
        end,
        &[Series {
            name: unit,
            color: "#1f77b4",
            points: rate,
        }],
    );
    panel(
        &mut svg,
        40.0 + H + MARGIN,
        "latency (ms)",
        end,
        &[
            Series {
                name: "p50",
                color: "#2ca02c",
                points: p50,
            },
            Series {
                name: "p99",
                color: "#d62728",
                points: p99,
            },
        ],
    );
    svg.push_str("</svg>");
    std::fs::write(path, svg)
}

fn panel(svg: &mut String, top: f64, label: &str, end: f64, series: &[Series<'_>]) {
    let max_y = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let max_x = end.max(1e-9);
    let x = |t: f64| MARGIN + t / max_x * W;
    let y = |v: f64| top + H - v / max_y * H;
    let _ = write!(
        svg,
        r##"<rect x="{MARGIN}" y="{top}" width="{W}" height="{H}" fill="none" stroke="#999"/><text x="{MARGIN}" y="{}" fill="#333">{label}</text>"##,
        top - 6.0
    );
    for i in 0..=4 {
        let v = max_y * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{MARGIN}" x2="{}" y1="{yy}" y2="{yy}" stroke="#eee"/><text x="{}" y="{}" text-anchor="end" fill="#555">{}</text>"##,
            MARGIN + W,
            MARGIN - 4.0,
            y(v) + 4.0,
            short(v),
            yy = y(v)
        );
        let t = max_x * i as f64 / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{:.1}s</text>"##,
            x(t),
            top + H + 16.0,
            t
        );
    }
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{p}"/><text x="{lx}" y="{ly}" fill="{c}">{n}</text>"#,
            c = s.color,
            p = pts.join(" "),
            lx = MARGIN + W - 60.0 * (i as f64 + 1.0),
            ly = top + 14.0,
            n = s.name
        );
    }
}

fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
