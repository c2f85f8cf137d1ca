//! Training a job's ensemble (`ensemble_size` K > 1): K runs of the job's trainer, member k in
//! `{output}/member-k` with seed `seed + k - 1` (so member 1 trains exactly as a single job
//! would), optionally on a bootstrap sample of the training file. The members' steps are numbered
//! one after another, so the job's events, loss curve and checkpoints read as one run of
//! K × steps. A finished member leaves `outcome.json`; a resumed job skips it. With an object
//! store the worker shares a finished member (adapter, result files, then the record) before the
//! next one starts, so a job resumed on another worker skips it too.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::trainer::{
    Progress, StopSignal, Trainer, TrainingFailure, TrainingOutcome, TrainingRequest, Update,
};
use crate::domain::job::JobError;
use crate::store::blobs::BlobStore;
use crate::store::{Context, StoreError};
use crate::train::rng;

/// The record a finished member leaves in its directory.
const RECORD: &str = "outcome.json";

/// What a finished member left, as its record says: paths relative to the member's directory
/// (records written before that hold absolute ones, which resolve to themselves).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MemberOutcome {
    steps: usize,
    trained_tokens: i64,
    adapter_dir: PathBuf,
    result_files: Vec<(PathBuf, String)>,
}

impl MemberOutcome {
    /// Rewrite every path with `f`.
    fn map_paths(mut self, f: impl Fn(&Path) -> PathBuf) -> Self {
        self.adapter_dir = f(&self.adapter_dir);
        for (path, _) in &mut self.result_files {
            *path = f(path);
        }
        self
    }

    /// The record read from `dir`, paths resolved under it; `None` when there is none.
    fn read(dir: &Path) -> Option<Self> {
        let bytes = std::fs::read(dir.join(RECORD)).ok()?;
        Self::parse(&bytes, dir)
    }

    /// A record's bytes, paths resolved under `dir`.
    fn parse(bytes: &[u8], dir: &Path) -> Option<Self> {
        let m: Self = serde_json::from_slice(bytes).ok()?;
        Some(m.map_paths(|p| dir.join(p)))
    }

    /// Write the record into `dir`, paths relative to it.
    fn write(&self, dir: &Path) -> std::io::Result<()> {
        let relative = self
            .clone()
            .map_paths(|p| p.strip_prefix(dir).unwrap_or(p).into());
        std::fs::write(dir.join(RECORD), serde_json::to_vec(&relative)?)
    }
}

/// Share the finished member in `dir` for the worker that may resume the job: its adapter and
/// result files, then its record (so a worker that finds the record finds the rest). Nothing
/// without an object store.
pub(super) async fn share_member(blobs: &BlobStore, dir: &Path) -> Result<(), StoreError> {
    if blobs.remote().is_none() {
        return Ok(());
    }
    let Some(m) = MemberOutcome::read(dir) else {
        return Ok(());
    };
    blobs.share_dir(&m.adapter_dir).await?;
    for (path, _) in &m.result_files {
        blobs.share_file(path).await?;
    }
    blobs.share_file(&dir.join(RECORD)).await
}

/// Fetch the members of the ensemble in `output_dir` that another worker finished and shared,
/// so that this run skips them. Returns which members (1-based) are finished here now.
pub(super) async fn fetch_members(
    blobs: &BlobStore,
    output_dir: &Path,
    count: u32,
) -> Result<Vec<u32>, StoreError> {
    let mut finished = Vec::new();
    for k in 1..=count {
        let dir = output_dir.join(format!("member-{k}"));
        if MemberOutcome::read(&dir).is_none() {
            let Some(text) = blobs.read_shared(&dir.join(RECORD)).await? else {
                continue;
            };
            let Some(m) = MemberOutcome::parse(text.as_bytes(), &dir) else {
                continue;
            };
            let adapter = blobs.local_dir(&blobs.stored_path(&m.adapter_dir)).await?;
            let mut whole = tokio::fs::try_exists(&adapter).await.unwrap_or(false);
            for (path, _) in &m.result_files {
                whole &= blobs.fetch_file(path).await?;
            }
            if !whole {
                continue; // shared in part (not by this code): the member trains again
            }
            // The record last: a fetch cut short leaves the member to train again.
            tokio::fs::write(dir.join(RECORD), text)
                .await
                .ctx("recording a fetched ensemble member")?;
        }
        finished.push(k);
    }
    Ok(finished)
}

fn io_failure(what: &str, e: impl std::fmt::Display) -> TrainingFailure {
    TrainingFailure::Failed(JobError::new(
        "training_failed",
        format!("Training the ensemble failed {what}: {e}"),
    ))
}

