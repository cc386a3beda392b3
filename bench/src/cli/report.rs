//! `cordon-bench report`: docs/BENCHMARKS.md and its plots from a results file.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use cordon_bench::compare::results::Results;

#[derive(Debug, Args)]
pub(crate) struct ReportArgs {
    /// A results file written by `cordon-bench compare`.
    results: PathBuf,
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    doc: PathBuf,
    /// Where the SVG plots go.
    #[arg(long, default_value = "docs/bench")]
    plots: PathBuf,
    /// How the document links to the plots directory.
    #[arg(long, default_value = "bench")]
    plots_link: String,
    /// Hand-written Markdown (profile findings) included after the targets.
    #[arg(long, default_value = "bench/analysis.md")]
    analysis: PathBuf,
}

impl ReportArgs {
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(&self.results)
            .with_context(|| format!("reading {}", self.results.display()))?;
        let results: Results = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a cordon-bench compare result",
                self.results.display()
            )
        })?;
        let analysis = std::fs::read_to_string(&self.analysis).ok();
        let name = self
            .results
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("results.json");
        cordon_bench::report::write(
            &results,
            name,
            &self.doc,
            &self.plots,
            &self.plots_link,
            analysis.as_deref(),
        )?;
        println!("{}", self.doc.display());
        Ok(())
    }
}
