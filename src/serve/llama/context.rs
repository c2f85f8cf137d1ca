//! The llama.cpp context the engine thread decodes with, through the C API: one KV cache shared
//! by every sequence, the LoRA adapters it owns, and a row mask that lets one decode serve
//! sequences of different adapters at once.
//!
//! llama.cpp applies every attached adapter to every row of a batch: each adapted weight `W`
//! computes `W·x + s·B·(A·x)` for each adapter. With the adapters of all sequences in the batch
//! attached, the graph's evaluation callback zeroes, as soon as each `A·x` product is computed,
//! the rows of tokens that belong to another adapter (or to the base), so their `B·(A·x)` adds
//! nothing: each row gets its own adapter's delta and only that. Which adapter an `A` tensor
//! belongs to is recorded once, when the adapter is loaded, from a one-token decode with only
//! that adapter attached.
//!
//! The crate's safe context has no evaluation callback and attaches one adapter at a time, so
//! this module calls llama.cpp directly; the model stays the crate's [`LlamaModel`].

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::path::Path;
use std::ptr::NonNull;

use llama_cpp_2::context::params::KvCacheType;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_sys_2 as sys;

/// An adapter loaded into a [`Context`]: a handle, valid until [`Context::free_adapter`].
pub type AdapterId = u32;

/// How a [`Context`] is made.
pub struct Params {
    /// KV cells in all.
    pub kv_tokens: usize,
    /// Most tokens per decode, all in one micro-batch (the row mask counts rows per decode).
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

/// Which adapter each row of the decode in flight belongs to, read by [`mask_rows`].
#[derive(Default)]
struct Mask {
    /// The adapter each LoRA `A` tensor (by address) belongs to.
    owners: HashMap<usize, AdapterId>,
    /// Set while a new adapter's first decode records its `A` tensors.
    recording: Option<AdapterId>,
    /// Whether rows are masked in this decode (not when one adapter, or none, serves them all).
    active: bool,
    /// Each token's adapter, in batch order (`None`: the base).
    tokens: Vec<Option<AdapterId>>,
    /// Each output row's adapter (the last layer's feed-forward runs on output rows only).
    outputs: Vec<Option<AdapterId>>,
    /// A product whose row count matched neither list: its rows were left unmasked.
    unmatched: bool,
}

/// Whether `name` (a NUL-padded C name) is a LoRA `A` tensor's.
fn is_lora_a(name: &[std::os::raw::c_char]) -> bool {
    let bytes: Vec<u8> = name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    bytes.ends_with(b".lora_a")
}

/// The scheduler's evaluation callback. Asked about each node before it is computed (`ask`),
/// it wants the `A·x` products of attached adapters; told one is computed, it zeroes the rows of
/// other adapters' tokens. Returning `true` when told means "go on".
///
/// # Safety
/// `user` is the context's boxed [`Mask`] and `t` a live node of the graph being computed on
/// the CPU (its data in host memory), as llama.cpp's scheduler passes them.
unsafe extern "C" fn mask_rows(t: *mut sys::ggml_tensor, ask: bool, user: *mut c_void) -> bool {
    // SAFETY: see above; the decode that runs this callback holds the context mutably, so
    // nothing else touches the mask meanwhile.
    let (mask, t) = unsafe { (&mut *user.cast::<Mask>(), &mut *t) };
    if t.op != sys::GGML_OP_MUL_MAT || t.src[0].is_null() {
        return !ask;
    }
    let a = t.src[0];
    if let Some(id) = mask.recording {
        // SAFETY: a node's source is a live tensor.
        if ask && is_lora_a(unsafe { &(*a).name }) {
            mask.owners.insert(a as usize, id);
        }
        return !ask;
    }
    if !mask.active {
        return !ask;
    }
    let Some(&owner) = mask.owners.get(&(a as usize)) else {
        return !ask;
    };
    if ask {
        return true;
    }
    let rows = t.ne[1] as usize;
    let owners = if rows == mask.tokens.len() {
        &mask.tokens
    } else if rows == mask.outputs.len() {
        &mask.outputs
    } else {
        mask.unmatched = true;
        return true;
    };
    if t.type_ != sys::GGML_TYPE_F32 || t.ne[2] != 1 || t.ne[3] != 1 || t.data.is_null() {
        mask.unmatched = true;
        return true;
    }
    let width = t.ne[0] as usize;
    for (j, row_owner) in owners.iter().enumerate() {
        if *row_owner != Some(owner) {
            // SAFETY: row j of an f32 [width, rows] tensor lies at data + j·nb[1].
            unsafe {
                let row = t.data.cast::<u8>().add(j * t.nb[1]).cast::<f32>();
                std::ptr::write_bytes(row, 0, width);
            }
        }
    }
    true
}

/// The crate's model as llama.cpp's pointer.
fn raw_model(model: &LlamaModel) -> *mut sys::llama_model {
    // SAFETY: `LlamaModel` is `#[repr(transparent)]` over a non-null `*mut llama_model`
    // (llama-cpp-2 =0.1.160, pinned in Cargo.toml); `Context::new` checks the pointer against
    // the model's vocabulary size before using it.
    unsafe { *(model as *const LlamaModel).cast::<*mut sys::llama_model>() }
}

/// A llama.cpp context with its batch, adapters and row mask.
pub struct Context {
    ptr: NonNull<sys::llama_context>,
    model: *mut sys::llama_model,
    /// Boxed: llama.cpp holds its address as the callback's user data.
    mask: Box<Mask>,
    batch: sys::llama_batch,
    capacity: usize,
    n_vocab: usize,
    adapters: HashMap<AdapterId, NonNull<sys::llama_adapter_lora>>,
    /// The adapters attached now, in the order given to llama.cpp.
    attached: Vec<AdapterId>,
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
        let mut mask = Box::<Mask>::default();
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
        p.cb_eval = Some(mask_rows);
        p.cb_eval_user_data = (&mut *mask as *mut Mask).cast();
        // SAFETY: a live model and filled-in parameters; the mask outlives the context (both
        // are dropped together, the context first).
        let ptr = NonNull::new(unsafe { sys::llama_init_from_model(raw, p) })
            .ok_or("llama.cpp could not make a context")?;
        // SAFETY: allocates a token batch of `batch` entries with one sequence id each.
        let batch = unsafe { sys::llama_batch_init(params.batch as i32, 0, 1) };
        Ok(Self {
            ptr,
            model: raw,
            mask,
            batch,
            capacity: params.batch,
            n_vocab: n_vocab as usize,
            adapters: HashMap::new(),
            attached: Vec::new(),
            next_id: 0,
        })
    }

