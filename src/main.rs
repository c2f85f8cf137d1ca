//! The `ferrotune` binary: everything is in the library; see `ferrotune --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    match ferrotune::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with its causes), never a backtrace: this is what users see.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
