//! Gzip'd tarballs of a directory: the adapter archive a job's results offer and the `hf`
//! export's download.

use std::path::Path;

/// `dir` as a gzip'd tarball at `path` whose entries sit under `top/`.
pub fn write_archive(path: &Path, dir: &Path, top: &str) -> std::io::Result<()> {
    let file = std::fs::File::create(path)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(top, dir)?;
    tar.into_inner().and_then(|gz| gz.finish()).map(|_| ())
}
