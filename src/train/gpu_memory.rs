//! Peak GPU memory of training steps. candle allocates with `cuMemAllocAsync` from the device's
//! current memory pool; the pool's used-memory high-water mark is the peak of memory held by live
//! tensors (what PyTorch calls `max_memory_allocated`). Nothing on the CPU.

use candle_core::Device;

/// Start a new measurement on `device` (no-op on the CPU).
pub fn reset_peak(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        let _ = cuda::set_high_water_mark(d, 0);
    }
    #[cfg(not(feature = "cuda"))]
    let _ = device;
}

/// Peak bytes in use on `device` since the last [`reset_peak`]; `None` on the CPU or when the
/// driver does not say.
pub fn peak_bytes(device: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return cuda::high_water_mark(d);
    }
    let _ = device;
    None
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::CudaDevice;
    use candle_core::cuda_backend::cudarc::driver::sys;

    fn pool(d: &CudaDevice) -> Option<sys::CUmemoryPool> {
        let stream = d.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread().ok()?;
        let mut pool = std::mem::MaybeUninit::<sys::CUmemoryPool>::uninit();
        // SAFETY: `pool` is a valid out-pointer; the device handle comes from a live context.
        unsafe { sys::cuDeviceGetMemPool(pool.as_mut_ptr(), ctx.cu_device()) }
            .result()
            .ok()?;
        // SAFETY: initialised by the successful call above.
        Some(unsafe { pool.assume_init() })
    }

    pub fn high_water_mark(d: &CudaDevice) -> Option<u64> {
        let pool = pool(d)?;
        let mut value: u64 = 0;
        // SAFETY: USED_MEM_HIGH is a cuuint64_t attribute; `value` outlives the call.
        unsafe {
            sys::cuMemPoolGetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut value as *mut u64).cast(),
            )
        }
        .result()
        .ok()?;
        Some(value)
    }

    pub fn set_high_water_mark(d: &CudaDevice, mut value: u64) -> Option<()> {
        let pool = pool(d)?;
        // SAFETY: as above; the driver only accepts 0 (a reset) for this attribute.
        unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut value as *mut u64).cast(),
            )
        }
        .result()
        .ok()
    }
}
