//! What a run leaves behind: the summary table on the terminal, and in the results folder
//! `results.json` (every figure, raw rounds included), `report.md` (the table, the machine,
//! the plots), `latency.svg` (the headline rate's latency percentiles) and `sweep.svg` (one-hop
//! latency against the rate, each system), drawn by hand: no plotting or font dependency.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use crate::stats;

/// One line of the summary: a figure, its ratio to the matching ceiling (or reference) and
/// the issue's target with whether this run met it. Targets are reported, never asserted.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub section: &'static str,
    pub what: String,
    pub value: String,
    pub ratio: String,
    pub target: String,
    pub met: Option<bool>,
}

impl Row {
    pub fn new(section: &'static str, what: impl Into<String>, value: impl Into<String>) -> Self {
        Row {
            section,
            what: what.into(),
            value: value.into(),
            ratio: String::new(),
            target: String::new(),
            met: None,
        }
    }

    pub fn ratio(mut self, ratio: impl Into<String>) -> Self {
        self.ratio = ratio.into();
        self
    }

    /// The target as the issue states it, and whether `met`.
    pub fn target(mut self, target: &str, met: bool) -> Self {
        self.target = target.into();
        self.met = Some(met);
        self
    }
}

/// `part / whole` as a percentage, e.g. `41% of publish ceiling`.
pub fn share(part: f64, whole: f64, of: &str) -> String {
    format!("{:.0}% of {of}", 100.0 * part / whole)
}

/// The machine a run came from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub postgres: String,
    pub rabbitmq: String,
    pub build: &'static str,
}

/// A named latency series for the plot, in ms.
pub struct Series<'a> {
    pub name: String,
    pub ms: &'a [f64],
}

