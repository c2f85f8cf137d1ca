//! The llama.cpp engine thread: one model, one context whose KV cache every sequence shares,
//! and the LoRA adapters it has loaded. Each step decodes one token of every running sequence,
//! whatever its adapter, plus prompt chunks of new ones
//! (continuous batching: sequences join and leave between steps), each row under its own
//! adapter (see [`super::context`]), and samples. A sequence whose client went away is dropped
//! at the next step.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc, oneshot};
use toktrie::TokEnv;

use super::context::{AdapterId, Context};
use super::sampling;
use super::text::{Piece, TextOut, parse_tool_calls};
use crate::serve::events::{Event, FinishReason, Usage};
use crate::serve::{ChatParams, ServeError};

/// Work for the engine thread.
pub enum Command {
    /// Generate for a request.
    Generate(Box<Job>),
    /// Make an adapter (a LoRA GGUF) ready to serve under `key`.
    Load {
        /// The model name (for errors).
        name: String,
        /// What sequences name the adapter by: its LoRA GGUF's path, so one file is one adapter
        /// whichever names serve it.
        key: String,
        /// The LoRA GGUF.
        path: PathBuf,
        /// The answer.
        reply: oneshot::Sender<Result<(), ServeError>>,
    },
    /// Forget adapter `key` once no sequence uses it.
    Remove {
        /// The adapter's key.
        key: String,
    },
    /// Count the tokens of `text` (special tokens parsed, as prompts are).
    Tokenize {
        /// The text.
        text: String,
        /// The count.
        reply: oneshot::Sender<usize>,
    },
    /// Drop every sequence in flight, as a crashed engine would (tests).
    DropAll,
    /// The last position's logits of each row's tokens under its adapter (`None`: the base),
    /// all rows decoded together in one batch, each in a spare sequence no request uses
    /// (parity checks).
    Logits {
        /// Up to [`SPARE`] rows of an adapter and token ids.
        rows: Vec<(Option<String>, Vec<u32>)>,
        /// The logits of each row.
        reply: oneshot::Sender<Result<Vec<Vec<f32>>, ServeError>>,
    },
}

/// Sequences beyond the slots that no request uses: parity checks decode in them.
pub const SPARE: usize = 4;

/// One request: a prompt and how to continue it.
pub struct Job {
    /// The adapter, `None` for the base.
    pub adapter: Option<String>,
    /// The rendered prompt.
    pub prompt: String,
    /// Sampling and limits.
    pub params: ChatParams,
    /// Tools were offered without forcing a call: the answer is read back as calls if it is one.
    pub read_calls: bool,
    /// Tools were forced: the answer is a call.
    pub forced_calls: bool,
    /// Events go here.
    pub tx: mpsc::UnboundedSender<Event>,
    /// The first choice's seed (choice `i` draws with `seed + i`).
    pub seed: u32,
}

/// A request's shared state across its choices.
struct Request {
    tx: mpsc::UnboundedSender<Event>,
    open: usize,
    usage: Usage,
    first_token: Option<Instant>,
    failed: bool,
}

