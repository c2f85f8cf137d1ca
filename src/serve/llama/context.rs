//! The llama.cpp context the engine thread decodes with, through the C API: one KV cache shared
//! by every sequence, and LoRA adapters applied per row, so one decode serves sequences of
//! different adapters (and of the base) at once.
//!
//! llama.cpp applies an attached adapter to every row of a batch. Nothing is attached here:
//! the graph's evaluation callback stops after each product `W·x` of a weight that an adapter
//! of the batch adapts and adds, to each row under such an adapter, that adapter's
//! `scale · B·(A·x)` (see [`super::lora`]), before the graph goes on. Rows of the base and of
//! other adapters are untouched, no compute graph is rebuilt when the batch's adapters change,
//! and each row pays for its own adapter only.
//!
//! The crate's safe context has no evaluation callback, so this module calls llama.cpp
//! directly; the model stays the crate's [`LlamaModel`].

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::path::Path;
use std::ptr::NonNull;

use llama_cpp_2::context::params::KvCacheType;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_sys_2 as sys;

use super::lora::{Lora, Update};
use super::team;

/// An adapter loaded into a [`Context`]: a handle, valid until [`Context::free_adapter`].
pub type AdapterId = u32;

/// How a [`Context`] is made.
pub struct Params {
    /// KV cells in all.
    pub kv_tokens: usize,
    /// Most tokens per decode, all in one micro-batch (the row updates count rows per decode).
    pub batch: usize,
    /// Sequence ids in use (0 to `sequences - 1`).
    pub sequences: usize,
    /// The KV cache's element type.
    pub kv_type: KvCacheType,
    /// llama.cpp's flash-attention policy.
    pub flash_attention: sys::llama_flash_attn_type,
    /// CPU threads.
    pub threads: usize,
}

/// The adapters and which one each row of the decode in flight is under, for [`add_deltas`].
#[derive(Default)]
struct Deltas {
    loras: HashMap<AdapterId, Lora>,
    /// The GGUF name of each weight tensor seen as a product's first operand (by address).
    names: HashMap<usize, String>,
    /// The adapters of this decode's rows.
    used: Vec<AdapterId>,
    /// Each token's adapter, in batch order (`None`: the base).
    tokens: Vec<Option<AdapterId>>,
    /// Each output row's adapter (the last layer's feed-forward runs on output rows only).
    outputs: Vec<Option<AdapterId>>,
    /// Threads of llama.cpp's team the updates run on.
    threads: usize,
    /// A product whose rows or shapes could not be matched: its rows were left without deltas.
    unmatched: bool,
}

impl Deltas {
    /// The weight name of a product's first operand, if a row's adapter adapts it.
    fn adapted(&mut self, w: *const sys::ggml_tensor) -> Option<String> {
        if self.used.is_empty() {
            return None;
        }
        let name = self
            .names
            .entry(w as usize)
            // SAFETY: a node's source is a live tensor with a NUL-padded name.
            .or_insert_with(|| name_of(unsafe { &(*w).name }));
        self.used
            .iter()
            .any(|id| self.loras.get(id).is_some_and(|l| l.adapts(name)))
            .then(|| name.clone())
    }
}

