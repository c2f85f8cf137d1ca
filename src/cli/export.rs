//! `ferrotune model export MODEL OUT`: a fine-tuned model (by its `ft:` name, looked up in the
//! server's database), an adapter or checkpoint directory, or a base model, merged and written
//! as a Hugging Face directory or a GGUF file.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::config::{ModelSettings, StorageSettings};
use crate::domain::organization::OrganizationId;
use crate::export::{ExportFormat, ExportRequest, Quant};
use crate::startup::{Database, prepare_base_model};

/// Arguments of `model export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// `ft:…` (a fine-tuned model or checkpoint of the server at `--data-dir`/`DATABASE_URL`), a
    /// PEFT adapter directory, or a base model (as `--base-model` takes).
    pub source: String,
    /// The directory or `.gguf` file to create (must not exist).
    pub out: PathBuf,
    /// What to write.
    #[arg(long, value_enum, default_value = "hf")]
    pub format: ExportFormat,
    /// Weight storage (default: bf16 for hf, f16 for gguf).
    #[arg(long, value_enum)]
    pub quant: Option<Quant>,
    /// Where `ft:` names are looked up.
    #[command(flatten)]
    pub storage: StorageSettings,
    /// The base model the adapter was trained on.
    #[command(flatten)]
    pub model: ModelSettings,
}

/// Run the export and say what was written.
pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
    let mut args = args;
    args.storage.data_dir = crate::startup::prepare_data_dir(&args.storage)?;
    let data_dir = args.storage.data_dir.clone();
    let adapter = match args.source.as_str() {
        s if s.starts_with("ft:") => Some(lookup(&args.storage, s).await?),
        s if Path::new(s).join("adapter_config.json").exists() => Some(PathBuf::from(s)),
        _ => None,
    };
    let (name, base_dir) = match &adapter {
        Some(_) => prepare_base_model(&args.model, &data_dir)?,
        // No adapter: the source is the base model itself.
        None => {
            let mut model = args.model.clone();
            model.base_model = Some(PathBuf::from(&args.source));
            prepare_base_model(&model, &data_dir)?
        }
    };
    if let (Some(dir), true) = (&adapter, args.source.starts_with("ft:")) {
        let trained_on = args.source.split(':').nth(1).unwrap_or_default();
        if trained_on != name {
            bail!(
                "{} was fine-tuned from '{trained_on}', but the base model here is '{name}'; \
                 pass --base-model for it (adapter: {})",
                args.source,
                dir.display()
            );
        }
    }
    let req = ExportRequest {
        base_dir,
        adapter_dir: adapter,
        format: args.format,
        quant: args.quant.unwrap_or(Quant::default_for(args.format)),
        name: args.source.clone(),
    };
    let out = args.out.clone();
    let bytes = tokio::task::spawn_blocking(move || crate::export::export(&req, &out)).await??;
    println!(
        "exported {} to {} ({:.1} MB)",
        args.source,
        args.out.display(),
        bytes as f64 / 1e6
    );
    Ok(())
}

/// The adapter directory of a fine-tuned model or checkpoint name.
async fn lookup(storage: &StorageSettings, name: &str) -> anyhow::Result<PathBuf> {
    let org = name
        .split(':')
        .nth(2)
        .and_then(OrganizationId::from_model_name_part)
        .with_context(|| format!("'{name}' is not a fine-tuned model name (ft:base:org-…:…)"))?;
    let db = Database::open(storage).await?;
    let row = db.store.get_model(&org, name).await;
    db.close().await;
    let row = row?.with_context(|| format!("no fine-tuned model or checkpoint '{name}'"))?;
    // Fetched from the object store when the model was trained on another node.
    let blobs = crate::startup::open_blobs(storage).await?;
    Ok(blobs.local_dir(&row.path).await?)
}