impl Request {
    fn send(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    fn fail(&mut self, e: ServeError) {
        if !self.failed {
            self.failed = true;
            self.send(Event::Failed(e));
        }
    }
}

/// One choice being generated.
struct Seq {
    request: Rc<RefCell<Request>>,
    choice: usize,
    adapter: Option<String>,
    /// The loaded adapter `adapter` names.
    lora: Option<AdapterId>,
    prompt: Vec<LlamaToken>,
    /// Prompt tokens decoded so far.
    fed: usize,
    /// The next position in the sequence.
    pos: i32,
    /// The token to feed next (the last sampled).
    next: Option<LlamaToken>,
    sampler: LlamaSampler,
    text: TextOut,
    generated: usize,
    max_tokens: usize,
    /// KV cells reserved: prompt plus the most it may generate.
    reserved: usize,
    logprobs: Option<usize>,
    read_calls: bool,
    forced_calls: bool,
}

/// Tokens whose KV cells a free slot keeps, from position 0, computed under `adapter`.
#[derive(Default)]
struct Cached {
    adapter: Option<String>,
    tokens: Vec<LlamaToken>,
}

/// How many leading tokens of `prompt` the cells holding `held` can give it, leaving at least
/// one to decode for the first logits.
fn common_start(held: &[LlamaToken], prompt: &[LlamaToken]) -> usize {
    let common = held.iter().zip(prompt).take_while(|(a, b)| a == b).count();
    common.min(prompt.len().saturating_sub(1))
}

/// An adapter and whether it is to be freed once unused.
struct Adapter {
    id: AdapterId,
    removed: bool,
}

/// How the runner is sized.
pub struct Sizing {
    /// KV cells in all (shared by every sequence).
    pub kv_tokens: usize,
    /// Sequences decoded at once.
    pub slots: usize,
    /// Tokens per decode call.
    pub batch: usize,
    /// Most tokens a sequence may hold (the model's context).
    pub context_len: usize,
}

/// The engine thread's state.
pub struct Runner {
    ctx: std::mem::ManuallyDrop<Context>,
    model: *mut LlamaModel,
    tok_env: Option<TokEnv>,
    adapters: HashMap<String, Adapter>,
    slots: Vec<Option<Seq>>,
    /// What each free slot's KV cells still hold from its last sequence (its prompt), for the
    /// next prompt that starts the same way under the same adapter.
    cached: Vec<Cached>,
    waiting: VecDeque<Seq>,
    reserved: usize,
    sizing: Sizing,
}

impl Runner {
    /// A runner over `model` (owned: freed when the runner is dropped, after the context) with
    /// its context `ctx`, whose sequence ids are the slots plus [`SPARE`].
    ///
    /// # Safety
    /// `model` comes from `Box::into_raw` and `ctx` was created from it; nothing else uses
    /// either.
    pub unsafe fn new(model: *mut LlamaModel, ctx: Context, sizing: Sizing) -> Self {
        Self {
            ctx: std::mem::ManuallyDrop::new(ctx),
            model,
            tok_env: None,
            adapters: HashMap::new(),
            slots: (0..sizing.slots).map(|_| None).collect(),
            cached: (0..sizing.slots).map(|_| Cached::default()).collect(),
            waiting: VecDeque::new(),
            reserved: 0,
            sizing,
        }
    }

    fn model(&self) -> &LlamaModel {
        // SAFETY: see `new`; the model lives as long as the runner.
        unsafe { &*self.model }
    }

    /// Run until every command sender is gone.
    pub fn run(mut self, rx: std::sync::mpsc::Receiver<Command>) {
        loop {
            let idle = self.slots.iter().all(Option::is_none) && self.waiting.is_empty();
            if idle {
                match rx.recv() {
                    Ok(c) => self.handle(c),
                    Err(_) => return,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(c) => self.handle(c),
                    Err(std::sync::mpsc::TryRecvError::Empty) => break,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                }
            }
            self.step();
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Generate(job) => self.enqueue(*job),
            Command::Load {
                name,
                key,
                path,
                reply,
            } => {
                let _ = reply.send(self.load(name, key, path));
            }
            Command::Remove { key } => {
                if let Some(a) = self.adapters.get_mut(&key) {
                    a.removed = true;
                }
                self.free_unused();
            }
            Command::Tokenize { text, reply } => {
                let _ = reply.send(self.tokenize(&text).len());
            }
            Command::Logits { rows, reply } => {
                let _ = reply.send(self.logits(&rows));
            }
            Command::DropAll => self.stop_all(),
        }
    }

    /// End every sequence in flight with [`ServeError::Stopped`] (a cut-off answer never reads
    /// as a finished one).
    fn stop_all(&mut self) {
        for i in 0..self.slots.len() {
            if let Some(seq) = self.slots[i].take() {
                seq.request.borrow_mut().fail(ServeError::Stopped);
                self.release(i, &seq);
            }
        }
        for seq in self.waiting.drain(..) {
            seq.request.borrow_mut().fail(ServeError::Stopped);
        }
    }

    fn logits(&mut self, rows: &[(Option<String>, Vec<u32>)]) -> Result<Vec<Vec<f32>>, ServeError> {
        let total: usize = rows.iter().map(|(_, t)| t.len()).sum();
        if rows.is_empty()
            || rows.len() > SPARE
            || rows.iter().any(|(_, t)| t.is_empty())
            || total > self.sizing.batch
        {
            return Err(ServeError::Invalid(format!(
                "1 to {SPARE} non-empty rows of {} tokens in all",
                self.sizing.batch
            )));
        }
        let mut loras = Vec::new();
        for (adapter, _) in rows {
            let lora = match adapter {
                Some(a) => Some(
                    self.adapters
                        .get(a)
                        .ok_or_else(|| {
                            ServeError::Invalid("that adapter is not loaded".to_owned())
                        })?
                        .id,
                ),
                None => None,
            };
            loras.push(lora);
        }
        self.ctx.clear();
        let mut outputs = Vec::new();
        for (r, ((_, tokens), lora)) in rows.iter().zip(&loras).enumerate() {
            let seq = (self.slots.len() + r) as i32;
            for (i, t) in tokens.iter().enumerate() {
                let last = i + 1 == tokens.len();
                self.ctx
                    .add(LlamaToken(*t as i32), i as i32, seq, last, *lora);
            }
            outputs.push(self.ctx.len() as i32 - 1);
        }
        let logits = self
            .ctx
            .decode()
            .map(|()| {
                outputs
                    .iter()
                    .map(|o| self.ctx.logits(*o).to_vec())
                    .collect()
            })
            .map_err(ServeError::Engine);
        for r in 0..rows.len() {
            self.ctx.seq_rm((self.slots.len() + r) as i32, 0, None);
        }
        logits
    }

