//! The dashboard's charts, drawn as SVG with `plotters`: one metric of one or more jobs against
//! the step, on a linear or log y axis. The route that serves them, behind the same key as `/v1`,
//! is `crate::api::charts`.

use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use serde_json::Value;

/// One line: a label and its `(step, value)` points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points in step order.
    pub points: Vec<(f64, f64)>,
}

/// The metrics a chart can show, each as the keys of metrics events it draws.
pub fn keys_of(metric: &str) -> Option<(&'static [(&'static str, &'static str)], &'static str)> {
    Some(match metric {
        "loss" => (
            &[("train_loss", "train"), ("valid_loss", "validation")],
            "loss",
        ),
        "accuracy" => (
            &[
                ("train_mean_token_accuracy", "train"),
                ("valid_mean_token_accuracy", "validation"),
            ],
            "token accuracy",
        ),
        "learning_rate" => (&[("learning_rate", "learning rate")], "learning rate"),
        "reward_margins" => (
            &[
                ("rewards/margins", "train"),
                ("eval_rewards/margins", "validation"),
            ],
            "reward margin",
        ),
        "reward_accuracy" => (
            &[
                ("rewards/accuracies", "train"),
                ("eval_rewards/accuracies", "validation"),
            ],
            "reward accuracy",
        ),
        "tokens_per_second" => (&[("tokens_per_second", "tokens/s")], "tokens/s"),
        _ => return None,
    })
}

/// The series of one job's metrics events for `keys`; `prefix` names the job when several share
/// the chart.
pub fn series_of(events: &[Value], keys: &[(&str, &str)], prefix: Option<&str>) -> Vec<Series> {
    keys.iter()
        .map(|(key, label)| Series {
            label: match prefix {
                Some(p) => format!("{p} {label}"),
                None => (*label).to_owned(),
            },
            points: events
                .iter()
                .filter_map(|e| Some((e.get("step")?.as_f64()?, e.get(*key)?.as_f64()?)))
                .filter(|(_, v)| v.is_finite())
                .collect(),
        })
        .filter(|s| !s.points.is_empty())
        .collect()
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// `plotters` failed to draw a chart (its message).
#[derive(Debug, thiserror::Error)]
#[error("drawing the chart: {0}")]
pub struct ChartError(String);

fn chart_err(e: impl std::fmt::Display) -> ChartError {
    ChartError(e.to_string())
}

/// Draw `series` as an SVG document; `log` puts the y axis on a log scale (values ≤ 0 dropped).
pub fn render_svg(series: &[Series], y_label: &str, log: bool) -> Result<String, ChartError> {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let max_step = points().map(|p| p.0).fold(1.0, f64::max).max(2.0);
    let values: Vec<f64> = points().map(|p| p.1).filter(|v| !log || *v > 0.0).collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (720, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        if values.is_empty() {
            root.titled("no points yet", ("sans-serif", 18))
                .map_err(chart_err)?;
        } else if log {
            let range = (lo * 0.9)..(hi * 1.1);
            draw(&root, series, y_label, max_step, range.log_scale(), true)?;
        } else {
            let pad = ((hi - lo) * 0.05).max(1e-9);
            let range = (lo.min(0.0) - if lo < 0.0 { pad } else { 0.0 })..(hi + pad);
            draw(&root, series, y_label, max_step, range, false)?;
        }
        root.present().map_err(chart_err)?;
    }
    Ok(svg)
}

fn draw<Y>(
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    series: &[Series],
    y_label: &str,
    max_step: f64,
    y: Y,
    log: bool,
) -> Result<(), ChartError>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(root)
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(1f64..max_step, y)
        .map_err(chart_err)?;
    chart
        .configure_mesh()
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| tick(*v))
        .x_desc("step")
        .y_desc(if log {
            format!("{y_label} (log)")
        } else {
            y_label.to_owned()
        })
        .draw()
        .map_err(chart_err)?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(_, v)| !log || *v > 0.0)
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(chart_err)?
            .label(s.label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 2, color.filled())))
            .map_err(chart_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(chart_err)
}

/// A y-axis label: three significant figures, scientific notation far from 1.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn series_take_the_keys_they_name_and_skip_missing_points() {
        let events = vec![
            json!({"step": 1, "train_loss": 2.0}),
            json!({"step": 2, "train_loss": 1.5, "valid_loss": 1.8}),
        ];
        let (keys, _) = keys_of("loss").unwrap();
        let s = series_of(&events, keys, Some("a"));
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].label, "a train");
        assert_eq!(s[0].points, vec![(1.0, 2.0), (2.0, 1.5)]);
        assert_eq!(s[1].points, vec![(2.0, 1.8)]);
        assert!(series_of(&events, keys_of("learning_rate").unwrap().0, None).is_empty());
        assert!(keys_of("bogus").is_none());
    }

    #[test]
    fn charts_render_on_both_scales_and_with_nothing_to_draw() {
        let s = vec![Series {
            label: "train".into(),
            points: vec![(1.0, 2.0), (2.0, 0.5), (3.0, 0.0)],
        }];
        let linear = render_svg(&s, "loss", false).unwrap();
        assert!(linear.starts_with("<svg") && linear.contains("train"));
        let log = render_svg(&s, "loss", true).unwrap();
        assert!(log.contains("loss (log)"));
        assert!(
            render_svg(&[], "loss", true)
                .unwrap()
                .contains("no points yet")
        );
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(1.0), "1");
        assert_eq!(tick(0.0), "0");
        assert_eq!(tick(12345.0), "12345");
        assert_eq!(tick(1e-4), "1.0e-4");
        assert_eq!(tick(0.00123), "0.001");
    }
}