/// Write a bootstrap sample of `source`'s records to `dest` (as many records, drawn with
/// replacement, the same for a given seed and member).
fn bootstrap(source: &Path, dest: &Path, seed: u64, member: usize) -> std::io::Result<()> {
    let lines: Vec<String> = std::io::BufReader::new(std::fs::File::open(source)?)
        .lines()
        .filter(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
        .collect::<Result<_, _>>()?;
    let mut draw = rng::stream(seed, rng::purpose::BOOTSTRAP, member as u64);
    let partial = dest.with_extension("partial");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&partial)?);
    for _ in 0..lines.len() {
        writeln!(out, "{}", lines[draw.gen_range(0..lines.len())])?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(partial, dest)
}

/// Step numbering across members: member `index` (0-based) of `count` is offset by the steps of
/// the members before it.
struct Numbering {
    index: usize,
    count: usize,
    /// Steps of one member, once a report has said.
    total: Mutex<Option<usize>>,
    /// Steps this member has done.
    done: Mutex<usize>,
}

impl Numbering {
    fn total(&self, total: usize) -> usize {
        *self.total.lock().expect("numbering lock") = Some(total);
        total * self.count
    }

    fn step(&self, step: usize) -> usize {
        let total = self.total.lock().expect("numbering lock").unwrap_or(0);
        step + self.index * total
    }

    fn rewrite(&self, update: Update) -> Update {
        let label = format!("Member {}/{}: ", self.index + 1, self.count);
        match update {
            Update::Message(m) => Update::Message(format!("{label}{m}")),
            Update::Resumed { step, total } => {
                let total = self.total(total);
                Update::Resumed {
                    step: self.step(step),
                    total,
                }
            }
            Update::Metrics {
                mut row,
                total_steps,
            } => {
                let total_steps = self.total(total_steps);
                row.step = self.step(row.step);
                Update::Metrics { row, total_steps }
            }
            Update::Step {
                step,
                total,
                loss,
                tokens,
            } => {
                *self.done.lock().expect("numbering lock") = step;
                let total = self.total(total);
                Update::Step {
                    step: self.step(step),
                    total,
                    loss,
                    tokens,
                }
            }
            Update::Estimate(secs) => {
                // This member's remaining seconds, plus as long again per member still to come.
                let per = self.total.lock().expect("numbering lock").unwrap_or(0);
                let done = *self.done.lock().expect("numbering lock");
                let per_step = secs / per.saturating_sub(done).max(1) as f64;
                let later = (self.count - self.index - 1) * per;
                Update::Estimate(secs + per_step * later as f64)
            }
            Update::Checkpoint {
                step,
                dir,
                mut metrics,
            } => {
                metrics.step = self.step(metrics.step);
                Update::Checkpoint {
                    step: self.step(step),
                    dir,
                    metrics,
                }
            }
            Update::Pruned(step) => Update::Pruned(self.step(step)),
            resolved @ Update::Resolved(_) => resolved,
            saved @ Update::StateSaved(_) => saved,
            member @ Update::MemberFinished(_) => member,
        }
    }
}