    fn tokenize(&self, text: &str) -> Vec<LlamaToken> {
        self.model().vocab().tokenize(text.as_bytes(), true, true)
    }

    fn load(&mut self, name: String, key: String, path: PathBuf) -> Result<(), ServeError> {
        if let Some(a) = self.adapters.get_mut(&key) {
            // The same file: still held (perhaps marked removed, now wanted again).
            a.removed = false;
            return Ok(());
        }
        let id = self.ctx.load_adapter(&path).map_err(|e| ServeError::Load {
            model: name,
            reason: format!("llama.cpp refused the adapter: {e}"),
        })?;
        self.adapters.insert(key, Adapter { id, removed: false });
        Ok(())
    }

    /// Free adapters marked removed that no sequence uses.
    fn free_unused(&mut self) {
        let used: Vec<String> = self
            .slots
            .iter()
            .flatten()
            .chain(self.waiting.iter())
            .filter_map(|s| s.adapter.clone())
            .collect();
        let doomed: Vec<String> = self
            .adapters
            .iter()
            .filter(|(n, a)| a.removed && !used.contains(n))
            .map(|(n, _)| n.clone())
            .collect();
        for name in doomed {
            for i in 0..self.slots.len() {
                if self.slots[i].is_none() && self.cached[i].adapter.as_deref() == Some(&name) {
                    self.forget(i);
                }
            }
            if let Some(a) = self.adapters.remove(&name) {
                self.ctx.free_adapter(a.id);
            }
        }
    }

    fn enqueue(&mut self, job: Job) {
        let n = job.params.n.max(1);
        let prompt = self.tokenize(&job.prompt);
        let request = Rc::new(RefCell::new(Request {
            tx: job.tx.clone(),
            open: n,
            usage: Usage {
                prompt_tokens: prompt.len(),
                completion_tokens: 0,
                decode_seconds: None,
            },
            first_token: None,
            failed: false,
        }));
        let room = self.sizing.context_len.min(self.sizing.kv_tokens);
        if prompt.is_empty() || prompt.len() >= room {
            request.borrow_mut().fail(ServeError::Invalid(format!(
                "the prompt has {} tokens; this model takes 1 to {}",
                prompt.len(),
                room - 1
            )));
            return;
        }
        let lora = match &job.adapter {
            Some(a) => match self.adapters.get(a).filter(|a| !a.removed) {
                Some(loaded) => Some(loaded.id),
                None => {
                    request.borrow_mut().fail(ServeError::Load {
                        model: a.clone(),
                        reason: "its adapter is not loaded".to_owned(),
                    });
                    return;
                }
            },
            None => None,
        };
        let max_tokens = job
            .params
            .max_tokens
            .unwrap_or(usize::MAX)
            .min(room - prompt.len());
        let tok_env = if job.params.output_schema().is_some() {
            if self.tok_env.is_none() {
                self.tok_env = Some(LlamaSampler::llguidance_tok_env(self.model()));
            }
            self.tok_env.as_ref()
        } else {
            None
        };
        for choice in 0..n {
            let seed = job.seed.wrapping_add(choice as u32);
            let sampler = match sampling::chain(&job.params, self.model(), tok_env, seed) {
                Ok(s) => s,
                Err(e) => {
                    request.borrow_mut().fail(e);
                    return;
                }
            };
            self.waiting.push_back(Seq {
                request: request.clone(),
                choice,
                adapter: job.adapter.clone(),
                lora,
                prompt: prompt.clone(),
                fed: 0,
                pos: 0,
                next: None,
                sampler,
                text: TextOut::new(&job.params.stop),
                generated: 0,
                max_tokens,
                reserved: prompt.len() + max_tokens,
                logprobs: job.params.logprobs.then_some(job.params.top_logprobs),
                read_calls: job.read_calls,
                forced_calls: job.forced_calls,
            });
        }
    }

