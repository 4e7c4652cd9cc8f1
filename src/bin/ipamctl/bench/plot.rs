//! `--plot FILE.svg`: the latency percentile curve of each scenario (one curve per scenario
//! with --compare), x on a "nines" scale (50%, 90%, 99%, 99.9%, ...) so that the tail gets as
//! much room as the median.

use plotters::prelude::*;

use super::stats::Recorder;

/// x position of a quantile: -log10(1 - q), so 0.9 -> 1, 0.99 -> 2, 0.999 -> 3.
fn nines(quantile: f64) -> f64 {
    -(1.0 - quantile).max(1e-9).log10()
}

/// The percentile curve of one recorder: (nines, latency ms) points up to its resolution.
pub fn curve(recorder: &Recorder) -> Vec<(f64, f64)> {
    let n = recorder.latencies_us.len().max(1) as f64;
    // Beyond 1/n there is no more information in the data.
    let max_nines = nines(1.0 - 1.0 / n).min(5.0);
    (0..=200)
        .map(|step| {
            let x = max_nines * f64::from(step) / 200.0;
            let quantile = 1.0 - 10f64.powf(-x);
            (x, recorder.latencies_us.value_at_quantile(quantile) as f64 / 1000.0)
        })
        .collect()
}

pub fn draw(path: &std::path::Path, series: &[(String, Recorder)]) -> Result<(), String> {
    let curves: Vec<(String, Vec<(f64, f64)>)> = series.iter().map(|(name, r)| (name.clone(), curve(r))).collect();
    let max_x = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let max_y = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1))
        .fold(0.001, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    let fail = |e: &dyn std::fmt::Display| format!("plotting {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("latency by percentile", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_x, 0f64..max_y)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| format!("{}%", 100.0 - 100.0 * 10f64.powf(-x)))
        .draw()
        .map_err(|e| fail(&e))?;
    for (index, (name, points)) in curves.into_iter().enumerate() {
        let color = Palette99::pick(index).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| fail(&e))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_curve_rises_with_the_percentile_and_the_svg_is_written() {
        let mut recorder = Recorder::new();
        for ms in 1..=1000u64 {
            recorder.record_ok(Duration::from_micros(ms * 10), 1);
        }
        let points = curve(&recorder);
        assert!(points.windows(2).all(|w| w[0].1 <= w[1].1));
        assert!((points[0].1 - 0.01).abs() < 0.001, "{:?}", points[0]);
        assert!(points.last().unwrap().1 > 9.0);
        let file = tempfile::NamedTempFile::new().unwrap();
        draw(file.path(), &[("a".into(), recorder)]).unwrap();
        let svg = std::fs::read_to_string(file.path()).unwrap();
        assert!(svg.contains("<svg") && svg.contains("latency by percentile"));
    }
}
