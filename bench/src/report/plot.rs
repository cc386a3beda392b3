//! One bar chart per scenario (SVG, plotters): each system's figure, labelled with its value.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::compare::results::ScenarioResult;

const COLOURS: [RGBColor; 5] = [
    RGBColor(120, 120, 120),
    RGBColor(31, 119, 180),
    RGBColor(23, 190, 207),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
];

/// The scenario's figure per system.
pub(crate) fn figures(scenario: &ScenarioResult, path: &Path) -> anyhow::Result<()> {
    let rows: Vec<(&str, f64)> = scenario
        .rows
        .iter()
        .filter_map(|r| Some((r.system.as_str(), r.figure?)))
        .collect();
    let caption = format!(
        "{}. {} ({})",
        scenario.number, scenario.title, scenario.unit
    );
    bars(&caption, &scenario.unit, &rows, path)
}

/// The scenario's work per CPU-second of each proxy; false when no row has a CPU figure.
pub(crate) fn per_cpu(scenario: &ScenarioResult, path: &Path) -> anyhow::Result<bool> {
    let rows: Vec<(&str, f64)> = scenario
        .rows
        .iter()
        .filter_map(|r| Some((r.system.as_str(), r.per_proxy_cpu_s?)))
        .collect();
    if rows.is_empty() {
        return Ok(false);
    }
    let unit = format!(
        "{} per proxy CPU-second",
        scenario.unit.trim_end_matches("/s")
    );
    let caption = format!("{}. {}", scenario.number, unit);
    bars(&caption, &unit, &rows, path)?;
    Ok(true)
}

fn bars(caption: &str, unit: &str, rows: &[(&str, f64)], path: &Path) -> anyhow::Result<()> {
    let max = rows.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1.0);
    let n = i32::try_from(rows.len()).map_err(|_| anyhow!("too many systems"))?;
    let root = SVGBackend::new(path, (720, 380)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(72)
        .build_cartesian_2d((0..n.max(1)).into_segmented(), 0.0..max * 1.18)?;
    let names: Vec<String> = rows.iter().map(|(s, _)| (*s).to_owned()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(unit)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => usize::try_from(*i)
                .ok()
                .and_then(|i| names.get(i).cloned())
                .unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    for (i, (_, value)) in rows.iter().enumerate() {
        let i = i32::try_from(i).map_err(|_| anyhow!("too many systems"))?;
        let colour = COLOURS[usize::try_from(i).unwrap_or(0) % COLOURS.len()];
        let mut bar = Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), *value),
            ],
            colour.filled(),
        );
        bar.set_margin(0, 0, 18, 18);
        chart.draw_series(std::iter::once(bar))?;
        chart.draw_series(std::iter::once(Text::new(
            format_value(*value),
            (SegmentValue::CenterOf(i), value + max * 0.03),
            ("sans-serif", 13).into_font().color(&BLACK),
        )))?;
    }
    root.present()?;
    Ok(())
}

pub(crate) fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
