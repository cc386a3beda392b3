//! docs/BENCHMARKS.md and its plots, written from one comparison run's JSON: a table per
//! scenario with each system's figure and its ratio to direct and to Cordon, the proxy CPU
//! time beside each throughput, the targets, the machine and the exact commands.

mod markdown;
mod plot;
pub mod targets;

use std::path::Path;

use anyhow::Context;

use crate::compare::results::Results;

/// Writes `doc` and, per scenario, an SVG of the figures and one of the work per proxy
/// CPU-second into `plots` (linked from `doc` by `plots_link`).
/// `analysis`, if given, is a hand-written Markdown file included verbatim: the profile
/// findings cannot be generated.
pub fn write(
    results: &Results,
    json_name: &str,
    doc: &Path,
    plots: &Path,
    plots_link: &str,
    analysis: Option<&str>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(plots).with_context(|| format!("creating {}", plots.display()))?;
    let mut images = Vec::new();
    for scenario in &results.scenarios {
        let file = format!("{}.svg", scenario.key);
        plot::figures(scenario, &plots.join(&file))?;
        let mut links = vec![format!("{plots_link}/{file}")];
        let file = format!("{}-per-cpu.svg", scenario.key);
        if plot::per_cpu(scenario, &plots.join(&file))? {
            links.push(format!("{plots_link}/{file}"));
        }
        images.push(links);
    }
    let mut text = markdown::render(results, json_name, &images, analysis);
    // The sandbox and tool figures come from other runs (`cordon-bench sandboxes`, `tools`):
    // kept as they are.
    if let Ok(old) = std::fs::read_to_string(doc) {
        for name in crate::doc::SECTIONS {
            if let Some(section) = crate::doc::section(&old, name) {
                text.push('\n');
                text.push_str(section);
                text.push('\n');
            }
        }
    }
    std::fs::write(doc, text).with_context(|| format!("writing {}", doc.display()))
}
