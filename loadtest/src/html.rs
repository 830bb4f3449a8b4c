//! `stapes-load report`: one HTML page from saved results, with charts
//! drawn by plotters (SVG, inline): for each scenario the distribution of
//! last-subscriber latency, deliveries per second, the server's CPU and
//! memory, and connections, over the run. Given two or more runs (folders
//! of results, e.g. before and after a change, or stapes and another
//! server), every table and chart shows them side by side.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
};

use plotters::{coord::Shift, prelude::*};

use crate::{
    progress::{Point, group},
    report::{Outcome, ms},
};

/// A set of results: one folder from `loadtest/run.sh`, or one file.
#[derive(Debug)]
pub struct Run {
    /// What the tables and legends call it.
    pub name: String,
    /// Where it came from, and `run.txt` of its folder if any.
    pub note: String,
    /// Its scenarios, in the order they ran.
    pub outcomes: Vec<Outcome>,
}

/// `stapes-load report [--out FILE] [--title TEXT] RUN...`; a RUN is a
/// results folder, a result file, or `NAME=` before either.
pub fn command(args: &[String]) -> Result<(), String> {
    let mut out: Option<PathBuf> = None;
    let mut title = "stapes-load report".to_owned();
    let mut runs = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--out" => out = Some(it.next().ok_or("--out needs a file")?.into()),
            "--title" => title = it.next().ok_or("--title needs a text")?.clone(),
            _ => runs.push(load_run(arg)?),
        }
    }
    let Some(first) = args.iter().find(|a| !a.starts_with("--")) else {
        return Err("report needs at least one results folder or file".into());
    };
    let out = out.unwrap_or_else(|| {
        let path = Path::new(first.split_once('=').map_or(first.as_str(), |(_, p)| p));
        let dir = if path.is_dir() { path } else { path.parent().unwrap_or(Path::new(".")) };
        dir.join("report.html")
    });
    let html = render(&title, &runs)?;
    std::fs::write(&out, html).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!("report: {}", out.display());
    Ok(())
}

/// Reads one RUN argument.
pub fn load_run(arg: &str) -> Result<Run, String> {
    let (name, path) = match arg.split_once('=') {
        Some((name, path)) if !name.contains('/') => (Some(name.to_owned()), Path::new(path)),
        _ => (None, Path::new(arg)),
    };
    let read = |p: &Path| -> Result<Outcome, String> {
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))
    };
    let mut note = path.display().to_string();
    let outcomes = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        let mut outcomes = files.iter().map(|f| read(f)).collect::<Result<Vec<_>, _>>()?;
        outcomes.sort_by_key(|o| o.started_ms);
        if let Ok(text) = std::fs::read_to_string(path.join("run.txt")) {
            note = format!("{}: {}", note, text.trim());
        }
        outcomes
    } else {
        vec![read(path)?]
    };
    if outcomes.is_empty() {
        return Err(format!("{}: no results (*.json) in it", path.display()));
    }
    let name = name.unwrap_or_else(|| {
        path.file_name().map_or_else(|| arg.to_owned(), |n| n.to_string_lossy().into_owned())
    });
    Ok(Run { name, note, outcomes })
}

/// Line colours, one per run.
const COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40)];
/// The second line of a single run (per-delivery latency, generator CPU).
const SECOND: RGBColor = RGBColor(150, 150, 150);

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}\
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:12px}\
.nodata{color:#888}.note{color:#555;font-size:90%}h2{margin-top:2em;border-bottom:1px solid #ddd}";

/// The whole page.
pub fn render(title: &str, runs: &[Run]) -> Result<String, String> {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>{STYLE}</style></head><body>\n<h1>{t}</h1>\n",
        t = esc(title)
    );
    h += "<p class=\"note\">";
    for (i, run) in runs.iter().enumerate() {
        let _ = write!(
            h,
            "<span style=\"color:{}\">■</span> <b>{}</b>: {}<br>",
            css(COLORS[i % COLORS.len()]),
            esc(&run.name),
            esc(&run.note)
        );
    }
    h += "Latency is from the publisher's send to a subscriber's read (one clock for all processes); CPU is user+system from /proc, in cores (CPU-seconds per second).</p>\n";
    let labels = scenario_labels(runs);
    h += &overview(runs, &labels);
    for label in &labels {
        let found: Vec<(usize, &Run, &Outcome)> = runs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.outcomes.iter().find(|o| &o.label == label).map(|o| (i, r, o)))
            .collect();
        h += &section(label, &found, runs.len())?;
    }
    h += "</body></html>\n";
    Ok(h)
}

