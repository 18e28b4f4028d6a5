//! Compile a small custom attention variant from source and print its IR before and after
//! the pass pipeline: `cargo run --example inspect_ir`.

const SOURCE: &str = r#"
import nn

# A custom variant: sliding window of 4 keys plus soft-capped scores.
model tiny(d = 16, heads = 2) {
  input x: f32[batch, seq, d]
  output y = nn.attention(x, heads, mask = nn.window(4), score = nn.softcap(30.0)) as attn
}
"#;

fn main() {
    let fe = tessera::Frontend::tsr("tiny.tsr", SOURCE, None, &[]);
    let Some(graph) = fe.graph else {
        eprint!("{}", tessera::render(&fe.diagnostics, &fe.sources, false, 100));
        std::process::exit(1);
    };
    println!("{graph}");
    match tessera::passes::run_pipeline(&graph, |_, _| {}) {
        Ok(opt) => println!("// after the pipeline: {} nodes (from {})\n{opt}", opt.len(), graph.len()),
        Err(e) => eprintln!("{e}"),
    }
}
