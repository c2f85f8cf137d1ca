//! Training a job's ensemble (`ensemble_size` K > 1): K runs of the job's trainer, member k in
//! `{output}/member-k` with seed `seed + k - 1` (so member 1 trains exactly as a single job
//! would), optionally on a bootstrap sample of the training file. The members' steps are numbered
//! one after another, so the job's events, loss curve and checkpoints read as one run of
//! K × steps. A finished member leaves `outcome.json`; a resumed job skips it.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::trainer::{
    Progress, StopSignal, Trainer, TrainingFailure, TrainingOutcome, TrainingRequest, Update,
};
use crate::domain::job::JobError;
use crate::train::rng;

/// What a finished member left, as `outcome.json` records it.
#[derive(Debug, Serialize, Deserialize)]
struct MemberOutcome {
    steps: usize,
    trained_tokens: i64,
    adapter_dir: PathBuf,
    result_files: Vec<(PathBuf, String)>,
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
    let count = request.hyperparameters.ensemble_size.max(1) as usize;
    let mut outcome = TrainingOutcome::default();
    let mut steps_before = 0;
    for index in 0..count {
        let dir = request.output_dir.join(format!("member-{}", index + 1));
        let record = dir.join("outcome.json");
        let finished = std::fs::read(&record)
            .ok()
            .and_then(|b| serde_json::from_slice::<MemberOutcome>(&b).ok());
        let member = match finished {
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
                if request.hyperparameters.ensemble_bootstrap {
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
                let json =
                    serde_json::to_vec(&m).map_err(|e| io_failure("recording a member", e))?;
                std::fs::write(&record, json).map_err(|e| io_failure("recording a member", e))?;
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