/// The C name of a tensor.
fn name_of(name: &[std::os::raw::c_char]) -> String {
    let bytes: Vec<u8> = name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Rows of an f32 matrix in host memory: row `j` starts `j · stride` elements after `data`.
#[derive(Clone, Copy)]
struct Rows {
    /// The first row.
    data: *mut f32,
    /// Elements from one row to the next.
    stride: usize,
    /// Elements per row.
    width: usize,
}

// SAFETY: the team's threads write disjoint rows (each row to one thread) of tensors that
// outlive the region.
unsafe impl Sync for Rows {}

impl Rows {
    /// Row `j`'s first element.
    ///
    /// # Safety
    /// Row `j` lies inside the matrix.
    unsafe fn row(&self, j: usize) -> *mut f32 {
        // SAFETY: the caller's promise.
        unsafe { self.data.add(j * self.stride) }
    }
}

/// An f32 2-D tensor's rows, if it is one with contiguous rows.
fn rows_of(t: &sys::ggml_tensor) -> Option<Rows> {
    let f32_size = std::mem::size_of::<f32>();
    let plain = t.type_ == sys::GGML_TYPE_F32
        && t.ne[2] == 1
        && t.ne[3] == 1
        && t.nb[0] == f32_size
        && t.nb[1].is_multiple_of(f32_size)
        && !t.data.is_null();
    plain.then(|| Rows {
        data: t.data.cast(),
        stride: t.nb[1] / f32_size,
        width: t.ne[0] as usize,
    })
}

/// The scheduler's evaluation callback. Asked about each node before it is computed (`ask`),
/// it wants the products `W·x` of weights that an adapter of the batch adapts; told one is
/// computed, it adds each adapter's update to its rows. Returning `true` when told means
/// "go on".
///
/// # Safety
/// `user` is the context's boxed [`Deltas`] and `t` a live node of the graph being computed on
/// the CPU (its data, and its operands', in host memory), as llama.cpp's scheduler passes them.
unsafe extern "C" fn add_deltas(t: *mut sys::ggml_tensor, ask: bool, user: *mut c_void) -> bool {
    // SAFETY: see above; the decode that runs this callback holds the context mutably, so
    // nothing else touches the state meanwhile.
    let (d, t) = unsafe { (&mut *user.cast::<Deltas>(), &mut *t) };
    if t.op != sys::GGML_OP_MUL_MAT || t.src[0].is_null() || t.src[1].is_null() {
        return !ask;
    }
    let Some(weight) = d.adapted(t.src[0]) else {
        return !ask;
    };
    if ask {
        return true;
    }
    let n = t.ne[1] as usize;
    let owners = if n == d.tokens.len() {
        &d.tokens
    } else if n == d.outputs.len() {
        &d.outputs
    } else {
        d.unmatched = true;
        return true;
    };
    // SAFETY: a node's operand is a live tensor.
    let input = unsafe { &*t.src[1] };
    let (Some(x), Some(out)) = (rows_of(input), rows_of(t)) else {
        d.unmatched = true;
        return true;
    };
    if input.ne[1] as usize != n {
        d.unmatched = true;
        return true;
    }
    // Each row's update (none for rows of the base or of adapters that leave the weight alone).
    let mut updates: Vec<(usize, Update)> = Vec::with_capacity(n);
    for (row, owner) in owners.iter().enumerate() {
        let Some(lora) = owner.and_then(|id| d.loras.get(&id)) else {
            continue;
        };
        match lora.update(&weight, x.width, out.width) {
            Ok(Some(update)) => updates.push((row, update)),
            Ok(None) => {}
            Err(()) => d.unmatched = true,
        }
    }
    let rank = updates.iter().map(|(_, u)| u.rank()).max().unwrap_or(0);
    team::run(d.threads.min(updates.len()), &|thread, threads| {
        let mut h = vec![0.0; rank];
        for (row, update) in updates.iter().skip(thread).step_by(threads) {
            // SAFETY: row < n of both tensors, each row written by one thread only.
            unsafe { update.add(x.row(*row), out.row(*row), &mut h) };
        }
    });
    true
}

/// The crate's model as llama.cpp's pointer.
fn raw_model(model: &LlamaModel) -> *mut sys::llama_model {
    // SAFETY: `LlamaModel` is `#[repr(transparent)]` over a non-null `*mut llama_model`
    // (llama-cpp-2 =0.1.160, pinned in Cargo.toml); `Context::new` checks the pointer against
    // the model's vocabulary size before using it.
    unsafe { *(model as *const LlamaModel).cast::<*mut sys::llama_model>() }
}

/// A llama.cpp context with its batch and adapters.
pub struct Context {
    ptr: NonNull<sys::llama_context>,
    model: *mut sys::llama_model,
    /// Boxed: llama.cpp holds its address as the callback's user data.
    deltas: Box<Deltas>,
    batch: sys::llama_batch,
    capacity: usize,
    n_vocab: usize,
    next_id: AdapterId,
}

impl Context {
    /// A context over `model`, which must outlive it.
    pub fn new(model: &LlamaModel, params: &Params) -> Result<Self, String> {
        let raw = raw_model(model);
        // SAFETY: `raw` is the live model's pointer (checked here against the crate's view).
        let n_vocab = unsafe { sys::llama_vocab_n_tokens(sys::llama_model_get_vocab(raw)) };
        if n_vocab != model.n_vocab() {
            return Err("the llama.cpp model handle does not match the model".to_owned());
        }
        let mut deltas = Box::new(Deltas {
            threads: params.threads,
            ..Deltas::default()
        });
        // SAFETY: plain C defaults.
        let mut p = unsafe { sys::llama_context_default_params() };
        p.n_ctx = params.kv_tokens as u32;
        p.n_batch = params.batch as u32;
        p.n_ubatch = params.batch as u32;
        p.n_seq_max = params.sequences as u32;
        p.kv_unified = true;
        p.type_k = params.kv_type.into();
        p.type_v = params.kv_type.into();
        p.flash_attn_type = params.flash_attention;
        p.n_threads = params.threads as i32;
        p.n_threads_batch = params.threads as i32;
        p.cb_eval = Some(add_deltas);
        p.cb_eval_user_data = (&mut *deltas as *mut Deltas).cast();
        // SAFETY: a live model and filled-in parameters; the state outlives the context (both
        // are dropped together, the context first).
        let ptr = NonNull::new(unsafe { sys::llama_init_from_model(raw, p) })
            .ok_or("llama.cpp could not make a context")?;
        // SAFETY: allocates a token batch of `batch` entries with one sequence id each.
        let batch = unsafe { sys::llama_batch_init(params.batch as i32, 0, 1) };
        Ok(Self {
            ptr,
            model: raw,
            deltas,
            batch,
            capacity: params.batch,
            n_vocab: n_vocab as usize,
            next_id: 0,
        })
    }

    /// Load the LoRA GGUF at `path`: llama.cpp checks it against the model (and lets it go),
    /// the engine keeps its matrices.
    pub fn load_adapter(&mut self, path: &Path) -> Result<AdapterId, String> {
        let c_path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| "the path has a NUL byte".to_owned())?;
        // SAFETY: a live model and a NUL-terminated path; the adapter is attached nowhere and
        // freed at once.
        unsafe {
            let checked = sys::llama_adapter_lora_init(self.model, c_path.as_ptr());
            if checked.is_null() {
                return Err("llama.cpp could not load it (see the server log)".to_owned());
            }
            sys::llama_adapter_lora_free(checked);
        }
        let lora = Lora::read(path)?;
        let id = self.next_id;
        self.next_id += 1;
        self.deltas.loras.insert(id, lora);
        Ok(id)
    }

    /// Free adapter `id`.
    pub fn free_adapter(&mut self, id: AdapterId) {
        self.deltas.loras.remove(&id);
    }

    /// Empty the batch.
    pub fn clear(&mut self) {
        self.batch.n_tokens = 0;
        self.deltas.tokens.clear();
        self.deltas.outputs.clear();
    }

    /// Tokens in the batch.
    pub fn len(&self) -> usize {
        self.batch.n_tokens as usize
    }

    /// Add `token` at `pos` of sequence `seq` under `adapter`; `logits` asks for its row of
    /// logits. Returns `false` (adding nothing) when the batch is full.
    pub fn add(
        &mut self,
        token: LlamaToken,
        pos: i32,
        seq: i32,
        logits: bool,
        adapter: Option<AdapterId>,
    ) -> bool {
        let n = self.len();
        if n >= self.capacity {
            return false;
        }
        // SAFETY: n < capacity, the size the batch's arrays were allocated with (one sequence
        // id each).
        unsafe {
            *self.batch.token.add(n) = token.0;
            *self.batch.pos.add(n) = pos;
            *self.batch.n_seq_id.add(n) = 1;
            *(*self.batch.seq_id.add(n)) = seq;
            *self.batch.logits.add(n) = i8::from(logits);
        }
        self.batch.n_tokens += 1;
        self.deltas.tokens.push(adapter);
        if logits {
            self.deltas.outputs.push(adapter);
        }
        true
    }

    /// Different adapters among the rows of the last decode.
    pub fn adapters_in_batch(&self) -> usize {
        self.deltas.used.len()
    }

    /// Decode the batch, each row under its adapter.
    pub fn decode(&mut self) -> Result<(), String> {
        let d = &mut *self.deltas;
        d.used = d.tokens.iter().flatten().copied().collect();
        d.used.sort_unstable();
        d.used.dedup();
        d.unmatched = false;
        // SAFETY: a live context and a batch filled within its capacity.
        let code = unsafe { sys::llama_decode(self.ptr.as_ptr(), self.batch) };
        if code != 0 {
            return Err(format!("llama.cpp decode returned {code}"));
        }
        if self.deltas.unmatched {
            return Err("an adapter's update could not be applied in this batch".to_owned());
        }
        Ok(())
    }

    /// The logits of batch row `row` (a row that asked for them, in the last decode).
    pub fn logits(&self, row: i32) -> &[f32] {
        // SAFETY: llama.cpp returns the row's n_vocab logits, or null for a row without them.
        unsafe {
            let p = sys::llama_get_logits_ith(self.ptr.as_ptr(), row);
            if p.is_null() {
                &[]
            } else {
                std::slice::from_raw_parts(p, self.n_vocab)
            }
        }
    }

    /// Drop sequence `seq`'s cells from position `from` to `to` (the end when `None`).
    pub fn seq_rm(&mut self, seq: i32, from: usize, to: Option<usize>) {
        let to = to.map_or(-1, |t| t as i32);
        // SAFETY: a live context's memory.
        unsafe {
            let mem = sys::llama_get_memory(self.ptr.as_ptr());
            sys::llama_memory_seq_rm(mem, seq, from as i32, to);
        }
    }

    /// Give sequence `dst` the cells of `src` for positions `0..len` (shared, not copied).
    pub fn seq_cp(&mut self, src: i32, dst: i32, len: usize) {
        // SAFETY: a live context's memory.
        unsafe {
            let mem = sys::llama_get_memory(self.ptr.as_ptr());
            sys::llama_memory_seq_cp(mem, src, dst, 0, len as i32);
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: each freed once.
        unsafe {
            sys::llama_batch_free(self.batch);
            sys::llama_free(self.ptr.as_ptr());
        }
    }
}
