//! The end-of-run generation evaluation: greedy answers to every validation prompt from the base
//! model and from the fine-tuned one, scored against the reference answers ([`super::scores`]),
//! and the `eval.jsonl` and `eval_summary.csv` result files.
//!
//! The base model's answers are produced before the first optimizer step, when every LoRA `B` is
//! still zero and the adapted model is exactly the base, and kept in the run's output directory,
//! so a resumed run neither loads a second copy of the weights nor answers again.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::generate::Prompter;
use super::model::CausalLm;
use super::{TrainError, io_err};
use crate::domain::dataset::EvalPrompt;
use crate::domain::scores::Scores;

/// How answers are generated.
#[derive(Clone, Copy)]
pub struct AnswerLimits {
    /// Prompt tokens kept (the last ones).
    pub max_prompt: usize,
    /// New tokens at most.
    pub max_new: usize,
}

/// Prompts decoded together: enough to share the cost of reading the weights on a CPU, few
/// enough that padding and the KV cache stay small.
const BATCH: usize = 16;

/// The greedy answer of `model` to each prompt; `progress` hears the count done.
pub fn answers(
    model: &CausalLm,
    prompter: &Prompter,
    prompts: &[EvalPrompt],
    limits: AnswerLimits,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<String>, TrainError> {
    let ids = prompts
        .iter()
        .map(|p| prompter.prompt_ids(&p.turns, p.tools.as_ref(), limits.max_prompt))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in ids.chunks(BATCH) {
        for answer in prompter.continue_batch(model, chunk, limits.max_new)? {
            out.push(prompter.decode(&answer)?);
        }
        progress(out.len());
    }
    Ok(out)
}

/// One line of `eval.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EvalRecord {
    /// The question (last user turn).
    pub prompt: String,
    /// The reference answer.
    pub reference: String,
    /// The base model's answer.
    pub base_answer: String,
    /// The fine-tuned model's answer.
    pub fine_tuned_answer: String,
    /// Scores of the base answer.
    pub base: Scores,
    /// Scores of the fine-tuned answer.
    pub fine_tuned: Scores,
}

/// Mean scores over the validation prompts, on the last metrics event.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct GenerationMetrics {
    /// Prompts answered.
    pub samples: usize,
    /// The base model's mean scores.
    pub base: Scores,
    /// The fine-tuned model's mean scores.
    pub fine_tuned: Scores,
}

/// Score both sets of answers against the references.
pub fn score(
    prompts: &[EvalPrompt],
    base: &[String],
    fine_tuned: &[String],
) -> (Vec<EvalRecord>, GenerationMetrics) {
    let records: Vec<EvalRecord> = prompts
        .iter()
        .zip(base.iter().zip(fine_tuned))
        .map(|(p, (b, f))| EvalRecord {
            prompt: p.question().to_owned(),
            reference: p.reference.clone(),
            base: Scores::of(b, &p.reference),
            fine_tuned: Scores::of(f, &p.reference),
            base_answer: b.clone(),
            fine_tuned_answer: f.clone(),
        })
        .collect();
    let mean =
        |f: fn(&EvalRecord) -> Scores| Scores::mean(&records.iter().map(f).collect::<Vec<_>>());
    let metrics = GenerationMetrics {
        samples: records.len(),
        base: mean(|r| r.base),
        fine_tuned: mean(|r| r.fine_tuned),
    };
    (records, metrics)
}

/// Base answers saved by an earlier attempt of this run, when they cover `n` prompts.
pub fn load_base_answers(path: &Path, n: usize) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(path).ok()?;
    let answers: Vec<String> = serde_json::from_str(&text).ok()?;
    (answers.len() == n).then_some(answers)
}

/// Keep the base answers for a resumed run (written whole, then renamed).
pub fn save_base_answers(path: &Path, answers: &[String]) -> Result<(), TrainError> {
    let text = serde_json::to_string(answers).unwrap_or_else(|_| "[]".to_owned());
    write_atomically(path, text.as_bytes())
}

/// `eval.jsonl`: one [`EvalRecord`] per line.
pub fn write_jsonl(path: &Path, records: &[EvalRecord]) -> Result<(), TrainError> {
    let mut text = Vec::new();
    for r in records {
        serde_json::to_writer(&mut text, r).map_err(|e| TrainError::Invalid(e.to_string()))?;
        text.push(b'\n');
    }
    write_atomically(path, &text)
}

/// `eval_summary.csv`: the mean scores of the base and the fine-tuned model, a row each.
pub fn write_summary_csv(path: &Path, m: &GenerationMetrics) -> Result<(), TrainError> {
    let mut text = String::from("model,samples,rouge1,rouge2,rougeL,bleu4\n");
    for (name, s) in [("base", m.base), ("fine_tuned", m.fine_tuned)] {
        text.push_str(&format!(
            "{name},{},{:.4},{:.4},{:.4},{:.4}\n",
            m.samples, s.rouge1, s.rouge2, s.rouge_l, s.bleu4
        ));
    }
    write_atomically(path, text.as_bytes())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = path.with_extension("partial");
    let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::dataset::{Example, Role, Turn};

    fn turn(role: Role, content: &str) -> Turn {
        Turn::new(role, content)
    }

    #[test]
    fn the_last_assistant_turn_is_the_reference() {
        let e = Example {
            turns: vec![
                turn(Role::System, "Be brief."),
                turn(Role::User, "Hi"),
                turn(Role::Assistant, "Hello."),
                turn(Role::User, "How much water a day?"),
                turn(Role::Assistant, "About two litres."),
            ],
            tools: None,
            parallel_tool_calls: true,
            rejected: None,
        };
        let p = EvalPrompt::of(&e).unwrap();
        assert_eq!(p.turns.len(), 4);
        assert_eq!(p.reference, "About two litres.");
        assert_eq!(p.question(), "How much water a day?");
        let no_answer = Example {
            turns: vec![turn(Role::User, "?")],
            tools: None,
            parallel_tool_calls: true,
            rejected: None,
        };
        assert!(EvalPrompt::of(&no_answer).is_none());
    }

    #[test]
    fn records_and_summaries_are_written_whole() {
        let e = Example {
            turns: vec![turn(Role::User, "q"), turn(Role::Assistant, "drink water")],
            tools: None,
            parallel_tool_calls: true,
            rejected: None,
        };
        let prompts = vec![EvalPrompt::of(&e).unwrap()];
        let (records, m) = score(&prompts, &["no idea".into()], &["drink water".into()]);
        assert_eq!(
            (m.samples, m.fine_tuned.rouge_l, m.base.rouge_l),
            (1, 1.0, 0.0)
        );
        let dir = tempfile::tempdir().unwrap();
        let jsonl = dir.path().join("eval.jsonl");
        write_jsonl(&jsonl, &records).unwrap();
        let back: EvalRecord =
            serde_json::from_str(std::fs::read_to_string(&jsonl).unwrap().trim()).unwrap();
        assert_eq!(back, records[0]);
        let csv = dir.path().join("eval_summary.csv");
        write_summary_csv(&csv, &m).unwrap();
        let text = std::fs::read_to_string(&csv).unwrap();
        assert_eq!(
            text.lines().nth(2),
            Some("fine_tuned,1,1.0000,1.0000,1.0000,0.0000")
        );
        let base = dir.path().join("eval/base.json");
        save_base_answers(&base, &["a".into(), "b".into()]).unwrap();
        assert_eq!(load_base_answers(&base, 2).unwrap(), ["a", "b"]);
        assert!(load_base_answers(&base, 3).is_none());
    }
}
