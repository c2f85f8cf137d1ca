//! Custom autograd ops for training memory and speed: softmax and log-softmax over the last
//! dimension that keep only their output for the backward pass, and matmuls with a frozen weight
//! (dense, or stored quantized and dequantized per use) that differentiate in their input only.
//!
//! candle's fused `softmax_last_dim` has no backward, and the composed versions keep every
//! full-size intermediate (the f32 copy, the shifted scores, their exponentials, the quotient) for
//! the backward pass: for attention probabilities and for the logits over a large vocabulary that
//! is most of a step's memory. These ops compute the forward on a graph-free copy of their input
//! and differentiate analytically from their output, in f32:
//! softmax `dx = y ⊙ (dy − Σ dy ⊙ y)`; log-softmax `dx = dy − exp(y) Σ dy`.

use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Result, Shape, Storage, Tensor};

use crate::model_dir::quant::QuantizedWeight;

/// `softmax(x)` over the last dimension (f32 accumulation, output in `x`'s dtype).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.apply_op1(OutputOnly {
        name: "ferrotune-softmax",
        forward: candle_nn::ops::softmax_last_dim,
        backward: softmax_backward,
    })
}

/// `log_softmax(x)` over the last dimension, computed and returned in f32 whatever `x`'s dtype.
pub fn log_softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.apply_op1(OutputOnly {
        name: "ferrotune-log-softmax",
        forward: log_softmax_f32,
        backward: log_softmax_backward,
    })
}

fn softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let y = y.to_dtype(DType::F32)?;
    let dy = dy.to_dtype(DType::F32)?;
    let dot = (&y * &dy)?.sum_keepdim(D::Minus1)?;
    y.mul(&dy.broadcast_sub(&dot)?)
}

fn log_softmax_f32(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let shifted = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

fn log_softmax_backward(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
    let dy = dy.to_dtype(DType::F32)?;
    let total = dy.sum_keepdim(D::Minus1)?;
    dy - y.to_dtype(DType::F32)?.exp()?.broadcast_mul(&total)?
}

/// `x · wᵀ` for a frozen `w` of shape `[out, in]` and `x` of shape `[rows, in]`, differentiable in
/// `x` only. candle's matmul backward also computes the gradient of its right operand — for a
/// frozen weight a wasted weight-sized matmul and buffer per layer, a third of the compute and,
/// without gradient checkpointing, a second copy of the model in memory.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    frozen_linear_of(x, Frozen::Dense(w.clone()))
}

/// [`frozen_linear`] or [`frozen_quantized_linear`], as `w` is held.
pub(crate) fn frozen_linear_of(x: &Tensor, w: Frozen) -> Result<Tensor> {
    x.apply_op1(FrozenLinear(w))
}

/// `x · wᵀ` for a frozen weight stored quantized (on `x`'s device): the weight is
/// dequantized into a transient buffer for the forward pass and again for the input gradient in
/// the backward pass, so only one layer's dense weight exists at a time. Differentiable in `x`.
pub fn frozen_quantized_linear(x: &Tensor, w: &QuantizedWeight) -> Result<Tensor> {
    frozen_linear_of(x, Frozen::Quantized(w.clone()))
}

/// A frozen `[out, in]` weight: dense in the compute dtype, or quantized (QLoRA).
#[derive(Clone)]
pub enum Frozen {
    /// `[out, in]` in the compute dtype.
    Dense(Tensor),
    /// `[out, in]` quantized on the device, dequantized per use.
    Quantized(QuantizedWeight),
}

impl Frozen {
    /// The dense weight (dequantized afresh when stored quantized; a dense one keeps its dtype).
    pub fn weight(&self, dtype: DType, device: &candle_core::Device) -> Result<Tensor> {
        match self {
            Frozen::Dense(w) => Ok(w.clone()),
            Frozen::Quantized(q) => q.dequantize(device, dtype),
        }
    }
}

struct FrozenLinear(Frozen);

impl FrozenLinear {
    /// The dense `[out, in]` weight in `like`'s dtype.
    fn weight(&self, like: &Tensor) -> Result<Tensor> {
        self.0.weight(like.dtype(), like.device())
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        match self.0 {
            Frozen::Dense(_) => "ferrotune-frozen-linear",
            Frozen::Quantized(_) => "ferrotune-frozen-quantized-linear",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_graph_free(storage, layout, |x| x.matmul(&self.weight(x)?.t()?))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda_graph_free(storage, layout, |x| x.matmul(&self.weight(x)?.t()?))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.matmul(&self.weight(grad_res)?)?))
    }
}