    /// Drop sequences whose client went away; admit waiting ones that fit.
    fn schedule(&mut self) {
        for i in 0..self.slots.len() {
            let gone = self.slots[i]
                .as_ref()
                .is_some_and(|s| s.request.borrow().tx.is_closed() || s.request.borrow().failed);
            if gone && let Some(seq) = self.slots[i].take() {
                self.release(i, &seq);
            }
        }
        self.waiting
            .retain(|s| !s.request.borrow().tx.is_closed() && !s.request.borrow().failed);
        while self.slots.iter().any(Option::is_none) {
            let Some(next) = self.waiting.front() else {
                break;
            };
            if self.reserved + next.reserved > self.sizing.kv_tokens && self.reserved > 0 {
                break;
            }
            let (need, adapter, prompt) =
                (next.reserved, next.adapter.clone(), next.prompt.clone());
            // The free slot whose cells already hold the longest start of this prompt.
            let (free, reuse) = (0..self.slots.len())
                .filter(|&i| self.slots[i].is_none())
                .map(|i| (i, self.held(i, &adapter, &prompt)))
                .max_by_key(|&(i, n)| (n, usize::MAX - self.cached[i].tokens.len()))
                .expect("a free slot");
            // Cells other free slots keep give way when the new sequence needs them.
            let kept: usize = (0..self.slots.len())
                .filter(|&i| i != free && self.slots[i].is_none())
                .map(|i| self.cached[i].tokens.len())
                .sum();
            if self.reserved + need + kept > self.sizing.kv_tokens {
                for i in 0..self.slots.len() {
                    if i != free && self.slots[i].is_none() {
                        self.forget(i);
                    }
                }
            }
            // A longer start that another slot holds (running or free) is shared: with one
            // unified cache the cells gain a sequence id, nothing is copied.
            let (src, shared) = (0..self.slots.len())
                .filter(|&i| i != free)
                .map(|i| (i, self.held(i, &adapter, &prompt)))
                .max_by_key(|&(_, n)| n)
                .unwrap_or((free, 0));
            let mut seq = self.waiting.pop_front().expect("a waiting sequence");
            let reuse = if shared > reuse {
                self.ctx.seq_rm(free as i32, 0, None);
                self.ctx.seq_cp(src as i32, free as i32, shared);
                shared
            } else {
                self.ctx.seq_rm(free as i32, reuse, None);
                reuse
            };
            self.cached[free] = Cached::default();
            tracing::debug!(
                slot = free,
                reused = reuse,
                prompt = seq.prompt.len(),
                "sequence admitted"
            );
            seq.fed = reuse;
            seq.pos = reuse as i32;
            self.reserved += seq.reserved;
            self.slots[free] = Some(seq);
        }
    }

    /// How many leading tokens of `prompt` (under `adapter`) slot `i`'s cells hold now.
    fn held(&self, i: usize, adapter: &Option<String>, prompt: &[LlamaToken]) -> usize {
        match &self.slots[i] {
            Some(seq) if &seq.adapter == adapter => {
                common_start(&seq.prompt[..seq.fed.min(seq.prompt.len())], prompt)
            }
            None if &self.cached[i].adapter == adapter => {
                common_start(&self.cached[i].tokens, prompt)
            }
            _ => 0,
        }
    }

    /// Free slot `i` of `seq`; its cells keep the prompt it decoded for a later one.
    fn release(&mut self, i: usize, seq: &Seq) {
        self.reserved = self.reserved.saturating_sub(seq.reserved);
        let kept = seq.fed.min(seq.prompt.len());
        self.ctx.seq_rm(i as i32, kept, None);
        self.cached[i] = Cached {
            adapter: seq.adapter.clone(),
            tokens: seq.prompt[..kept].to_vec(),
        };
    }

    /// Drop what free slot `i`'s cells keep.
    fn forget(&mut self, i: usize) {
        self.ctx.seq_rm(i as i32, 0, None);
        self.cached[i] = Cached::default();
    }

