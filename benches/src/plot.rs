//! The latency distribution of a fan-out run as an SVG plot: one line per server (node,
//! floor, cluster), latency against percentile on the "nines" scale (50, 90, 99, 99.9,
//! 99.99 at equal steps), both axes logarithmic, as HdrHistogram's plots are drawn.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use crate::fanout::Outcome;

/// The deepest percentile drawn: 99.99.
const NINES: f64 = 4.0;

/// Writes the plot of `outcomes` to `path`, titled `title`.
///
/// # Errors
/// The file cannot be written.
pub fn latency(path: &Path, title: &str, outcomes: &[&Outcome]) -> anyhow::Result<()> {
    let curves: Vec<(&str, Vec<(f64, f64)>)> = outcomes
        .iter()
        .map(|outcome| {
            let points = (0..=(NINES * 50.0) as u32)
                .map(|step| {
                    let nines = f64::from(step) / 50.0;
                    let quantile = 1.0 - 10f64.powf(-nines);
                    (nines, outcome.latency_us.value_at_quantile(quantile).max(1) as f64)
                })
                .collect();
            (outcome.target, points)
        })
        .collect();
    let top = curves.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y)).fold(10.0, f64::max);
    let bottom = curves.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y)).fold(top, f64::min);

    let area = SVGBackend::new(path, (900, 540)).into_drawing_area();
    area.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&area)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..NINES, ((bottom / 1.5)..(top * 1.5)).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (µs)")
        .x_labels(5)
        .x_label_formatter(&|nines| percentile_label(*nines))
        .y_label_formatter(&|us| format!("{us:.0}"))
        .draw()?;
    for (i, (target, points)) in curves.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(target)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    area.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// 0 → "0", 1 → "90", 2 → "99", 3 → "99.9".
fn percentile_label(nines: f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-nines));
    let decimals = (nines.round() as usize).saturating_sub(2);
    format!("{percent:.decimals$}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_read_as_nines() {
        let labels: Vec<String> = (0..5).map(|n| super::percentile_label(f64::from(n))).collect();
        assert_eq!(labels, ["0", "90", "99", "99.9", "99.99"]);
    }
}