/// Every scenario label, in the order of the first run that has it.
fn scenario_labels(runs: &[Run]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for o in runs.iter().flat_map(|r| &r.outcomes) {
        if !labels.contains(&o.label) {
            labels.push(o.label.clone());
        }
    }
    labels
}

/// The headline figure of each scenario in each run.
fn overview(runs: &[Run], labels: &[String]) -> String {
    let mut h = String::from("<h2>Overview</h2>\n<table><tr><th>scenario</th><th>figure</th>");
    for r in runs {
        let _ = write!(h, "<th>{}</th>", esc(&r.name));
    }
    h += "</tr>\n";
    for label in labels {
        fn get<'r>(r: &'r Run, label: &str) -> Option<&'r Outcome> {
            r.outcomes.iter().find(|o| o.label == label)
        }
        let Some(first) = runs.iter().find_map(|r| get(r, label)) else { continue };
        let (what, figure): (&str, fn(&Outcome) -> String) = if first.published > 0 {
            ("last subscriber p99; deliveries per server CPU-s", |o| {
                format!(
                    "{}; {}",
                    ms(o.last_subscriber_us.p99),
                    o.deliveries_per_server_cpu_sec.map_or("-".into(), |d| group(d as u64))
                )
            })
        } else if first.churns > 0 {
            ("join p99", |o| ms(o.join_us.p99))
        } else {
            ("connects/s; server RSS per connection", |o| {
                format!(
                    "{}; {}",
                    group(o.connects_per_sec as u64),
                    o.rss_per_conn.map_or("-".into(), |b| format!("{b:.0} B"))
                )
            })
        };
        let _ = write!(h, "<tr><td><a href=\"#{0}\">{0}</a></td><td>{what}</td>", esc(label));
        for r in runs {
            let _ = write!(h, "<td>{}</td>", get(r, label).map_or("-".into(), figure));
        }
        h += "</tr>\n";
    }
    h + "</table>\n"
}