    /// One decode: a token of every running sequence, then prompt chunks of new ones with
    /// what the batch has left, every row under its own sequence's adapter.
    fn step(&mut self) {
        self.schedule();
        if self.slots.iter().all(Option::is_none) {
            self.free_unused();
            return;
        }
        self.ctx.clear();
        let mut budget = self.sizing.batch;
        let mut rows: Vec<(usize, i32)> = Vec::new();
        let mut fed: Vec<usize> = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(seq) = slot.as_mut() else {
                continue;
            };
            let Some(token) = seq.next else {
                continue;
            };
            if !self.ctx.add(token, seq.pos, i as i32, true, seq.lora) {
                break;
            }
            seq.pos += 1;
            rows.push((i, self.ctx.len() as i32 - 1));
            budget = budget.saturating_sub(1);
            fed.push(i);
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(seq) = slot.as_mut().filter(|s| s.next.is_none()) else {
                continue;
            };
            let take = (seq.prompt.len() - seq.fed).min(budget);
            if take == 0 {
                continue;
            }
            let last = seq.fed + take == seq.prompt.len();
            for k in 0..take {
                let logits = last && k + 1 == take;
                let token = seq.prompt[seq.fed + k];
                if !self.ctx.add(token, seq.pos, i as i32, logits, seq.lora) {
                    break;
                }
                seq.pos += 1;
                if logits {
                    rows.push((i, self.ctx.len() as i32 - 1));
                }
            }
            seq.fed += take;
            budget -= take;
            fed.push(i);
        }
        if self.ctx.len() == 0 {
            return;
        }
        let started = std::time::Instant::now();
        let decoded = self.ctx.decode();
        tracing::trace!(
            tokens = self.ctx.len(),
            adapters = self.ctx.adapters_in_batch(),
            us = started.elapsed().as_micros() as u64,
            "decoded"
        );
        if let Err(e) = decoded {
            tracing::error!(error = %e, "llama.cpp decode failed");
            for i in fed {
                if let Some(seq) = self.slots[i].take() {
                    seq.request
                        .borrow_mut()
                        .fail(ServeError::Engine(format!("decoding failed: {e}")));
                    self.release(i, &seq);
                    self.forget(i);
                }
            }
            return;
        }
        for (i, row) in rows {
            self.sample(i, row);
        }
    }

    fn sample(&mut self, i: usize, row: i32) {
        let Some(mut seq) = self.slots[i].take() else {
            return;
        };
        let logits = self.ctx.logits(row);
        let token = sampling::sample(&mut seq.sampler, logits);
        let model = self.model();
        let piece = |t: LlamaToken| model.vocab().token_to_piece(t, false, None);
        let logprob = seq
            .logprobs
            .map(|top| sampling::logprobs(logits, token, top, &piece));
        seq.generated += 1;
        {
            let mut r = seq.request.borrow_mut();
            r.first_token.get_or_insert_with(Instant::now);
        }
        if model.vocab().is_eog(token) {
            self.finish(i, seq, FinishReason::Stop);
            return;
        }
        let hold = seq.read_calls || seq.forced_calls;
        let (text, stopped) = match seq.text.push(&piece(token)) {
            Piece::Text(t) => (t, false),
            Piece::Stopped(t) => (t, true),
        };
        if !hold {
            seq.request.borrow().send(Event::Text {
                choice: seq.choice,
                text,
                logprobs: logprob.into_iter().collect(),
            });
        }
        if stopped {
            self.finish(i, seq, FinishReason::Stop);
        } else if seq.generated >= seq.max_tokens {
            self.finish(i, seq, FinishReason::Length);
        } else {
            seq.next = Some(token);
            self.slots[i] = Some(seq);
        }
    }

    /// End a choice: the held text (or the calls it makes), its finish, and the request's usage
    /// once its last choice ends.
    fn finish(&mut self, i: usize, mut seq: Seq, mut reason: FinishReason) {
        self.release(i, &seq);
        let tail = seq.text.finish();
        let mut r = seq.request.borrow_mut();
        let calls = (seq.read_calls || seq.forced_calls)
            .then(|| parse_tool_calls(seq.text.all(), super::call_id))
            .flatten();
        match calls {
            Some(calls) => {
                r.send(Event::ToolCalls {
                    choice: seq.choice,
                    calls,
                });
                reason = FinishReason::ToolCalls;
            }
            None => {
                let text = if seq.read_calls || seq.forced_calls {
                    seq.text.all().to_owned()
                } else {
                    tail
                };
                if !text.is_empty() {
                    r.send(Event::Text {
                        choice: seq.choice,
                        text,
                        logprobs: Vec::new(),
                    });
                }
            }
        }
        r.send(Event::Finished {
            choice: seq.choice,
            reason,
        });
        r.usage.completion_tokens += seq.generated;
        r.open -= 1;
        if r.open == 0 {
            r.usage.decode_seconds = r.first_token.map(|t| t.elapsed().as_secs_f64());
            let usage = r.usage;
            r.send(Event::Done(usage));
        }
        drop(r);
        self.free_unused();
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Also on a panic's unwinding: every client hears that its answer stopped.
        self.stop_all();
        // SAFETY: the context goes before the model it was made from (see `new`); neither is
        // used again.
        unsafe {
            std::mem::ManuallyDrop::drop(&mut self.ctx);
            drop(Box::from_raw(self.model));
        }
    }
}