    /// Load the LoRA GGUF at `path` and record which `A` tensors are its, with a one-token
    /// decode in sequence `spare` (cleared after).
    pub fn load_adapter(&mut self, path: &Path, spare: i32) -> Result<AdapterId, String> {
        let c_path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| "the path has a NUL byte".to_owned())?;
        // SAFETY: a live model and a NUL-terminated path.
        let lora =
            NonNull::new(unsafe { sys::llama_adapter_lora_init(self.model, c_path.as_ptr()) })
                .ok_or("llama.cpp could not load it (see the server log)")?;
        let id = self.next_id;
        self.next_id += 1;
        self.adapters.insert(id, lora);
        self.attach(&[id])?;
        self.mask.recording = Some(id);
        self.clear();
        self.add(LlamaToken(0), 0, spare, true, Some(id));
        let decoded = self.decode();
        self.mask.recording = None;
        self.seq_rm(spare, 0, None);
        let recorded = self.mask.owners.values().any(|o| *o == id);
        match decoded {
            Ok(()) if recorded => Ok(id),
            result => {
                self.free_adapter(id);
                Err(result
                    .err()
                    .unwrap_or_else(|| "it adapts no weight this model has".to_owned()))
            }
        }
    }

    /// Detach and free adapter `id`.
    pub fn free_adapter(&mut self, id: AdapterId) {
        if self.attached.contains(&id) {
            let rest: Vec<AdapterId> = self.attached.iter().copied().filter(|a| *a != id).collect();
            if let Err(e) = self.attach(&rest) {
                tracing::error!(error = %e, "detaching an adapter failed; it stays allocated");
                return;
            }
        }
        self.mask.owners.retain(|_, owner| *owner != id);
        if let Some(lora) = self.adapters.remove(&id) {
            // SAFETY: loaded by this context, attached nowhere now, freed once.
            unsafe { sys::llama_adapter_lora_free(lora.as_ptr()) };
        }
    }

    /// Attach exactly `ids` (scale 1 each); nothing changes when they are attached already.
    /// Another set makes llama.cpp rebuild its compute graph at the next decode.
    pub fn attach(&mut self, ids: &[AdapterId]) -> Result<(), String> {
        let mut wanted = ids.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        if wanted == self.attached {
            return Ok(());
        }
        let mut ptrs = Vec::with_capacity(wanted.len());
        for id in &wanted {
            let lora = self.adapters.get(id).ok_or("no such adapter")?;
            ptrs.push(lora.as_ptr());
        }
        let mut scales = vec![1.0f32; ptrs.len()];
        // SAFETY: live adapters of this context's model; llama.cpp copies both arrays.
        let code = unsafe {
            sys::llama_set_adapters_lora(
                self.ptr.as_ptr(),
                ptrs.as_mut_ptr(),
                ptrs.len(),
                scales.as_mut_ptr(),
            )
        };
        if code != 0 {
            return Err(format!("llama.cpp refused the adapter set ({code})"));
        }
        self.attached = wanted;
        Ok(())
    }

    /// Empty the batch.
    pub fn clear(&mut self) {
        self.batch.n_tokens = 0;
        self.mask.tokens.clear();
        self.mask.outputs.clear();
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
        self.mask.tokens.push(adapter);
        if logits {
            self.mask.outputs.push(adapter);
        }
        true
    }

    /// Decode the batch. Rows are masked when they span more than what is attached serves whole.
    pub fn decode(&mut self) -> Result<(), String> {
        let whole = match self.attached.as_slice() {
            [] => self.mask.tokens.iter().all(Option::is_none),
            [only] => self.mask.tokens.iter().all(|t| *t == Some(*only)),
            _ => false,
        };
        self.mask.active = !whole;
        self.mask.unmatched = false;
        // SAFETY: a live context and a batch filled within its capacity.
        let code = unsafe { sys::llama_decode(self.ptr.as_ptr(), self.batch) };
        if code != 0 {
            return Err(format!("llama.cpp decode returned {code}"));
        }
        if self.mask.unmatched {
            return Err("an adapter's rows could not be told apart in this batch".to_owned());
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
        // SAFETY: each freed once, the context before the adapters it may still hold.
        unsafe {
            sys::llama_batch_free(self.batch);
            sys::llama_free(self.ptr.as_ptr());
            for lora in self.adapters.values() {
                sys::llama_adapter_lora_free(lora.as_ptr());
            }
        }
    }
}
