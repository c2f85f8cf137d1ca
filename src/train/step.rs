//! One micro-batch's forward and backward pass, accumulated into the step's gradients: either one
//! graph over the whole model, or with gradient checkpointing, where only the residual stream
//! between decoder layers is kept and each layer is recomputed in the backward pass.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::data::Batch;
use super::lora::LoraSet;
use super::model::{CausalLm, ForwardCtx};
use super::{TensorContext, TrainError};

/// What one micro-batch measured.
#[derive(Debug, Clone, Copy)]
pub struct MicroOutput {
    /// Its mean loss (unscaled).
    pub loss: f32,
    /// Labelled positions predicted right.
    pub correct: usize,
    /// Labelled positions.
    pub count: usize,
}

/// What a head makes of the last layer's output: a scalar in the graph whose gradient is the
/// loss's (the loss itself, or a surrogate with the same gradient), and what it measured.
pub type HeadResult = Result<(Tensor, MicroOutput), TrainError>;

/// Forward and backward of `batch`, adding `d(loss · scale)/d(adapter)` into `grads` (one slot
/// per variable of `lora`, in [`LoraSet::vars`] order).
pub fn loss_and_grads(
    model: &CausalLm,
    lora: &LoraSet,
    batch: &Batch,
    ctx: ForwardCtx,
    scale: f64,
    checkpointing: bool,
    grads: &mut [Option<Tensor>],
) -> Result<MicroOutput, TrainError> {
    let head = |x: &Tensor| -> HeadResult {
        let out = model.head_loss(x, &batch.labels)?;
        let loss = out.loss.to_scalar::<f32>().ctx("reading the loss")?;
        let measured = MicroOutput {
            loss,
            correct: out.correct,
            count: out.count,
        };
        Ok((out.loss, measured))
    };
    let pass = Pass {
        model,
        lora,
        batch,
        ctx,
        scale,
    };
    pass.run(checkpointing, grads, &head)
}

/// One micro-batch's forward and backward through the decoder, whatever the head.
pub struct Pass<'a> {
    /// The model.
    pub model: &'a CausalLm,
    /// Its adapters (whose gradients are collected).
    pub lora: &'a LoraSet,
    /// The packed batch.
    pub batch: &'a Batch,
    /// Dropout masks.
    pub ctx: ForwardCtx<'a>,
    /// Factor on the head's objective (1 / micro-batches per step).
    pub scale: f64,
}

impl Pass<'_> {
    /// Run `head` on the last layer's output and add `d(objective · scale)/d(adapter)` into
    /// `grads`; with `checkpointing`, only layer inputs are kept and each layer is recomputed.
    pub fn run(
        &self,
        checkpointing: bool,
        grads: &mut [Option<Tensor>],
        head: &dyn Fn(&Tensor) -> HeadResult,
    ) -> Result<MicroOutput, TrainError> {
        let (model, batch) = (self.model, self.batch);
        if !checkpointing {
            let x = model.hidden(&batch.input_ids, &batch.segments, self.ctx)?;
            let (objective, out) = head(&x)?;
            let scaled = (objective * self.scale).ctx("scaling the loss")?;
            accumulate(grads, self.lora, &scaled.backward().ctx("backward pass")?)?;
            return Ok(out);
        }
        self.checkpointed(grads, head)
    }

    fn checkpointed(
        &self,
        grads: &mut [Option<Tensor>],
        head: &dyn Fn(&Tensor) -> HeadResult,
    ) -> Result<MicroOutput, TrainError> {
        let (model, batch, ctx) = (self.model, self.batch, self.ctx);
        let x = model.embed_noised(&batch.input_ids, ctx).ctx("embedding")?;
        let shared = model.shared(&batch.segments).ctx("attention mask")?;
        // Forward: keep each layer's input, drop its graph.
        let mut inputs = Vec::with_capacity(model.num_layers());
        let mut x = x;
        for i in 0..model.num_layers() {
            let y = model
                .layer(i, &x, &shared, ctx)
                .ctx("forward pass")?
                .detach();
            inputs.push(x);
            x = y;
        }
        let top = Var::from_tensor(&x).ctx("checkpoint")?;
        drop(x);
        let (objective, out) = head(top.as_tensor())?;
        let store = (objective * self.scale)
            .and_then(|l| l.backward())
            .ctx("backward pass")?;
        accumulate(grads, self.lora, &store)?;
        let mut upstream = input_grad(&store, &top)?;
        drop((store, top));
        // Backward: recompute layer i from its input, then push the upstream gradient through it
        // (d/dθ of sum(y · g) is the vector-Jacobian product gᵀ ∂y/∂θ).
        while let Some(input) = inputs.pop() {
            let i = inputs.len();
            // Layer 0's input is the frozen embedding: no gradient needed there.
            let var = match i {
                0 => None,
                _ => Some(Var::from_tensor(&input).ctx("checkpoint")?),
            };
            let x = var.as_ref().map_or(&input, |v| v.as_tensor());
            let y = model.layer(i, x, &shared, ctx).ctx("recomputing a layer")?;
            let store = (y * &upstream)
                .and_then(|p| p.sum_all())
                .and_then(|s| s.backward())
                .ctx("backward pass")?;
            accumulate(grads, self.lora, &store)?;
            if let Some(v) = &var {
                upstream = input_grad(&store, v)?;
            }
        }
        Ok(out)
    }
}

/// The gradient reaching `var`, cut from the graph that produced it.
fn input_grad(store: &GradStore, var: &Var) -> Result<Tensor, TrainError> {
    store
        .get(var.as_tensor())
        .map(Tensor::detach)
        .ok_or_else(|| TrainError::Invalid("no gradient reached a checkpointed layer".into()))
}

/// Add the adapters' gradients in `store` into `grads`.
pub fn accumulate(
    grads: &mut [Option<Tensor>],
    lora: &LoraSet,
    store: &GradStore,
) -> Result<(), TrainError> {
    for (slot, var) in grads.iter_mut().zip(lora.vars()) {
        if let Some(g) = store.get(var.as_tensor()) {
            *slot = Some(match slot.take() {
                Some(acc) => (acc + g).ctx("accumulating gradients")?,
                None => g.clone(),
            });
        }
    }
    Ok(())
}
