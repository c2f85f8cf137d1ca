//! Exports as shared, cached artifacts. An export of a model in one format and quantization is
//! built once, into `<data dir>/exports/<model key>/`, and every later or concurrent request for
//! it streams that file: requests for an export being built wait for that build instead of
//! starting their own. Builds are bounded (`max_builds` at a time); a request that would start
//! another gets [`CacheError::Busy`] (a 429 with `Retry-After`). The model's exports are removed
//! with the model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::{ExportError, ExportFormat, ExportRequest};

/// Why an export could not be had.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// As many exports as allowed are being built; try again later.
    #[error("{0} export(s) are being built; try again shortly")]
    Busy(usize),
    /// The export failed.
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// The export artifacts of one node.
#[derive(Debug)]
pub struct ExportCache {
    dir: PathBuf,
    max_builds: usize,
    builds: Arc<Semaphore>,
    /// One lock per artifact path: the build of an artifact, and those waiting for it.
    building: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl ExportCache {
    /// The cache under `data_dir/exports`, building at most `max_builds` exports at a time. Left
    /// over partial files (a build killed mid-way) are removed.
    pub fn new(data_dir: &Path, max_builds: usize) -> Self {
        let dir = data_dir.join("exports");
        remove_partials(&dir);
        let max_builds = max_builds.max(1);
        Self {
            dir,
            max_builds,
            builds: Arc::new(Semaphore::new(max_builds)),
            building: Mutex::new(HashMap::new()),
        }
    }

    /// The folder of `model`'s exports.
    fn model_dir(&self, model: &str) -> PathBuf {
        let digest = Sha256::digest(model.as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        self.dir.join(hex)
    }

    /// Where the export `req` is kept.
    pub fn path_of(&self, req: &ExportRequest) -> PathBuf {
        let format = match req.format {
            ExportFormat::Gguf => "gguf",
            ExportFormat::Hf => "tar.gz",
        };
        let quant = clap::ValueEnum::to_possible_value(&req.quant)
            .map(|v| v.get_name().to_owned())
            .unwrap_or_else(|| format!("{:?}", req.quant));
        self.model_dir(&req.name).join(format!("{quant}.{format}"))
    }

    /// The artifact of `req`: the kept file, the one a concurrent request is building, or one
    /// built now.
    pub async fn get(&self, req: ExportRequest) -> Result<PathBuf, CacheError> {
        let path = self.path_of(&req);
        if path.exists() {
            return Ok(path);
        }
        let lock = {
            let mut building = self.building.lock().unwrap_or_else(|e| e.into_inner());
            building.entry(path.clone()).or_default().clone()
        };
        let _building = lock.lock().await;
        if path.exists() {
            return Ok(path);
        }
        let _permit = self
            .builds
            .clone()
            .try_acquire_owned()
            .map_err(|_| CacheError::Busy(self.max_builds))?;
        let out = path.clone();
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || build(&req, &out))
            .await
            .map_err(|e| ExportError::Input(format!("the export build stopped: {e}")))??;
        tracing::info!(file = %path.display(), seconds = started.elapsed().as_secs_f64(), "export built");
        Ok(path)
    }

    /// Remove the exports of `model` (when the model is deleted).
    pub fn remove_model(&self, model: &str) {
        let dir = self.model_dir(model);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %dir.display(), error = %e, "removing a model's exports failed");
        }
    }
}

/// Build `req` into `out`: the GGUF file itself, or the Hugging Face directory packed as a
/// `.tar.gz`; written beside `out` and renamed into place, so `out` is whole or absent.
fn build(req: &ExportRequest, out: &Path) -> Result<(), ExportError> {
    let write_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| ExportError::Write { path, source }
    };
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(write_err(parent))?;
    let partial = out.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_file(&partial);
    let built = match req.format {
        ExportFormat::Gguf => super::export(req, &partial).map(|_| ()),
        ExportFormat::Hf => {
            let dir = out.with_extension("partial-dir");
            let _ = std::fs::remove_dir_all(&dir);
            let packed = super::export(req, &dir).and_then(|_| {
                super::archive::write_archive(&partial, &dir, "model").map_err(write_err(&partial))
            });
            let _ = std::fs::remove_dir_all(&dir);
            packed
        }
    };
    let placed = built.and_then(|()| std::fs::rename(&partial, out).map_err(write_err(out)));
    if placed.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    placed
}

