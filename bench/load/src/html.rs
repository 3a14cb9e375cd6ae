//! The `--html` report: one self-contained page (inline CSS, inline SVG, no scripts and
//! no external assets) with the summary, the violations, and SVG plots drawn by
//! `plotters`: latency over time, percentile curves, throughput over time.

use crate::figures::Summary;
use crate::report::Report;
use plotters::prelude::*;
use std::fmt::Write as _;

/// A series to plot: its name and points.
type Series<'a> = (&'a str, Vec<(f64, f64)>);

/// The colours of series, in order.
const COLOURS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
];

/// How the y axis is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scale {
    Linear,
    /// Logarithmic: latencies span milliseconds to seconds, and both ends matter.
    Log,
}

/// Smallest value a logarithmic axis shows (a thousandth of its unit).
const LOG_FLOOR: f64 = 1e-3;

/// One line chart as an SVG document; a chart with no points says so in words.
fn chart(title: &str, x_desc: &str, y_desc: &str, scale: Scale, series: &[Series<'_>]) -> String {
    // A logarithmic axis is drawn as a linear one over log10 of the values.
    let series: Vec<Series<'_>> = series
        .iter()
        .map(|(name, points)| {
            let points = points
                .iter()
                .map(|&(x, y)| match scale {
                    Scale::Linear => (x, y),
                    Scale::Log => (x, y.max(LOG_FLOOR).log10()),
                })
                .collect();
            (*name, points)
        })
        .collect();
    let points = series.iter().flat_map(|s| s.1.iter());
    let (mut x_max, mut y_min, mut y_max) = (0.0_f64, f64::INFINITY, f64::NEG_INFINITY);
    let mut any = false;
    for &(x, y) in points {
        any = true;
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    let (y_from, y_to) = match scale {
        Scale::Linear => (0.0, (y_max * 1.1).max(1e-3)),
        Scale::Log => (y_min.floor(), y_max.ceil().max(y_min.floor() + 1.0)),
    };
    if !any {
        return format!(
            "<p class=\"empty\">{}: no data in this run.</p>",
            escape(title)
        );
    }
    let mut svg = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, (860, 320)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..(x_max * 1.02).max(1.0), y_from..y_to)?;
        let label = |v: &f64| match scale {
            Scale::Linear => format!("{v}"),
            Scale::Log => {
                let value = 10f64.powf(*v);
                match value {
                    v if v >= 100.0 => format!("{v:.0}"),
                    v if v >= 1.0 => format!("{v:.1}"),
                    v => format!("{v:.3}"),
                }
            }
        };
        c.configure_mesh()
            .x_desc(x_desc)
            .y_desc(match scale {
                Scale::Linear => y_desc.to_owned(),
                Scale::Log => format!("{y_desc} (log scale)"),
            })
            .y_label_formatter(&label)
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (i, (name, points)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            c.draw_series(LineSeries::new(
                points.iter().copied(),
                colour.stroke_width(2),
            ))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        root.present()?;
        Ok(())
    })();
    match drawn {
        Ok(()) => svg,
        Err(err) => format!(
            "<p class=\"empty\">{}: could not be drawn ({}).</p>",
            escape(title),
            escape(&err.to_string())
        ),
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// "Nines" for a percentile: 90 -> 1, 99 -> 2, 99.9 -> 3 (so the tail gets room).
fn nines(percentile: f64) -> f64 {
    let rest = (100.0 - percentile).max(0.001) / 100.0;
    -rest.log10()
}

fn row(out: &mut String, name: &str, s: &Summary) {
    let _ = writeln!(
        out,
        "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
        escape(name),
        s.count,
        s.mean_ms,
        s.p50_ms,
        s.p90_ms,
        s.p99_ms,
        s.p99_9_ms,
        s.max_ms
    );
}

/// The whole page.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let verdict_class = if report.verdict == "ok" { "ok" } else { "bad" };
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>sluice load report</title>\n\
         <style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         td:first-child,th:first-child{{text-align:left}}.ok{{color:#17702a}}.bad{{color:#b00020}}\
         .empty{{color:#777;font-style:italic}}pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style></head><body>\n\
         <h1>sluice load report</h1>\n<p class=\"{verdict_class}\"><strong>Verdict: {}</strong></p>\n",
        escape(report.verdict)
    );
    let c = &report.executions;
    let t = &report.throughput;
    let _ = writeln!(
        out,
        "<p>{} executions in {:.1} s: {} finished, {} refused, {} unfinished; {} resumes, {} connections lost.<br>\
         Throughput: {:.1} executions/s, {:.0} events/s, {:.0} bytes/s.</p>",
        c.issued, report.elapsed_s, c.finished, c.refused, c.unfinished, c.resumes,
        c.connections_lost, t.executions_per_s, t.events_per_s, t.bytes_per_s
    );
    out.push_str("<h2>Latency (ms)</h2>\n<table><tr><th></th><th>count</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>\n");
    row(
        &mut out,
        "execute → started",
        &report.latency.execute_to_started,
    );
    row(
        &mut out,
        "execute → first output",
        &report.latency.execute_to_first_output,
    );
    row(
        &mut out,
        "execute → terminal",
        &report.latency.execute_to_terminal,
    );
    row(&mut out, "delivery lag (steady)", &report.lag.steady);
    row(&mut out, "delivery lag (all lines)", &report.lag.all);
    out.push_str("</table>\n");
    let _ = writeln!(out, "<p>Lag window: {}.</p>", escape(&report.lag.window));
    out.push_str("<h2>Violations</h2>\n");
    if report.violations.total == 0 {
        out.push_str("<p class=\"ok\">None: every event was checked.</p>\n");
    } else {
        out.push_str("<table><tr><th>kind</th><th>count</th></tr>\n");
        for (kind, count) in &report.violations.by_kind {
            let _ = writeln!(out, "<tr><td>{}</td><td>{count}</td></tr>", kind.as_str());
        }
        out.push_str("</table>\n<pre>");
        for example in &report.violations.examples {
            let _ = writeln!(
                out,
                "{}: {}",
                example.kind.as_str(),
                escape(&example.detail)
            );
        }
        out.push_str("</pre>\n");
    }
    if !report.refusals.is_empty() {
        out.push_str("<h2>Refusals</h2>\n<table><tr><th>code</th><th>count</th><th>first message</th></tr>\n");
        for (code, count) in &report.refusals {
            let message = report
                .refusal_messages
                .get(code)
                .map(String::as_str)
                .unwrap_or("");
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{count}</td><td>{}</td></tr>",
                escape(code),
                escape(message)
            );
        }
        out.push_str("</table>\n");
    }
    let tl = &report.timeline;
    let pick = |f: fn(&crate::figures::Point) -> Option<f64>| -> Vec<(f64, f64)> {
        tl.iter()
            .filter_map(|p| f(p).map(|v| (p.second as f64, v)))
            .collect()
    };
    out.push_str("<h2>Latency over time</h2>\n");
    out.push_str(&chart(
        "execute → terminal, by intended start",
        "seconds into the run",
        "ms",
        Scale::Log,
        &[
            ("p50", pick(|p| p.terminal_p50_ms)),
            ("p99", pick(|p| p.terminal_p99_ms)),
        ],
    ));
    out.push_str(&chart(
        "delivery lag, by time printed",
        "seconds into the run",
        "ms",
        Scale::Log,
        &[
            ("p50", pick(|p| p.lag_p50_ms)),
            ("p99", pick(|p| p.lag_p99_ms)),
        ],
    ));
    out.push_str(
        "<h2>Percentile curves</h2>\n<p>x: nines (1 = p90, 2 = p99, 3 = p99.9, 4 = p99.99).</p>\n",
    );
    let curve = |s: &Summary| -> Vec<(f64, f64)> {
        s.curve.iter().map(|&(p, ms)| (nines(p), ms)).collect()
    };
    out.push_str(&chart(
        "latency by percentile",
        "nines",
        "ms",
        Scale::Log,
        &[
            (
                "execute → started",
                curve(&report.latency.execute_to_started),
            ),
            (
                "execute → first output",
                curve(&report.latency.execute_to_first_output),
            ),
            (
                "execute → terminal",
                curve(&report.latency.execute_to_terminal),
            ),
            ("delivery lag (steady)", curve(&report.lag.steady)),
        ],
    ));
    out.push_str("<h2>Throughput over time</h2>\n");
    let per_second = |f: fn(&crate::figures::Point) -> u64| -> Vec<(f64, f64)> {
        tl.iter().map(|p| (p.second as f64, f(p) as f64)).collect()
    };
    out.push_str(&chart(
        "executions ended per second",
        "seconds into the run",
        "executions/s",
        Scale::Linear,
        &[("executions", per_second(|p| p.executions))],
    ));
    out.push_str(&chart(
        "events received per second",
        "seconds into the run",
        "events/s",
        Scale::Linear,
        &[("events", per_second(|p| p.events))],
    ));
    out.push_str("<h2>Scenario</h2>\n<pre>");
    out.push_str(&escape(
        &serde_json::to_string_pretty(&report.scenario).unwrap_or_default(),
    ));
    out.push_str("</pre>\n</body></html>\n");
    out
}
