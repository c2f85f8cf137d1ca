//! The `ferrotune` binary: everything is in the library; see `ferrotune --help`.

fn main() -> anyhow::Result<()> {
    ferrotune::cli::run()
}
