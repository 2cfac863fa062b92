//! PNG line charts for experiment reports and simulator studies (plotters, bitmap backend).

use std::path::Path;

use plotters::prelude::*;

use crate::TrainError;

/// One line of a chart: points `(x, y)` and, optionally, a band `(x, low, high)` drawn around it
/// (e.g. the spread over seeds).
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// The line's points, in drawing order.
    pub points: Vec<(f64, f64)>,
    /// A shaded band around the line (min and max over seeds), if any.
    pub band: Vec<(f64, f64, f64)>,
}

/// Axes and labels of a chart.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// Label of the x axis.
    pub x_label: &'a str,
    /// Label of the y axis.
    pub y_label: &'a str,
    /// Logarithmic x axis (non-positive x values are dropped).
    pub log_x: bool,
    /// Logarithmic y axis (non-positive y values are dropped).
    pub log_y: bool,
}

const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn finite_range(values: impl Iterator<Item = f64>, log: bool) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return None;
    }
    if log {
        let (lo, hi) = if lo == hi {
            (lo / 2.0, hi * 2.0)
        } else {
            (lo, hi)
        };
        Some((lo / 1.15, hi * 1.15))
    } else {
        let pad = if hi > lo { 0.04 * (hi - lo) } else { 0.5 };
        Some((lo - pad, hi + pad))
    }
}

/// Draws `series` into a 1000 x 640 PNG at `path`.
pub fn line_chart(path: &Path, chart: &Chart<'_>, series: &[Series]) -> Result<(), TrainError> {
    let err = |e: &dyn std::fmt::Display| {
        TrainError::Output(format!("cannot draw plot {}: {e}", path.display()))
    };
    let keep = |x: f64, y: f64| {
        x.is_finite() && y.is_finite() && (!chart.log_x || x > 0.0) && (!chart.log_y || y > 0.0)
    };
    let xs = series.iter().flat_map(|s| {
        s.points
            .iter()
            .map(|p| p.0)
            .chain(s.band.iter().map(|b| b.0))
    });
    let ys = series.iter().flat_map(|s| {
        s.points
            .iter()
            .map(|p| p.1)
            .chain(s.band.iter().flat_map(|b| [b.1, b.2]))
    });
    let (Some(xr), Some(yr)) = (finite_range(xs, chart.log_x), finite_range(ys, chart.log_y))
    else {
        return Err(err(&"no finite points to plot"));
    };
    let root = BitMapBackend::new(path, (1000, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(chart.title, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80);
    // The four axis combinations have different coordinate types; one macro draws them all.
    macro_rules! draw {
        ($x:expr, $y:expr) => {{
            let mut ctx = builder.build_cartesian_2d($x, $y).map_err(|e| err(&e))?;
            // Long numbers (bits, on log axes) in short scientific notation, so labels never overlap.
            let short = |v: &f64| {
                if v.abs() >= 1e4 {
                    format!("{v:.0e}")
                } else {
                    format!("{v}")
                }
            };
            ctx.configure_mesh()
                .x_labels(8)
                .x_label_formatter(&short)
                .y_label_formatter(&short)
                .x_desc(chart.x_label)
                .y_desc(chart.y_label)
                .label_style(("sans-serif", 15))
                .axis_desc_style(("sans-serif", 17))
                .draw()
                .map_err(|e| err(&e))?;
            for (k, s) in series.iter().enumerate() {
                let color = PALETTE[k % PALETTE.len()];
                let band: Vec<_> = s
                    .band
                    .iter()
                    .filter(|b| keep(b.0, b.1) && keep(b.0, b.2))
                    .collect();
                if band.len() >= 2 {
                    let mut outline: Vec<(f64, f64)> = band.iter().map(|b| (b.0, b.2)).collect();
                    outline.extend(band.iter().rev().map(|b| (b.0, b.1)));
                    ctx.draw_series(std::iter::once(Polygon::new(outline, color.mix(0.18))))
                        .map_err(|e| err(&e))?;
                }
                let points: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|p| keep(p.0, p.1))
                    .collect();
                ctx.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                    .map_err(|e| err(&e))?
                    .label(s.label.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
                    });
                if points.len() <= 40 {
                    ctx.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                        .map_err(|e| err(&e))?;
                }
            }
            ctx.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 15))
                // Decaying log-scale curves leave the upper right free, rising ones the lower.
                .position(if chart.log_y {
                    SeriesLabelPosition::UpperRight
                } else {
                    SeriesLabelPosition::LowerRight
                })
                .draw()
                .map_err(|e| err(&e))?;
        }};
    }
    match (chart.log_x, chart.log_y) {
        (false, false) => draw!(xr.0..xr.1, yr.0..yr.1),
        (true, false) => draw!((xr.0..xr.1).log_scale(), yr.0..yr.1),
        (false, true) => draw!(xr.0..xr.1, (yr.0..yr.1).log_scale()),
        (true, true) => draw!((xr.0..xr.1).log_scale(), (yr.0..yr.1).log_scale()),
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png_and_refuses_an_empty_chart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.png");
        let chart = Chart {
            title: "t",
            x_label: "x",
            y_label: "y",
            log_x: false,
            log_y: true,
        };
        let s = Series {
            label: "a".into(),
            points: vec![(0.0, 1.0), (1.0, 0.1), (2.0, 0.01)],
            band: vec![(0.0, 0.5, 2.0), (1.0, 0.05, 0.2), (2.0, 0.005, 0.02)],
        };
        line_chart(&path, &chart, &[s]).expect("plot");
        let bytes = std::fs::read(&path).expect("png written");
        assert_eq!(&bytes[1..4], b"PNG");
        let empty = Series {
            label: "e".into(),
            points: vec![(1.0, -1.0)],
            band: vec![],
        };
        let e = line_chart(&path, &chart, &[empty]).unwrap_err().to_string();
        assert!(e.contains("no finite points"), "{e}");
    }
}
