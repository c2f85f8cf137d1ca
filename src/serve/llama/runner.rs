//! The llama.cpp engine thread: one model, one context whose KV cache every sequence shares,
//! and LoRA adapters attached per step. Each step picks the next adapter group in turn (the base
//! is a group too), decodes one token of every running sequence in it plus prompt chunks of new
//! ones (continuous batching: sequences join and leave between steps), and samples. A sequence
//! whose client went away is dropped at the next step.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaLoraAdapter, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use tokio::sync::{mpsc, oneshot};
use toktrie::TokEnv;

use super::sampling;
use super::text::{Piece, TextOut, parse_tool_calls};
use crate::serve::events::{Event, FinishReason, Usage};
use crate::serve::{ChatParams, ServeError};

/// Work for the engine thread.
pub enum Command {
    /// Generate for a request.
    Generate(Box<Job>),
    /// Make an adapter (a LoRA GGUF) ready to attach under `key`.
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
    /// The last position's logits of `tokens` under `adapter` (parity checks), decoded in the
    /// spare sequence no request uses.
    Logits {
        /// The adapter, `None` for the base.
        adapter: Option<String>,
        /// Token ids.
        tokens: Vec<u32>,
        /// The logits.
        reply: oneshot::Sender<Result<Vec<f32>, ServeError>>,
    },
}

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
    lora: LlamaLoraAdapter,
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
    /// Steps one adapter group may decode in a row while other groups wait.
    pub quantum: usize,
}

/// The engine thread's state.
pub struct Runner {
    ctx: std::mem::ManuallyDrop<LlamaContext<'static>>,
    model: *mut LlamaModel,
    tok_env: Option<TokEnv>,
    adapters: HashMap<String, Adapter>,
    /// The adapter set on the context now.
    current: Option<String>,
    slots: Vec<Option<Seq>>,
    /// What each free slot's KV cells still hold from its last sequence (its prompt), for the
    /// next prompt that starts the same way under the same adapter.
    cached: Vec<Cached>,
    waiting: VecDeque<Seq>,
    reserved: usize,
    /// Steps decoded in a row with the adapter set applied now.
    streak: usize,
    sizing: Sizing,
    batch: LlamaBatch<'static>,
}

