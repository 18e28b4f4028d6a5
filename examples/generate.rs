//! Generation from Rust: a session over the state Tessera derives from the model (here LLaMA's
//! KV caches), prompts of different lengths decoded together, tokens as they are chosen.
//!
//!     cargo run --release --example generate
use tessera::GenerateOptions;

fn main() -> Result<(), tessera::Error> {
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
    // A session holds the state of its rows, here for up to 64 positions each.
    let mut session = model.session(64)?;
    for s in &session.generation().states {
        println!("state {}: {} ({})", s.name, s.ty, s.kind.describe());
    }
    let prompts = vec![vec![1, 17, 42, 7, 99], vec![5, 6]];
    let out = session.generate(&prompts, &GenerateOptions::greedy(8), |row, token| println!("row {row}: {token}"))?;
    for (r, tokens) in out.tokens.iter().enumerate() {
        println!("row {r}: {:?} -> {tokens:?}", prompts[r]);
    }
    println!(
        "state {} KiB; first token {:.1} ms, then {:.2} ms per step",
        session.state_bytes() / 1024,
        out.first_token_seconds * 1e3,
        out.decode_seconds * 1e3 / out.decode_steps.max(1) as f64
    );
    // The same, one step at a time: prefill a prompt, then feed each chosen token back.
    let mut inputs = std::collections::HashMap::new();
    inputs.insert("input_ids".to_string(), tessera::runtime::Tensor::i64(vec![1, 3], vec![1, 17, 42]));
    let mut logits = session.prefill(&inputs)?;
    for _ in 0..3 {
        let row = logits.to_f64();
        let next = (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best }) as i64;
        print!("{next} ");
        logits = session.step(&[next])?;
    }
    println!();
    Ok(())
}