/// One row of the figures table: a name and how to read it from an outcome.
type Figure = (&'static str, fn(&Outcome) -> Option<String>);

fn figures() -> Vec<Figure> {
    fn opt_b(v: Option<f64>) -> Option<String> {
        v.map(|b| format!("{b:.0} B"))
    }
    fn publishes(o: &Outcome) -> bool {
        o.published > 0
    }
    vec![
        ("connected", |o| {
            Some(format!("{}/{}", group(o.subscribed as u64), group(o.connections as u64)))
        }),
        ("connects/s", |o| Some(group(o.connects_per_sec as u64))),
        ("server RSS per connection", |o| opt_b(o.rss_per_conn)),
        ("kernel slab per connection (both ends)", |o| opt_b(o.slab_per_conn)),
        ("events published", |o| {
            (o.events > 0).then(|| format!("{}/{}", group(o.published), group(o.events)))
        }),
        ("delivered", |o| (o.published > 0).then(|| group(o.delivered))),
        ("missing, duplicates", |o| {
            (o.published > 0).then(|| format!("{}, {}", o.missing, o.duplicates))
        }),
        ("per delivery p50 / p99", |o| {
            (o.published > 0)
                .then(|| format!("{} / {}", ms(o.latency_us.p50), ms(o.latency_us.p99)))
        }),
        ("last subscriber p50", |o| publishes(o).then(|| ms(o.last_subscriber_us.p50))),
        ("last subscriber p90", |o| publishes(o).then(|| ms(o.last_subscriber_us.p90))),
        ("last subscriber p99", |o| publishes(o).then(|| ms(o.last_subscriber_us.p99))),
        ("last subscriber max", |o| publishes(o).then(|| ms(o.last_subscriber_us.max))),
        ("deliveries per server CPU-s", |o| {
            o.deliveries_per_server_cpu_sec.map(|d| group(d as u64))
        }),
        ("server CPU per event", |o| o.server_cpu_us_per_event.map(|u| format!("{u:.1} µs"))),
        ("server / generator cores", |o| {
            o.server_cores_busy.map(|s| format!("{s:.2} / {:.2}", o.generator_cores_busy))
        }),
        ("presence joins p50 / p99", |o| {
            (o.churns > 0).then(|| format!("{} / {}", ms(o.join_us.p50), ms(o.join_us.p99)))
        }),
        ("drops (close codes)", |o| Some(format!("{} {:?}", o.drops, o.close_codes))),
        ("errors", |o| Some(o.error_count.to_string())),
        ("bound by", |o| Some(o.bound_by.clone())),
    ]
}

fn section(label: &str, found: &[(usize, &Run, &Outcome)], runs: usize) -> Result<String, String> {
    let mut h = String::new();
    let setup = found.first().map_or("", |(_, _, o)| o.setup.as_str());
    let _ = write!(
        h,
        "<h2 id=\"{0}\">{0}</h2>\n<p>{1}</p>\n<table><tr><th></th>",
        esc(label),
        esc(setup)
    );
    for (i, run, o) in found {
        let _ = write!(
            h,
            "<th style=\"color:{}\">{}<br><span class=\"note\">{}</span></th>",
            css(COLORS[i % COLORS.len()]),
            esc(&run.name),
            esc(&o.target)
        );
    }
    h += "</tr>\n";
    for (name, get) in figures() {
        let cells: Vec<Option<String>> = found.iter().map(|(_, _, o)| get(o)).collect();
        if cells.iter().all(Option::is_none) {
            continue;
        }
        let _ = write!(h, "<tr><td>{name}</td>");
        for c in cells {
            let _ = write!(h, "<td>{}</td>", esc(c.as_deref().unwrap_or("-")));
        }
        h += "</tr>\n";
    }
    h += "</table>\n";
    if found.len() < runs {
        h += "<p class=\"note\">Not in every run.</p>\n";
    }
    h += "<div class=\"charts\">\n";
    let single = found.len() == 1;
    h += &latency_chart(found, single)?;
    let lines = |f: fn(&[Point]) -> Vec<(f64, f64)>| -> Vec<Line> {
        found.iter().map(|(i, r, o)| Line::of(*i, &r.name, f(&o.series))).collect()
    };
    h += &time_chart("Deliveries per second", "deliveries/s", lines(deliveries_per_sec))?;
    let mut cpu = lines(|s| per_sec(s, |p| p.server_cpu_secs));
    if single && let Some((_, _, o)) = found.first() {
        cpu.push(Line {
            name: "generator".into(),
            color: SECOND,
            points: per_sec(&o.series, |p| p.generator_cpu_secs),
        });
        if let Some(l) = cpu.first_mut() {
            l.name = "server".into();
        }
    }
    h += &time_chart("CPU (cores)", "cores", cpu)?;
    h += &time_chart(
        "Server memory (RSS)",
        "MiB",
        lines(|s| {
            s.iter()
                .filter_map(|p| Some((p.t, p.server_rss_bytes? as f64 / (1024.0 * 1024.0))))
                .collect()
        }),
    )?;
    h += &time_chart(
        "Connections subscribed",
        "connections",
        lines(|s| s.iter().map(|p| (p.t, p.subscribed as f64)).collect()),
    )?;
    h += "</div>\n";
    Ok(h)
}

/// One line of a chart.
struct Line {
    name: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

impl Line {
    fn of(run: usize, name: &str, points: Vec<(f64, f64)>) -> Line {
        Line { name: name.to_owned(), color: COLORS[run % COLORS.len()], points }
    }
}

/// Deliveries per second, each over the second before the sample.
fn deliveries_per_sec(series: &[Point]) -> Vec<(f64, f64)> {
    per_sec(series, |p| Some(p.delivered as f64))
}

/// The rate of change of `f`, each over the (about) one second before the
/// sample: 200 ms steps alone would draw the scheduler's jitter.
fn per_sec(series: &[Point], f: impl Fn(&Point) -> Option<f64>) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut from = 0;
    for (i, p) in series.iter().enumerate() {
        while from < i && p.t - series[from + 1].t >= 1.0 {
            from += 1;
        }
        let a = &series[from];
        if i == from || p.t <= a.t {
            continue;
        }
        if let (Some(x), Some(y)) = (f(a), f(p)) {
            out.push((p.t, ((y - x) / (p.t - a.t)).max(0.0)));
        }
    }
    out
}

const SIZE: (u32, u32) = (580, 320);

fn latency_chart(found: &[(usize, &Run, &Outcome)], single: bool) -> Result<String, String> {
    let mut lines: Vec<Line> = found
        .iter()
        .filter(|(_, _, o)| !o.last_subscriber_cdf.is_empty())
        .map(|(i, r, o)| {
            let name = if single { "last subscriber".to_owned() } else { r.name.clone() };
            Line::of(*i, &name, to_ms(&o.last_subscriber_cdf))
        })
        .collect();
    if single
        && let Some((_, _, o)) = found.first()
        && !o.latency_cdf.is_empty()
    {
        lines.push(Line {
            name: "each delivery".into(),
            color: SECOND,
            points: to_ms(&o.latency_cdf),
        });
    }
    let title = "Latency to the last subscriber (CDF)";
    if lines.is_empty() {
        return Ok(format!("<p class=\"nodata\">{title}: no events in this scenario.</p>\n"));
    }
    let (lo, hi) = lines
        .iter()
        .flat_map(|l| &l.points)
        .fold((f64::MAX, 0f64), |(lo, hi), p| (lo.min(p.0), hi.max(p.0)));
    let lo = (lo * 0.8).max(0.001);
    let hi = (hi * 1.25).max(lo * 10.0);
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)
            .map_err(err)?;
        chart
            .configure_mesh()
            .max_light_lines(0)
            .x_desc("latency, ms (log scale)")
            .y_desc("events at or below")
            .y_label_formatter(&|v| format!("{:.0}%", v * 100.0))
            .x_label_formatter(&|v| short(*v))
            .draw()
            .map_err(err)?;
        draw_lines(&mut chart, &lines, Some(SeriesLabelPosition::UpperLeft))
    })
}

