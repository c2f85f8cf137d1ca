//! The S3-compatible object store behind [`super::blobs::BlobStore`] when the server runs with
//! `--object-store s3://bucket/prefix`: every node reads and writes artifacts there, and keeps
//! a local copy of what it used (objects are immutable once written, so a cached copy never goes
//! stale). Endpoint, region and credentials come from the usual `AWS_*` variables
//! (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`); a plain
//! `http://` endpoint is allowed because the operator named it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use tokio::io::AsyncWriteExt;

use super::{Context, StoreError};

/// A bucket (and key prefix) on an S3-compatible server.
#[derive(Clone)]
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    url: String,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

/// Attach what the store was doing to an object-store error.
fn remote_ctx<T>(r: object_store::Result<T>, context: &'static str) -> Result<T, StoreError> {
    r.map_err(|source| StoreError::Remote {
        context,
        source: Box::new(source),
    })
}

impl Remote {
    /// Open `s3://bucket[/prefix]` with endpoint and credentials from the environment.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(StoreError::Config(format!(
                "--object-store must be an s3://bucket[/prefix] URL, got '{url}'"
            )));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::Config(format!(
                "--object-store '{url}' names no bucket"
            )));
        }
        // A few quick retries: an upload waits on this, and an outage should come back as an
        // error in seconds, not after the client's default three minutes.
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(15),
            ..RetryConfig::default()
        };
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry)
            .with_client_options(ClientOptions::new().with_connect_timeout(Duration::from_secs(5)));
        let endpoint = std::env::var("AWS_ENDPOINT_URL")
            .or_else(|_| std::env::var("AWS_ENDPOINT"))
            .ok();
        if let Some(endpoint) = endpoint {
            builder = builder
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint);
        }
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        let s3 = remote_ctx(builder.build(), "configuring the object store")?;
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(Self {
            store,
            url: url.to_owned(),
        })
    }

    /// The URL it was opened with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Fail fast when the bucket cannot be reached (a listing of one key).
    pub async fn check(&self) -> Result<(), StoreError> {
        let mut listing = self.store.list(Some(&ObjectPath::from(super::FILES)));
        match listing.next().await {
            Some(Err(e)) => remote_ctx(Err(e), "reaching the object store"),
            _ => Ok(()),
        }
    }

    /// Stream the local file `src` to `key` (in parts when large); the object appears whole
    /// or not at all.
    pub async fn upload(&self, key: &str, src: &Path) -> Result<(), StoreError> {
        let mut file = tokio::fs::File::open(src)
            .await
            .ctx("opening a file to upload")?;
        let mut writer = BufWriter::new(self.store.clone(), ObjectPath::from(key));
        let copied = tokio::io::copy(&mut file, &mut writer).await;
        let finished = match copied {
            Ok(_) => writer.shutdown().await,
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        };
        finished.map_err(|source| StoreError::Remote {
            context: "uploading to the object store",
            source: Box::new(source),
        })
    }

    /// Download `key` into the local file `dest` (written whole: to a sibling temporary file,
    /// then renamed). `Ok(false)` when there is no such object.
    pub async fn download(&self, key: &str, dest: &Path) -> Result<bool, StoreError> {
        let got = match self.store.get(&ObjectPath::from(key)).await {
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            other => remote_ctx(other, "downloading from the object store")?,
        };
        let dir = dest.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(dir)
            .await
            .ctx("creating the local cache")?;
        let temp = tempfile::NamedTempFile::new_in(dir).ctx("creating a download file")?;
        let mut out = tokio::fs::File::from_std(temp.reopen().ctx("opening a download file")?);
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = remote_ctx(chunk, "downloading from the object store")?;
            out.write_all(&chunk).await.ctx("writing a download")?;
        }
        out.flush().await.ctx("writing a download")?;
        temp.persist(dest)
            .map_err(|e| e.error)
            .ctx("moving a download into place")?;
        Ok(true)
    }

    /// Delete `key` (missing is fine).
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            other => remote_ctx(other, "deleting from the object store"),
        }
    }
}

impl Remote {
    /// Upload every file under the local directory `dir` to `prefix/<relative path>`.
    pub async fn upload_dir(&self, prefix: &str, dir: &Path) -> Result<(), StoreError> {
        for file in files_under(dir).ctx("listing a directory to upload")? {
            let rel = file.strip_prefix(dir).unwrap_or(&file);
            self.upload(&format!("{prefix}/{}", rel.to_string_lossy()), &file)
                .await?;
        }
        Ok(())
    }