/// Remove `*.partial*` files and folders under `dir` (one level of model folders).
fn remove_partials(dir: &Path) {
    let Ok(models) = std::fs::read_dir(dir) else {
        return;
    };
    for model in models.flatten() {
        let Ok(files) = std::fs::read_dir(model.path()) else {
            continue;
        };
        for f in files.flatten() {
            if f.file_name().to_string_lossy().contains(".partial") {
                let p = f.path();
                let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::Quant;

    fn request(name: &str, format: ExportFormat, quant: Quant) -> ExportRequest {
        ExportRequest {
            base_dir: PathBuf::from("/nowhere"),
            adapter_dir: None,
            format,
            quant,
            name: name.to_owned(),
        }
    }

    #[test]
    fn each_model_format_and_quant_has_its_own_file_and_a_model_its_own_folder() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ExportCache::new(dir.path(), 1);
        let a = cache.path_of(&request("ft:m:o::abc", ExportFormat::Gguf, Quant::Q8_0));
        let b = cache.path_of(&request("ft:m:o::abc", ExportFormat::Hf, Quant::Bf16));
        let c = cache.path_of(&request("ft:m:o::xyz", ExportFormat::Gguf, Quant::Q8_0));
        assert!(
            a.ends_with("q8_0.gguf") && b.ends_with("bf16.tar.gz"),
            "{a:?} {b:?}"
        );
        assert_eq!(a.parent(), b.parent());
        assert_ne!(a.parent(), c.parent());
        std::fs::create_dir_all(a.parent().unwrap()).unwrap();
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(a.with_extension("partial-1"), b"half").unwrap();
        // A new cache (a restart) clears partial files and keeps finished ones.
        let cache = ExportCache::new(dir.path(), 1);
        assert!(a.exists() && !a.with_extension("partial-1").exists());
        cache.remove_model("ft:m:o::abc");
        assert!(!a.exists());
    }

    #[tokio::test]
    async fn a_build_that_fails_leaves_nothing_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ExportCache::new(dir.path(), 1);
        let req = request("base", ExportFormat::Gguf, Quant::F16);
        let path = cache.path_of(&req);
        let err = cache.get(req).await.unwrap_err();
        assert!(matches!(err, CacheError::Export(_)), "{err}");
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn a_kept_export_needs_no_build_and_a_new_one_waits_for_a_free_build() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ExportCache::new(dir.path(), 1);
        let kept = request("kept", ExportFormat::Gguf, Quant::F16);
        let path = cache.path_of(&kept);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"gguf").unwrap();
        // Every build slot taken (another export is being built).
        let _running = cache.builds.clone().try_acquire_owned().unwrap();
        assert_eq!(cache.get(kept).await.unwrap(), path);
        let new = request("new", ExportFormat::Gguf, Quant::F16);
        assert!(matches!(cache.get(new).await, Err(CacheError::Busy(1))));
    }

    #[tokio::test]
    async fn a_request_for_an_export_being_built_waits_for_that_build() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Arc::new(ExportCache::new(dir.path(), 1));
        // A build of this export in progress: its lock held.
        let req = request("shared", ExportFormat::Hf, Quant::Bf16);
        let path = cache.path_of(&req);
        let lock = {
            let mut building = cache.building.lock().unwrap();
            building.entry(path.clone()).or_default().clone()
        };
        let held = lock.lock().await;
        let waiting = tokio::spawn({
            let cache = cache.clone();
            async move { cache.get(req).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "it must wait for the running build");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"tar").unwrap();
        drop(held);
        // It finds the finished file (its own build would fail: /nowhere is no model).
        assert_eq!(waiting.await.unwrap().unwrap(), path);
    }
}
