//! Build script: gives the CUDA binary a RUNPATH that finds the CUDA libraries and the driver
//! where the GPU machines keep them, so it runs without `LD_LIBRARY_PATH`.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,-rpath,$ORIGIN:/usr/local/cuda/lib64:/usr/local/nvidia/lib64"
        );
    }
}