/// Run `f` on a graph-free contiguous copy of `storage` and return a contiguous copy of its result
/// (candle's kernels are only reachable through tensors).
fn graph_free(
    storage: Storage,
    shape: &Shape,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<(Storage, Shape)> {
    let input = Tensor::from_storage(storage, shape.clone(), BackpropOp::none(), false);
    let out = f(&input)?;
    let (st, layout) = out.storage_and_layout();
    let copy = match &*st {
        Storage::Cpu(s) => Storage::Cpu(s.to_dtype(layout, s.dtype())?),
        #[cfg(feature = "cuda")]
        Storage::Cuda(s) => Storage::Cuda(s.to_dtype(layout, s.dtype())?),
        _ => candle_core::bail!("custom op: unsupported device"),
    };
    Ok((copy, out.shape().clone()))
}

fn cpu_graph_free(
    storage: &CpuStorage,
    layout: &Layout,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<(CpuStorage, Shape)> {
    let copy = storage.to_dtype(layout, storage.dtype())?;
    match graph_free(Storage::Cpu(copy), layout.shape(), f)? {
        (Storage::Cpu(s), shape) => Ok((s, shape)),
        _ => candle_core::bail!("custom op: output left the CPU"),
    }
}

#[cfg(feature = "cuda")]
fn cuda_graph_free(
    storage: &candle_core::CudaStorage,
    layout: &Layout,
    f: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<(candle_core::CudaStorage, Shape)> {
    let copy = storage.to_dtype(layout, storage.dtype())?;
    match graph_free(Storage::Cuda(copy), layout.shape(), f)? {
        (Storage::Cuda(s), shape) => Ok((s, shape)),
        _ => candle_core::bail!("custom op: output left the GPU"),
    }
}

/// An op whose forward runs on a graph-free tensor and whose backward needs only its output.
struct OutputOnly {
    name: &'static str,
    forward: fn(&Tensor) -> Result<Tensor>,
    /// `(output, gradient of the output) -> gradient of the input` (cast to the input's dtype
    /// afterwards).
    backward: fn(&Tensor, &Tensor) -> Result<Tensor>,
}

impl CustomOp1 for OutputOnly {
    fn name(&self) -> &'static str {
        self.name
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        cpu_graph_free(storage, layout, self.forward)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        cuda_graph_free(storage, layout, self.forward)
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((self.backward)(res, grad_res)?.to_dtype(arg.dtype())?))
    }
}

#[cfg(test)]
/// Helpers for the tests of custom ops: compare an op with candle's composed ops.
pub(crate) mod testing {
    use candle_core::backprop::GradStore;
    use candle_core::{Device, Tensor, Var};

    /// Largest absolute difference of two tensors of one shape.
    pub fn diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// How far `ours` is from `reference` (both functions of `x`) in value and in the gradient
    /// of `sum(y ⊙ w)` with respect to `x`; with both gradient stores.
    pub fn compare(
        x: &Var,
        ours: Tensor,
        reference: Tensor,
        w: &Tensor,
    ) -> (f32, f32, GradStore, GradStore) {
        let value = diff(&ours, &reference);
        let backward = |y: Tensor| y.mul(w).unwrap().sum_all().unwrap().backward().unwrap();
        let (g1, g2) = (backward(ours), backward(reference));
        let grad = diff(
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        (value, grad, g1, g2)
    }

    /// A trainable variable of normal values with standard deviation `std`.
    pub fn var(shape: &[usize], std: f32) -> Var {
        Var::from_tensor(&Tensor::randn(0f32, std, shape, &Device::Cpu).unwrap()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{compare, var};
    use super::*;
    use candle_core::Device;
    use candle_core::backprop::GradStore;

    #[test]
    fn matches_the_composed_softmax_in_value_and_gradient() {
        let x = var(&[2, 3, 5, 7], 3.0);
        // A non-contiguous view as input, and a weighting so the gradient is not trivial.
        let xt = x.as_tensor().transpose(2, 3).unwrap();
        let w = Tensor::randn(0f32, 1.0, (2, 3, 7, 5), &Device::Cpu).unwrap();
        let ours = softmax_last_dim(&xt).unwrap();
        let reference = candle_nn::ops::softmax(&xt, D::Minus1).unwrap();
        let (value, grad, _, _) = compare(&x, ours, reference, &w);
        assert!(value < 1e-6, "values differ by {value}");
        assert!(grad < 1e-6, "gradients differ by {grad}");
    }

    #[test]
    fn frozen_linear_matches_matmul_and_gives_no_weight_gradient() {
        let x = var(&[5, 7], 1.0);
        let w = Tensor::randn(0f32, 1.0, (3, 7), &Device::Cpu).unwrap();
        let g = Tensor::randn(0f32, 1.0, (5, 3), &Device::Cpu).unwrap();
        let ours = frozen_linear(x.as_tensor(), &w).unwrap();
        let reference = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        let (value, grad, g1, g2) = compare(&x, ours, reference, &g);
        assert!(value < 1e-5, "values differ by {value}");
        assert!(grad < 1e-5, "gradients differ by {grad}");
        // candle's matmul also stores a weight-sized gradient (under the id of `wᵀ`); ours not.
        let weight_sized = |store: &GradStore| {
            store
                .get_ids()
                .filter(|id| store.get_id(**id).is_some_and(|t| t.dims() == [7, 3]))
                .count()
        };
        assert_eq!(weight_sized(&g2), 1);
        assert_eq!(weight_sized(&g1), 0);
    }

    #[test]
    fn log_softmax_matches_the_composed_one_in_value_and_gradient() {
        let x = var(&[6, 11], 4.0);
        let w = Tensor::randn(0f32, 1.0, (6, 11), &Device::Cpu).unwrap();
        let ours = log_softmax_last_dim(x.as_tensor()).unwrap();
        let reference = candle_nn::ops::log_softmax(x.as_tensor(), D::Minus1).unwrap();
        let (value, grad, _, _) = compare(&x, ours, reference, &w);
        assert!(value < 1e-5, "values differ by {value}");
        assert!(grad < 1e-5, "gradients differ by {grad}");
    }
}
