//! `faceflow report`: charts and an HTML page from a run's JSON Lines.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::ReportArgs;

pub fn report(args: ReportArgs) -> Result<ExitCode> {
    let page = faceflow::report::write(&args.input, &args.out)?;
    faceflow::say!("faceflow: report written to {}", page.display());
    Ok(ExitCode::SUCCESS)
}
