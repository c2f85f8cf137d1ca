use candle_core::{DType, Device};
use ferrotune::train::model::{CausalLm, KvCache};
use std::time::Instant;
fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    let spec = ferrotune::train::lora::LoraSpec { rank: 8, alpha: 32.0, dropout: 0.05, targets: ["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"].map(String::from).to_vec() };
    let (m, _l) = CausalLm::load(&dir, Some(&spec), 0, &Device::Cpu, DType::F32).unwrap();
    for rows in [1usize, 16] {
        let prompts: Vec<Vec<u32>> = (0..rows)
            .map(|r| (0..30 + r as u32).map(|i| 100 + i).collect())
            .collect();
        let mut c = KvCache::default();
        let t = Instant::now();
        m.prefill(&prompts, &mut c).unwrap();
        println!("rows {rows} prefill: {:?}", t.elapsed());
        let t = Instant::now();
        for i in 0..10 {
            m.decode_step(&vec![200 + i; rows], &mut c).unwrap();
        }
        println!("rows {rows} per step: {:?}", t.elapsed() / 10);
    }
}
