//! Result files of a finished run besides the metrics CSV ([`super::metrics`]): the loss curve as
//! SVG (the seed's `plot_loss`) and the final adapter as a `.tar.gz`.

use std::path::Path;

use plotters::prelude::*;

use super::TrainError;
use super::metrics::MetricsRow;

/// The training (and validation) loss against the step: each step's own loss faint, the logged
/// mean over each `logging_steps` window (the curve to read) drawn over it.
pub fn write_loss_svg(
    path: &Path,
    rows: &[MetricsRow],
    logging_steps: usize,
) -> Result<(), TrainError> {
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let max_step = rows.last().map(|r| r.step).unwrap_or(1).max(2) as f64;
        let step_loss = |r: &MetricsRow| r.step_loss.unwrap_or(r.train_loss);
        let losses = rows
            .iter()
            .flat_map(|r| [Some(step_loss(r)), Some(r.train_loss), r.valid_loss])
            .flatten();
        let top = losses.fold(0f32, f32::max).max(1e-3) as f64 * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(1f64..max_step, 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .draw()?;
        let faint = RGBColor(170, 190, 230);
        chart
            .draw_series(LineSeries::new(
                rows.iter()
                    .map(|r| (r.step as f64, f64::from(step_loss(r)))),
                faint,
            ))?
            .label("train loss, each step")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], faint));
        let last = rows.last().map(|r| r.step);
        chart
            .draw_series(LineSeries::new(
                rows.iter()
                    .filter(|r| r.step % logging_steps.max(1) == 0 || Some(r.step) == last)
                    .map(|r| (r.step as f64, f64::from(r.train_loss))),
                &BLUE,
            ))?
            .label(format!("train loss, mean of every {logging_steps} steps"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        let valid: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| r.valid_loss.map(|v| (r.step as f64, f64::from(v))))
            .collect();
        if !valid.is_empty() {
            chart
                .draw_series(LineSeries::new(valid, &RED))?
                .label("validation loss")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        }
        chart.configure_series_labels().border_style(BLACK).draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| TrainError::Invalid(format!("plotting the loss curve: {e}")))
}