/// Train every member of `request`'s ensemble with `trainer`.
pub fn train_members(
    trainer: &dyn Trainer,
    request: &TrainingRequest,
    progress: &Progress,
    stop: &StopSignal,
) -> Result<TrainingOutcome, TrainingFailure> {
    let count = request.hyperparameters.ensemble.size.max(1) as usize;
    let mut outcome = TrainingOutcome::default();
    let mut steps_before = 0;
    for index in 0..count {
        let dir = request.output_dir.join(format!("member-{}", index + 1));
        let member = match MemberOutcome::read(&dir) {
            Some(m) => m,
            None => {
                if stop.is_cancelled() {
                    return Err(TrainingFailure::Stopped { step: steps_before });
                }
                std::fs::create_dir_all(&dir)
                    .map_err(|e| io_failure("creating its directory", e))?;
                let mut one = request.clone();
                one.output_dir = dir.clone();
                one.seed = request.seed.wrapping_add(index as i64);
                if request.hyperparameters.ensemble.bootstrap {
                    let sample = dir.join("bootstrap.jsonl");
                    if !sample.exists() {
                        bootstrap(&request.training_file, &sample, request.seed as u64, index)
                            .map_err(|e| io_failure("sampling the training file", e))?;
                    }
                    one.training_file = sample;
                }
                let numbering = Arc::new(Numbering {
                    index,
                    count,
                    total: Mutex::new(None),
                    done: Mutex::new(0),
                });
                let rewrite = numbering.clone();
                let member_progress = progress.rewritten(move |u| rewrite.rewrite(u));
                let done = trainer
                    .train(one, &member_progress, stop)
                    .map_err(|e| match e {
                        TrainingFailure::Stopped { step } => TrainingFailure::Stopped {
                            step: numbering.step(step),
                        },
                        failed => failed,
                    })?;
                let m = MemberOutcome {
                    steps: *numbering.done.lock().expect("numbering lock"),
                    trained_tokens: done.trained_tokens,
                    adapter_dir: done.adapter_dir,
                    result_files: done.result_files,
                };
                m.write(&dir)
                    .map_err(|e| io_failure("recording a member", e))?;
                progress.send(Update::MemberFinished(dir.clone()));
                m
            }
        };
        steps_before += member.steps;
        outcome.trained_tokens += member.trained_tokens;
        outcome.result_files.extend(
            member
                .result_files
                .into_iter()
                .map(|(path, name)| (path, format!("member-{}-{name}", index + 1))),
        );
        if index == 0 {
            outcome.adapter_dir = member.adapter_dir.clone();
        }
        outcome.members.push(member.adapter_dir);
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bootstrap_sample_has_as_many_records_drawn_from_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("train.jsonl");
        let records: Vec<String> = (0..50).map(|i| format!("{{\"i\": {i}}}")).collect();
        std::fs::write(&source, records.join("\n\n") + "\n").unwrap();
        let (a, b, again) = (
            dir.path().join("a.jsonl"),
            dir.path().join("b.jsonl"),
            dir.path().join("c.jsonl"),
        );
        bootstrap(&source, &a, 7, 0).unwrap();
        bootstrap(&source, &b, 7, 1).unwrap();
        bootstrap(&source, &again, 7, 0).unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap();
        let sample: Vec<String> = read(&a).lines().map(str::to_owned).collect();
        assert_eq!(sample.len(), 50);
        assert!(sample.iter().all(|l| records.contains(l)));
        let distinct: std::collections::HashSet<_> = sample.iter().collect();
        assert!(distinct.len() < 50, "drawn with replacement");
        assert_eq!(
            read(&a),
            read(&again),
            "the same seed and member draw the same"
        );
        assert_ne!(read(&a), read(&b), "members draw differently");
    }

    #[test]
    fn a_members_record_holds_paths_relative_to_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let m = MemberOutcome {
            steps: 25,
            trained_tokens: 1000,
            adapter_dir: dir.path().join("adapter"),
            result_files: vec![(dir.path().join("metrics.csv"), "metrics.csv".into())],
        };
        m.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(RECORD)).unwrap();
        assert!(text.contains(r#""adapter_dir":"adapter""#), "{text}");
        // Read back in another worker's data dir: the paths are that directory's.
        let elsewhere = Path::new("/data/other/jobs/ftjob-x/member-1");
        let read = MemberOutcome::parse(text.as_bytes(), elsewhere).unwrap();
        assert_eq!(read.adapter_dir, elsewhere.join("adapter"));
        assert_eq!(read.result_files[0].0, elsewhere.join("metrics.csv"));
        assert_eq!(read.steps, 25);
        // A record from before (absolute paths) still reads as written.
        let old =
            r#"{"steps":1,"trained_tokens":2,"adapter_dir":"/old/adapter","result_files":[]}"#;
        let read = MemberOutcome::parse(old.as_bytes(), elsewhere).unwrap();
        assert_eq!(read.adapter_dir, Path::new("/old/adapter"));
    }

    #[test]
    fn members_steps_follow_one_another() {
        let n = Numbering {
            index: 2,
            count: 3,
            total: Mutex::new(None),
            done: Mutex::new(0),
        };
        let Update::Resumed { step, total } = n.rewrite(Update::Resumed { step: 4, total: 10 })
        else {
            panic!("a resume stays a resume");
        };
        assert_eq!((step, total), (24, 30));
        let Update::Pruned(p) = n.rewrite(Update::Pruned(5)) else {
            panic!("a prune stays a prune");
        };
        assert_eq!(p, 25);
        let Update::Message(m) = n.rewrite(Update::Message("Epoch 1".into())) else {
            panic!("a message stays a message");
        };
        assert_eq!(m, "Member 3/3: Epoch 1");
        // 6 steps left of this member at 2 s each, no member after it.
        let _ = n.rewrite(Update::Step {
            step: 4,
            total: 10,
            loss: 1.0,
            tokens: 0,
        });
        let Update::Estimate(secs) = n.rewrite(Update::Estimate(12.0)) else {
            panic!("an estimate stays an estimate");
        };
        assert!((secs - 12.0).abs() < 1e-9);
    }
}