impl Runner {
    /// A runner over `model` (owned: freed when the runner is dropped, after the context) with
    /// its context `ctx`. Adapters stay allocated until the model is freed (the crate does not
    /// free them; llama.cpp frees them with the model), so a removed adapter's memory returns
    /// at shutdown.
    ///
    /// # Safety
    /// `model` comes from `Box::into_raw` and `ctx` was created from it; nothing else uses
    /// either. The context holds no Rust reference to the model (llama.cpp keeps a C pointer),
    /// so the model may be borrowed mutably to load an adapter while the context lives.
    pub unsafe fn new(model: *mut LlamaModel, ctx: LlamaContext<'static>, sizing: Sizing) -> Self {
        Self {
            ctx: std::mem::ManuallyDrop::new(ctx),
            model,
            tok_env: None,
            adapters: HashMap::new(),
            current: None,
            slots: (0..sizing.slots).map(|_| None).collect(),
            cached: (0..sizing.slots).map(|_| Cached::default()).collect(),
            waiting: VecDeque::new(),
            reserved: 0,
            streak: 0,
            batch: LlamaBatch::new(sizing.batch.max(sizing.slots), 1),
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
            Command::Logits {
                adapter,
                tokens,
                reply,
            } => {
                let _ = reply.send(self.logits(adapter.as_deref(), &tokens));
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

    fn logits(&mut self, adapter: Option<&str>, tokens: &[u32]) -> Result<Vec<f32>, ServeError> {
        let spare = self.slots.len() as i32;
        if tokens.is_empty() || tokens.len() > self.sizing.batch {
            return Err(ServeError::Invalid(format!(
                "1 to {} tokens, not {}",
                self.sizing.batch,
                tokens.len()
            )));
        }
        if adapter.is_some_and(|a| !self.adapters.contains_key(a)) {
            return Err(ServeError::Invalid("that adapter is not loaded".to_owned()));
        }
        self.set_adapter(adapter);
        self.batch.clear();
        for (i, t) in tokens.iter().enumerate() {
            self.batch
                .add(
                    LlamaToken(*t as i32),
                    i as i32,
                    &[spare],
                    i + 1 == tokens.len(),
                )
                .map_err(|e| ServeError::Engine(e.to_string()))?;
        }
        let decoded = self.ctx.decode(&mut self.batch);
        let logits = decoded
            .map(|()| self.ctx.get_logits_ith(tokens.len() as i32 - 1).to_vec())
            .map_err(|e| ServeError::Engine(e.to_string()));
        let _ = self.ctx.clear_kv_cache_seq(Some(spare as u32), None, None);
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
        // SAFETY: see `new`: no Rust reference to the model is alive across this call.
        let model = unsafe { &mut *self.model };
        let lora = model
            .lora_adapter_init(&path)
            .map_err(|e| ServeError::Load {
                model: name,
                reason: format!("llama.cpp refused the adapter: {e}"),
            })?;
        self.adapters.insert(
            key,
            Adapter {
                lora,
                removed: false,
            },
        );
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
            if self.current.as_deref() == Some(name.as_str()) {
                self.set_adapter(None);
            }
            for i in 0..self.slots.len() {
                if self.slots[i].is_none() && self.cached[i].adapter.as_deref() == Some(&name) {
                    self.forget(i);
                }
            }
            self.adapters.remove(&name);
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
        if let Some(a) = &job.adapter
            && self.adapters.get(a).is_none_or(|a| a.removed)
        {
            request.borrow_mut().fail(ServeError::Load {
                model: a.clone(),
                reason: "its adapter is not loaded".to_owned(),
            });
            return;
        }
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
                let _ = self.ctx.clear_kv_cache_seq(Some(free as u32), None, None);
                let copied = self.ctx.copy_kv_cache_seq(
                    src as i32,
                    free as i32,
                    Some(0),
                    Some(shared as u32),
                );
                if copied.is_ok() { shared } else { 0 }
            } else {
                let _ = self
                    .ctx
                    .clear_kv_cache_seq(Some(free as u32), Some(reuse as u32), None);
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
        let _ = self
            .ctx
            .clear_kv_cache_seq(Some(i as u32), Some(kept as u32), None);
        self.cached[i] = Cached {
            adapter: seq.adapter.clone(),
            tokens: seq.prompt[..kept].to_vec(),
        };
    }

    /// Drop what free slot `i`'s cells keep.
    fn forget(&mut self, i: usize) {
        let _ = self.ctx.clear_kv_cache_seq(Some(i as u32), None, None);
        self.cached[i] = Cached::default();
    }

    fn set_adapter(&mut self, name: Option<&str>) {
        if self.current.as_deref() == name {
            return;
        }
        let result = match name.and_then(|n| self.adapters.get_mut(n)) {
            Some(a) => self
                .ctx
                .lora_adapter_set(&mut a.lora, 1.0)
                .map_err(|e| e.to_string()),
            None => {
                // Removing takes an adapter argument but clears them all.
                match self.adapters.values_mut().next() {
                    Some(a) => self
                        .ctx
                        .lora_adapter_remove(&mut a.lora)
                        .map_err(|e| e.to_string()),
                    None => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "switching adapters failed");
        }
        self.current = name.map(str::to_owned);
    }

    /// The adapter group to decode next: the one applied now, for up to `sizing.quantum` steps
    /// in a row while others wait, then the next in order (round robin: none starves). Applying
    /// another adapter set makes llama.cpp rebuild its compute graph and buffers, which costs
    /// about as much as a decode step.
    fn next_group(&mut self, groups: &[Option<String>]) -> Option<String> {
        if groups.contains(&self.current) && self.streak < self.sizing.quantum {
            self.streak += 1;
            return self.current.clone();
        }
        self.streak = 1;
        groups
            .iter()
            .find(|g| **g > self.current)
            .or(groups.first())
            .cloned()
            .unwrap_or_default()
    }

    /// One decode of the next adapter group in turn.
    fn step(&mut self) {
        self.schedule();
        let mut groups: Vec<Option<String>> = Vec::new();
        for s in self.slots.iter().flatten() {
            if !groups.contains(&s.adapter) {
                groups.push(s.adapter.clone());
            }
        }
        if groups.is_empty() {
            self.free_unused();
            return;
        }
        groups.sort();
        let group = self.next_group(&groups);
        self.set_adapter(group.as_deref());
        self.batch.clear();
        let mut budget = self.sizing.batch;
        let mut rows: Vec<(usize, i32)> = Vec::new();
        let mut row = 0i32;
        // Running sequences first (a token each), then prompt chunks with what is left.
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(seq) = slot.as_mut().filter(|s| s.adapter == group) else {
                continue;
            };
            if let Some(token) = seq.next {
                if self.batch.add(token, seq.pos, &[i as i32], true).is_err() {
                    break;
                }
                seq.pos += 1;
                rows.push((i, row));
                row += 1;
                budget = budget.saturating_sub(1);
            }
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(seq) = slot
                .as_mut()
                .filter(|s| s.adapter == group && s.next.is_none())
            else {
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
                if self.batch.add(token, seq.pos, &[i as i32], logits).is_err() {
                    break;
                }
                seq.pos += 1;
                if logits {
                    rows.push((i, row));
                }
                row += 1;
            }
            seq.fed += take;
            budget -= take;
        }
        if row == 0 {
            return;
        }
        let started = std::time::Instant::now();
        let decoded = self.ctx.decode(&mut self.batch);
        tracing::trace!(
            tokens = row,
            adapter = group.is_some(),
            us = started.elapsed().as_micros() as u64,
            "decoded"
        );
        if let Err(e) = decoded {
            tracing::error!(error = %e, "llama.cpp decode failed");
            for (i, _) in rows {
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
        let token = seq.sampler.sample(&self.ctx, row);
        let model = self.model();
        let piece = |t: LlamaToken| model.vocab().token_to_piece(t, false, None);
        let logprob = seq
            .logprobs
            .map(|top| sampling::logprobs(&self.ctx, row, token, top, &piece));
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