fn to_ms(cdf: &[(u64, f64)]) -> Vec<(f64, f64)> {
    cdf.iter().map(|&(us, q)| (us as f64 / 1000.0, q)).collect()
}

fn time_chart(title: &str, unit: &str, lines: Vec<Line>) -> Result<String, String> {
    if lines.iter().all(|l| l.points.is_empty()) {
        return Ok(format!("<p class=\"nodata\">{title}: not measured in this run.</p>\n"));
    }
    let t_max = lines.iter().flat_map(|l| &l.points).map(|p| p.0).fold(0.0, f64::max).max(0.1);
    let y_max = lines.iter().flat_map(|l| &l.points).map(|p| p.1).fold(0.0, f64::max);
    let y_max = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..t_max, 0f64..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .max_light_lines(0)
            .x_desc("seconds since the first connection")
            .y_desc(unit)
            .y_label_formatter(&|v| short(*v))
            .draw()
            .map_err(err)?;
        let legend = (lines.len() > 1).then_some(SeriesLabelPosition::LowerRight);
        draw_lines(&mut chart, &lines, legend)
    })
}

fn draw_lines<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    lines: &[Line],
    legend: Option<SeriesLabelPosition>,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for l in lines {
        let color = l.color;
        let series = chart
            .draw_series(LineSeries::new(thin(&l.points), color.stroke_width(2)))
            .map_err(err)?;
        series.label(l.name.clone()).legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
        });
    }
    if let Some(position) = legend {
        chart
            .configure_series_labels()
            .position(position)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

/// At most about 600 points per line: enough for the chart's width.
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let step = points.len().div_ceil(600).max(1);
    let mut out: Vec<(f64, f64)> = points.iter().step_by(step).copied().collect();
    if let Some(&last) = points.last()
        && out.last() != Some(&last)
    {
        out.push(last);
    }
    out
}

fn svg(
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), String>,
) -> Result<String, String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    Ok(format!("<div>{buf}</div>\n"))
}

fn err(e: impl std::fmt::Debug) -> String {
    format!("drawing a chart: {e:?}")
}