    /// Download every object under `prefix/` into the local directory `dest` (replacing it:
    /// assembled beside it, then renamed into place). `Ok(false)` when there is none.
    pub async fn download_dir(&self, prefix: &str, dest: &Path) -> Result<bool, StoreError> {
        let base = ObjectPath::from(prefix);
        let objects: Vec<_> = self.store.list(Some(&base)).collect().await;
        let objects = objects
            .into_iter()
            .collect::<object_store::Result<Vec<_>>>();
        let objects = remote_ctx(objects, "listing the object store")?;
        if objects.is_empty() {
            return Ok(false);
        }
        let parent = dest.parent().unwrap_or(Path::new("."));
        tokio::fs::create_dir_all(parent)
            .await
            .ctx("creating the local cache")?;
        let staging = tempfile::TempDir::new_in(parent).ctx("creating a download folder")?;
        for meta in objects {
            let rel: Vec<_> = meta
                .location
                .prefix_match(&base)
                .into_iter()
                .flatten()
                .collect();
            let local = rel.iter().fold(staging.path().to_path_buf(), |p, part| {
                p.join(part.as_ref())
            });
            self.download(meta.location.as_ref(), &local).await?;
        }
        let _ = tokio::fs::remove_dir_all(dest).await;
        tokio::fs::rename(staging.keep(), dest)
            .await
            .ctx("moving a download into place")?;
        Ok(true)
    }

    /// Share the model directory `dir` as `prefix/` unless it is there: its files, then
    /// `config.json` last, so a node that finds `config.json` finds the whole model.
    pub async fn share_model(&self, prefix: &str, dir: &Path) -> Result<(), StoreError> {
        let config = format!("{prefix}/{}", crate::model_dir::CONFIG);
        if self.exists(&config).await? {
            return Ok(());
        }
        for file in files_under(dir).ctx("listing a model to share")? {
            let rel = file.strip_prefix(dir).unwrap_or(&file).to_string_lossy();
            if rel != crate::model_dir::CONFIG {
                self.upload(&format!("{prefix}/{rel}"), &file).await?;
            }
        }
        self.upload(&config, &dir.join(crate::model_dir::CONFIG))
            .await
    }

    /// Whether the object `key` exists.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.store.head(&ObjectPath::from(key)).await {
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            other => remote_ctx(other, "reading the object store").map(|_| true),
        }
    }

    /// Delete every object under `prefix/`.
    pub async fn delete_dir(&self, prefix: &str) -> Result<(), StoreError> {
        let base = ObjectPath::from(prefix);
        let objects: Vec<_> = self.store.list(Some(&base)).collect().await;
        for meta in objects {
            let meta = remote_ctx(meta, "listing the object store")?;
            self.delete(meta.location.as_ref()).await?;
        }
        Ok(())
    }

    /// The names of the objects directly under `prefix/` written `age` or longer ago.
    pub async fn names_older_than(
        &self,
        prefix: &str,
        age: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let age = chrono::TimeDelta::from_std(age).unwrap_or(chrono::TimeDelta::MAX);
        let cutoff = chrono::Utc::now() - age;
        let listing = self.listing(prefix).await?;
        Ok(listing
            .objects
            .into_iter()
            .filter(|meta| meta.last_modified <= cutoff)
            .filter_map(|meta| meta.location.filename().map(str::to_owned))
            .collect())
    }

    /// The names of the folders directly under `prefix/`.
    pub async fn folders(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let listing = self.listing(prefix).await?;
        Ok(listing
            .common_prefixes
            .into_iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect())
    }

    /// One level of `prefix/`: its objects and its folders.
    async fn listing(&self, prefix: &str) -> Result<object_store::ListResult, StoreError> {
        let base = ObjectPath::from(prefix);
        remote_ctx(
            self.store.list_with_delimiter(Some(&base)).await,
            "listing the object store",
        )
    }

    /// The small text object `key`, or `None`.
    pub async fn read_text(&self, key: &str) -> Result<Option<String>, StoreError> {
        let got = match self.store.get(&ObjectPath::from(key)).await {
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            other => remote_ctx(other, "reading from the object store")?,
        };
        let bytes = remote_ctx(got.bytes().await, "reading from the object store")?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// Write the small text object `key` (one atomic put).
    pub async fn write_text(&self, key: &str, text: &str) -> Result<(), StoreError> {
        let payload = object_store::PutPayload::from(text.as_bytes().to_vec());
        remote_ctx(
            self.store.put(&ObjectPath::from(key), payload).await,
            "writing to the object store",
        )
        .map(|_| ())
    }
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                out.push(entry.path());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_s3_urls_with_a_bucket_open() {
        let err = |url: &str| Remote::open(url).unwrap_err().to_string();
        assert!(err("http://bucket/prefix").contains("must be an s3://bucket[/prefix] URL"));
        assert!(err("s3://").contains("names no bucket"));
        assert!(err("s3:///prefix").contains("names no bucket"));
        // Opening contacts nothing: the start-up check does.
        let remote = Remote::open("s3://bucket/some/prefix/").unwrap();
        assert_eq!(remote.url(), "s3://bucket/some/prefix/");
    }

    #[test]
    fn files_under_lists_nested_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("top.json"), "{}").unwrap();
        std::fs::write(dir.path().join("a/b/deep.bin"), [1, 2]).unwrap();
        let mut found: Vec<_> = files_under(dir.path())
            .unwrap()
            .into_iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().to_path_buf())
            .collect();
        found.sort();
        assert_eq!(found, [Path::new("a/b/deep.bin"), Path::new("top.json")]);
    }
}