pub fn table(rows: &[Row]) -> String {
    let header = ["section", "figure", "value", "ratio", "target", "met"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.section.to_string(),
                r.what.clone(),
                r.value.clone(),
                r.ratio.clone(),
                r.target.clone(),
                r.met
                    .map_or(String::new(), |m| if m { "yes" } else { "no" }.into()),
            ]
        })
        .collect();
    let width = |i: usize| {
        cells
            .iter()
            .map(|c| c[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..6).map(width).collect();
    let line = |c: &[String]| {
        let padded: Vec<String> = c
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(&header.map(String::from));
    out += &line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for c in &cells {
        out += &line(c);
    }
    out
}

/// One system's one-hop latency at each rate of the sweep: (rate, p50 ms, p99 ms).
pub struct Sweep {
    pub name: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// Writes `results.json`, `report.md`, `latency.svg` and `sweep.svg` into `dir`.
pub fn write(
    dir: &Path,
    machine: &Machine,
    command: &str,
    rows: &[Row],
    raw: &serde_json::Value,
    series: &[Series],
    sweeps: &[Sweep],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json =
        serde_json::json!({ "machine": machine, "command": command, "summary": rows, "raw": raw });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    std::fs::write(dir.join("latency.svg"), percentiles_svg(series))?;
    std::fs::write(dir.join("sweep.svg"), sweep_svg(sweeps))?;
    let mut md = String::from("# Benchmark run\n\n");
    let _ = writeln!(
        md,
        "`{command}` on {} cores, {:.1} GiB, PostgreSQL {}, RabbitMQ {}, {} build.\n",
        machine.cores, machine.memory_gib, machine.postgres, machine.rabbitmq, machine.build
    );
    md += &table(rows);
    md += "\n![steady latency percentiles](latency.svg)\n";
    md += "\n![one-hop latency against the rate](sweep.svg)\n";
    std::fs::write(dir.join("report.md"), md)
}

/// Latency by percentile (x: p0–p99.9 in nines, so the tail is visible), one line per series.
fn percentiles_svg(series: &[Series]) -> String {
    let percentiles: Vec<f64> = (0..=999).map(|i| i as f64 / 10.0).collect();
    let lines = series
        .iter()
        .map(|s| {
            let mut sorted = s.ms.to_vec();
            sorted.sort_by(f64::total_cmp);
            let points = percentiles
                .iter()
                .map(|&p| (p, stats::percentile_sorted(&sorted, p)))
                .collect();
            (s.name.clone(), points)
        })
        .collect::<Vec<_>>();
    // p90 = 1, p99 = 2, p99.9 = 3 nines.
    let nines = |p: f64| -(1.0 - p / 100.0).log10() / 3.0;
    let ticks = [0.0, 50.0, 90.0, 99.0, 99.9].map(|p| (p, format!("p{p}")));
    plot(&lines, "percentile", &nines, &ticks)
}

/// The latency-against-load curve: each system's one-hop p50 and p99 at each rate (x on a
/// log scale).
fn sweep_svg(sweeps: &[Sweep]) -> String {
    let mut lines = Vec::new();
    for s in sweeps {
        lines.push((
            format!("{} p50", s.name),
            s.points.iter().map(|&(r, p50, _)| (r, p50)).collect(),
        ));
        lines.push((
            format!("{} p99", s.name),
            s.points.iter().map(|&(r, _, p99)| (r, p99)).collect(),
        ));
    }
    let rates = || sweeps.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let lo = rates().fold(f64::INFINITY, f64::min).min(100.0).log10();
    let hi = rates()
        .fold(0.0, f64::max)
        .max(10f64.powf(lo + 1.0))
        .log10();
    let at = move |rate: f64| (rate.log10() - lo) / (hi - lo);
    let mut ticks: Vec<(f64, String)> = rates().map(|r| (r, format!("{r:.0}"))).collect();
    ticks.sort_by(|a, b| a.0.total_cmp(&b.0));
    ticks.dedup_by(|a, b| a.0 == b.0);
    plot(&lines, "orders per second (log scale)", &at, &ticks)
}

/// A plot of named lines of (x, ms) points: `at` places an x between 0 and 1 on the axis,
/// `ticks` label it; the y axis is ms on a log scale, so an overloaded run's seconds and a
/// quiet one's milliseconds fit on one plot. Drawn by hand: no plotting or font dependency.
fn plot(
    lines: &[(String, Vec<(f64, f64)>)],
    x_label: &str,
    at: &dyn Fn(f64) -> f64,
    ticks: &[(f64, String)],
) -> String {
    const COLORS: [&str; 6] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    ];
    let (w, h, left, bottom, top, right) = (720.0, 420.0, 60.0, 40.0, 20.0, 200.0);
    let finite = || {
        lines
            .iter()
            .flat_map(|(_, points)| points)
            .map(|(_, y)| *y)
            .filter(|y| y.is_finite() && *y > 0.0)
    };
    let decade_min = finite()
        .fold(f64::INFINITY, f64::min)
        .max(0.01)
        .log10()
        .floor();
    let decade_max = finite()
        .fold(1.0_f64, f64::max)
        .log10()
        .ceil()
        .max(decade_min + 1.0);
    let x = |v: f64| left + at(v) * (w - left - right);
    let y = |ms: f64| {
        let at = (ms.max(10f64.powf(decade_min)).log10() - decade_min) / (decade_max - decade_min);
        h - bottom - at * (h - bottom - top)
    };
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<line x1="{left}" y1="{b}" x2="{xr}" y2="{b}" stroke="black"/>
<line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="black"/>
<text x="{xm}" y="{h1}" text-anchor="middle">{x_label}</text>
<text x="14" y="{ym}" transform="rotate(-90 14 {ym})" text-anchor="middle">latency (ms, log scale)</text>
"#,
        b = h - bottom,
        xr = w - right,
        xm = (left + w - right) / 2.0,
        h1 = h - 8.0,
        ym = (top + h - bottom) / 2.0,
    );
    for (v, label) in ticks {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="middle">{label}</text>"#,
            x(*v),
            h - bottom + 15.0
        );
    }
    for decade in decade_min as i32..=decade_max as i32 {
        let ms = 10f64.powi(decade);
        let (tx, ty, gy, xr) = (left - 4.0, y(ms) + 4.0, y(ms), w - right);
        let _ = writeln!(
            out,
            r##"<text x="{tx}" y="{ty}" text-anchor="end">{ms}</text><line x1="{left}" y1="{gy}" x2="{xr}" y2="{gy}" stroke="#ddd"/>"##,
        );
    }
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = points
            .iter()
            .filter(|(_, ms)| ms.is_finite())
            .map(|(v, ms)| format!("{:.1},{:.1}", x(*v), y(*ms)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        let ly = top + 16.0 * i as f64 + 10.0;
        let _ = writeln!(
            out,
            r#"<line x1="{}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{name}</text>"#,
            w - right + 10.0,
            w - right + 30.0,
            w - right + 35.0,
            ly + 4.0,
        );
    }
    out + "</svg>\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_its_columns_and_says_whether_a_target_is_met() {
        let rows = [
            Row::new("drain", "one hop", "754/s")
                .ratio(share(754.0, 14_422.0, "broker ceiling"))
                .target("≥ 2,500/s", false),
            Row::new("ceiling", "publish", "16022/s"),
        ];
        let table = table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[2].contains("5% of broker ceiling") && lines[2].ends_with("| no  |"));
        let widths: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{table}");
    }

    #[test]
    fn the_plot_is_one_svg_with_a_line_per_series() {
        let ms: Vec<f64> = (1..=1000).map(|i| i as f64 / 10.0).collect();
        let series = [
            Series {
                name: "a".into(),
                ms: &ms,
            },
            Series {
                name: "b".into(),
                ms: &[],
            },
        ];
        let svg = percentiles_svg(&series);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn the_sweep_draws_a_p50_and_a_p99_line_per_system_on_the_rates() {
        let sweeps = [
            Sweep {
                name: "a".into(),
                points: vec![(100.0, 2.0, 5.0), (1_000.0, 4.0, 40.0)],
            },
            Sweep {
                name: "b".into(),
                points: vec![(100.0, 3.0, 8.0)],
            },
        ];
        let svg = sweep_svg(&sweeps);
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert!(svg.contains(">a p99<") && svg.contains(">b p50<"));
        assert!(svg.contains(">1000<") && !svg.contains("NaN"));
        let tick = r#"text-anchor="middle">100<"#;
        assert_eq!(svg.matches(tick).count(), 1, "one tick per rate");
    }
}