/// An axis label: 1500000 as 1.5M, 0.25 as 0.25.
fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}").trim_end_matches('0').to_owned()
    }
}

fn css(c: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Percentiles;

    fn outcome(label: &str, p99: u64, delivered: u64) -> Outcome {
        let series = (0..=20)
            .map(|i| Point {
                t: i as f64 * 0.2,
                phase: "publishing".into(),
                subscribed: 100,
                delivered: delivered * i / 20,
                server_cpu_secs: Some(i as f64 * 0.1),
                server_rss_bytes: Some((40 + i) << 20),
                generator_cpu_secs: Some(i as f64 * 0.05),
                ..Point::default()
            })
            .collect();
        Outcome {
            label: label.into(),
            setup: "100 subscribers, 100 B, max".into(),
            connections: 100,
            subscribed: 100,
            events: 50,
            published: 50,
            delivered,
            expected: delivered,
            last_subscriber_us: Percentiles {
                count: 50,
                p50: p99 / 2,
                p90: p99 - 1,
                p99,
                max: p99 + 5,
            },
            last_subscriber_cdf: vec![(p99 / 2, 0.5), (p99, 0.99), (p99 + 5, 1.0)],
            latency_cdf: vec![(p99 / 4, 0.5), (p99, 1.0)],
            deliveries_per_server_cpu_sec: Some(123_456.0),
            series,
            ..Outcome::default()
        }
    }

    fn run(name: &str, outcomes: Vec<Outcome>) -> Run {
        Run { name: name.into(), note: "test".into(), outcomes }
    }

    #[test]
    fn one_run_draws_every_chart_with_its_figures() {
        let html =
            render("t", &[run("a", vec![outcome("fanout-small", 2_340, 5_000)])]).expect("renders");
        assert!(html.contains("<td>last subscriber p99</td><td>2.34 ms</td>"), "{html}");
        assert!(html.contains("<td>delivered</td><td>5,000</td>"), "{html}");
        // Five charts, each an SVG with the run's line drawn.
        assert_eq!(html.matches("<svg").count(), 5, "{html}");
        assert!(
            html.matches("stroke=\"#1F77B4\" stroke-width=\"2\" points=").count() >= 5,
            "{html}"
        );
        assert!(!html.contains("class=\"nodata\""), "{html}");
    }

    #[test]
    fn two_runs_side_by_side() {
        let html = render(
            "t",
            &[
                run(
                    "before",
                    vec![outcome("fanout-small", 2_340, 5_000), outcome("only-before", 1_000, 10)],
                ),
                run("after", vec![outcome("fanout-small", 1_170, 5_000)]),
            ],
        )
        .expect("renders");
        assert!(
            html.contains("<td>last subscriber p99</td><td>2.34 ms</td><td>1.17 ms</td>"),
            "{html}"
        );
        assert!(html.contains("Not in every run."), "{html}");
        // One line per run in each chart, and a legend naming both.
        for (name, color) in [("before", "#1F77B4"), ("after", "#FF7F0E")] {
            assert_eq!(html.matches(&format!(">\n{name}\n</text>")).count(), 5, "{html}");
            let line = format!("stroke=\"{color}\" stroke-width=\"2\" points=");
            assert!(html.matches(&line).count() >= 10, "a line and a legend mark per chart");
        }
    }

    #[test]
    fn rates_are_taken_over_a_second() {
        let series: Vec<Point> = (0..=10)
            .map(|i| Point {
                t: f64::from(i) * 0.2,
                delivered: 1000 * i as u64,
                ..Point::default()
            })
            .collect();
        let rates = deliveries_per_sec(&series);
        assert_eq!(rates.len(), 10);
        for (_, r) in rates {
            assert!((r - 5000.0).abs() < 1e-6, "{r}");
        }
    }

    #[test]
    fn axis_labels_are_short() {
        assert_eq!(short(1_500_000.0), "1.5M");
        assert_eq!(short(25_000.0), "25k");
        assert_eq!(short(250.0), "250");
        assert_eq!(short(2.5), "2.5");
        assert_eq!(short(0.25), "0.25");
        assert_eq!(short(0.0), "0");
    }
}
