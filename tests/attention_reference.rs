//! `nn.attention` (grouped-query, causal, with padding) against a plain nested-loop
//! implementation written here.
#![allow(clippy::needless_range_loop)] // the reference is written as the textbook loops on purpose

mod common;
use std::collections::HashMap;
use tessera::runtime::{self, Tensor};

const SRC: &str = r#"
import nn
model a(d = 12, heads = 4, kv = 2) {
  input x: f32[batch, seq, d]
  input attention_mask: i64[batch, seq]
  output y = nn.attention(x, heads, kv, mask = nn.causal, padding = attention_mask) as attn
}
"#;

fn mat(t: &Tensor) -> Vec<f64> {
    t.to_f64()
}

#[test]
fn gqa_causal_attention_matches_nested_loops() {
    let g = common::elaborate("a.tsr", SRC, &[]);
    let (b, s, d, h, kv) = (2usize, 5usize, 12usize, 4usize, 2usize);
    let hd = d / h;
    let dims: runtime::Dims = [("batch".to_string(), b as i64), ("seq".to_string(), s as i64)].into();
    let params = runtime::random_params(&g, &dims, 11).expect("params");
    let mut inputs = runtime::random_inputs(&g, &dims, 11, &HashMap::new()).expect("inputs");
    // Row 1 has its last two keys padded out.
    inputs.insert("attention_mask".into(), Tensor::i64(vec![b, s], vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0]));
    let out = runtime::run(&g, &dims, &inputs, &params).expect("runs");
    let y = mat(&out[0].1);

    let x = mat(&inputs["x"]);
    let w = |n: &str| mat(&params[&format!("attn.{n}.weight")]);
    let (wq, wk, wv, wo) = (w("q"), w("k"), w("v"), w("o"));
    let mask = [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]];
    let proj = |wt: &[f64], n: usize, bi: usize, t: usize, c: usize| (0..d).map(|k| x[(bi * s + t) * d + k] * wt[k * n + c]).sum::<f64>();
    for bi in 0..b {
        let mut concat = vec![0f64; s * d];
        for hh in 0..h {
            let kh = hh / (h / kv);
            for i in 0..s {
                let q: Vec<f64> = (0..hd).map(|e| proj(&wq, h * hd, bi, i, hh * hd + e)).collect();
                let mut scores = Vec::new();
                for j in 0..s {
                    let k: Vec<f64> = (0..hd).map(|e| proj(&wk, kv * hd, bi, j, kh * hd + e)).collect();
                    let dot: f64 = q.iter().zip(&k).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt();
                    scores.push(if j <= i && mask[bi][j] == 1 { dot } else { f64::NEG_INFINITY });
                }
                let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|v| (v - m).exp()).sum();
                for e in 0..hd {
                    concat[i * d + hh * hd + e] = (0..s).map(|j| (scores[j] - m).exp() / z * proj(&wv, kv * hd, bi, j, kh * hd + e)).sum();
                }
            }
        }
        for i in 0..s {
            for c in 0..d {
                let want: f64 = (0..d).map(|k| concat[i * d + k] * wo[k * d + c]).sum::<f64>();
                let got = y[(bi * s + i) * d + c];
                assert!((want - got).abs() < 1e-5, "b{bi} i{i} c{c}: {got} vs {want}");
            }
        }
    }
}
