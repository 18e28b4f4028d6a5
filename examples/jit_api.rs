//! The Rust API: compile a model from the standard library, give it weights, run it.
//!
//!     cargo run --release --example jit_api
use std::collections::HashMap;

fn main() -> Result<(), tessera::Error> {
    // Compile LLaMA with 2 layers of a small width: parse, check, optimise, JIT.
    let mut model = tessera::Compiler::new()
        .define("layers", 2)
        .define("d", 256)
        .define("heads", 8)
        .define("kv_heads", 2)
        .define("hidden", 512)
        .define("vocab", 1000)
        .compile_file("stdlib/llama.tsr")?;
    // Seeded random weights (a Hugging Face checkpoint would be `model.load_weights(path)?`).
    model.random_weights(0)?;
    let ids: Vec<i64> = (0..24).map(|i| (i * 37) % 1000).collect();
    let mut inputs = HashMap::new();
    inputs.insert("input_ids".to_string(), tessera::runtime::Tensor::i64(vec![1, 24], ids));
    inputs.insert("attention_mask".to_string(), tessera::runtime::Tensor::i64(vec![1, 24], vec![1; 24]));
    let start = std::time::Instant::now();
    let outputs = model.run(&inputs)?;
    for (name, t) in &outputs {
        let last: Vec<f64> = (0..5).map(|k| t.get(t.len() - 1000 + k)).collect();
        println!("{name}: {:?}, last position starts {last:.4?} ({:.1} ms)", t.shape, start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(())
}
