//! `kvmnet bench --svg FILE`: throughput per configuration (bars at the median, whiskers
//! over the interquartile range) beside the latency distribution (the CDF of every round
//! trip, up to the largest p99.9, where the tail stops being readable). plotters draws it
//! with its SVG backend only: text stays SVG text, so no font library is needed.

use std::path::Path;

use plotters::prelude::*;

use super::{Bench, stats};

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("cannot draw the charts: {0}")]
    Draw(String),
    #[error("cannot write {path}: {}", crate::error::io_message(.source))]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn draw_err<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError::Draw(e.to_string())
}

/// One colour per configuration (matplotlib's first three, readable in print too).
const COLOURS: [RGBColor; 3] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
];

fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

/// Draws both charts and writes them to `path`.
pub fn write(b: &Bench, path: &Path) -> Result<(), PlotError> {
    let svg = render(b)?;
    std::fs::write(path, svg).map_err(|source| PlotError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// The SVG document.
pub fn render(b: &Bench) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (left, right) = root.split_horizontally(550);
        throughput(b, &left)?;
        latency(b, &right)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Bars of TCP throughput: for each test, one bar per configuration.
fn throughput(b: &Bench, area: &Area) -> Result<(), PlotError> {
    // (label, configuration index, summary) in drawing order.
    let mut bars = Vec::new();
    for key in ["tcp_1_stream", "tcp_4_streams"] {
        for (i, c) in b.configs.iter().enumerate() {
            if let Some(f) = c.figures.iter().find(|f| f.key == key) {
                bars.push((f.label.clone(), i, stats::summary(&f.samples)));
            }
        }
    }
    let top = bars
        .iter()
        .filter_map(|(_, _, s)| s.map(|s| s.q3))
        .fold(0.0f64, f64::max)
        .max(0.001)
        * 1.15;
    let n = bars.len() as i32;
    let mut chart = ChartBuilder::on(area)
        .caption("TCP throughput (median, IQR)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d((0..n.max(1)).into_segmented(), 0.0..top)
        .map_err(draw_err)?;
    let labels: Vec<String> = bars.iter().map(|(l, _, _)| l.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("Gbit/s")
        .x_labels(bars.len().max(1))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => labels.get(*i as usize).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(draw_err)?;
    for (i, c) in b.configs.iter().enumerate() {
        let mine: Vec<(i32, stats::Summary)> = (0..n)
            .zip(&bars)
            .filter(|(_, (_, ci, _))| *ci == i)
            .filter_map(|(x, (_, _, s))| s.map(|s| (x, s)))
            .collect();
        let style = colour(i).filled();
        chart
            .draw_series(mine.iter().map(|&(x, s)| {
                let mut r = Rectangle::new(
                    [
                        (SegmentValue::Exact(x), 0.0),
                        (SegmentValue::Exact(x + 1), s.median),
                    ],
                    style,
                );
                r.set_margin(0, 0, 8, 8);
                r
            }))
            .map_err(draw_err)?
            .label(c.name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], style));
        chart
            .draw_series(mine.iter().map(|&(x, s)| {
                ErrorBar::new_vertical(SegmentValue::CenterOf(x), s.q1, s.median, s.q3, BLACK, 10)
            }))
            .map_err(draw_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)
}

/// The latency CDF of each configuration, every round trip of every round.
fn latency(b: &Bench, area: &Area) -> Result<(), PlotError> {
    let right = b
        .configs
        .iter()
        .filter_map(|c| stats::percentiles(&c.rtts, &[99.9]).first().copied())
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption("Request/response latency (CDF)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..right, 0.0..1.0)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc("round trip (µs), up to the largest p99.9")
        .y_desc("fraction of round trips")
        .draw()
        .map_err(draw_err)?;
    for (i, c) in b.configs.iter().enumerate() {
        let points: Vec<(f64, f64)> = stats::cdf(&c.rtts, 400)
            .into_iter()
            .filter(|&(x, _)| x <= right)
            .collect();
        let style = colour(i).stroke_width(2);
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(draw_err)?
            .label(c.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_err)
}

#[cfg(test)]
mod tests {
    use super::super::{Config, Figure, measure};
    use super::*;

    fn bench() -> Bench {
        let end = |p: &str| measure::Endpoint {
            port: p.into(),
            netns: "ns".into(),
            addr: [10, 0, 0, 2].into(),
        };
        let fig = |key: &str, label: &str, s: Vec<f64>| Figure {
            key: key.into(),
            label: label.into(),
            unit: "Gbit/s",
            samples: s,
        };
        let config = |name: &str, k: f64| Config {
            name: name.into(),
            policy: "p".into(),
            client: end("a"),
            server: end("b"),
            figures: vec![
                fig(
                    "tcp_1_stream",
                    "TCP, 1 stream",
                    vec![10.0 * k, 11.0 * k, 12.0 * k],
                ),
                fig("tcp_4_streams", "TCP, 4 streams", vec![20.0 * k, 21.0 * k]),
            ],
            rtts: (1..=3000).map(|i| k * f64::from(i % 97 + 20)).collect(),
        };
        Bench {
            tool: measure::Tool::Own,
            network: None,
            rounds: 3,
            settled: true,
            secs: 1,
            round_trips: 1000,
            configs: vec![config("with policy", 1.0), config("without policy", 1.1)],
        }
    }

    #[test]
    fn renders_an_svg_with_both_charts() {
        let svg = render(&bench()).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in [
            "TCP throughput",
            "latency (CDF)",
            "with policy",
            "TCP, 4 streams",
        ] {
            assert!(svg.contains(text), "{text}");
        }
        assert!(roxmltree::Document::parse(&svg).is_ok());
    }
}
