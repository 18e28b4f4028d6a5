//! Reference semantics of the fused ops (softmax, norm, gemm, ffn, attention): the plain math
//! they stand for, computed in f64 and stored in f32, so that an optimised graph can be
//! checked against the graph it came from.

use crate::tensor::{broadcast_offsets, strides, Tensor};
use tessera_ir::{NormKind, ScoreFn, UnaryOp};

fn rows(t: &Tensor) -> (usize, usize) {
    let d = t.shape.last().copied().unwrap_or(1).max(1);
    (t.len() / d, d)
}

/// Stable softmax along `axis`.
pub fn softmax(x: &Tensor, axis: usize) -> Tensor {
    let shape = x.shape.clone();
    let size = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let mut out = vec![0f64; x.len()];
    for o in 0..outer {
        for j in 0..inner {
            let at = |k: usize| (o * size + k) * inner + j;
            let m = (0..size).map(|k| x.get(at(k))).fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = (0..size).map(|k| (x.get(at(k)) - m).exp()).collect();
            let s: f64 = e.iter().sum();
            for (k, ek) in e.iter().enumerate() {
                out[at(k)] = ek / s;
            }
        }
    }
    Tensor::from_f64(tessera_ir::DType::F32, shape, out.into_iter())
}

/// Layer or RMS norm over the last axis, then `* weight` and `+ bias` when given.
pub fn norm(x: &Tensor, kind: NormKind, eps: f64, weight: Option<&Tensor>, bias: Option<&Tensor>) -> Tensor {
    let (n, d) = rows(x);
    let mut out = Vec::with_capacity(x.len());
    for r in 0..n {
        let row: Vec<f64> = (0..d).map(|k| x.get(r * d + k)).collect();
        let mean = if kind == NormKind::Layer { row.iter().sum::<f64>() / d as f64 } else { 0.0 };
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (k, v) in row.iter().enumerate() {
            let y = (v - mean) * inv * weight.map_or(1.0, |w| w.get(k)) + bias.map_or(0.0, |b| b.get(k));
            out.push(y);
        }
    }
    Tensor::from_f64(tessera_ir::DType::F32, x.shape.clone(), out.into_iter())
}

/// `x + y`, `y` broadcast to `x`'s shape.
fn add_broadcast(x: &Tensor, y: &Tensor) -> Tensor {
    let offs = broadcast_offsets(&x.shape, &y.shape);
    Tensor::from_f64(tessera_ir::DType::F32, x.shape.clone(), (0..x.len()).map(|i| x.get(i) + y.get(offs[i])))
}

fn activate(x: &Tensor, act: UnaryOp) -> Tensor {
    Tensor::from_f64(tessera_ir::DType::F32, x.shape.clone(), (0..x.len()).map(|i| act.eval(x.get(i))))
}

/// `a @ b (+ bias) → act → (+ residual)`. `matmul` is the interpreter's product.
pub fn gemm(matmul: impl Fn(&Tensor, &Tensor) -> Tensor, a: &[&Tensor], bias: bool, act: Option<UnaryOp>, residual: bool) -> Tensor {
    let mut y = matmul(a[0], a[1]);
    if bias {
        y = add_broadcast(&y, a[2]);
    }
    if let Some(f) = act {
        y = activate(&y, f);
    }
    if residual {
        y = add_broadcast(&y, a[a.len() - 1]);
    }
    y
}

/// A plain or gated feed-forward block (see `Op::Ffn`).
pub fn ffn(matmul: impl Fn(&Tensor, &Tensor) -> Tensor, a: &[&Tensor], gated: bool, act: UnaryOp, bias: bool) -> Tensor {
    let mut h = matmul(a[0], a[1]);
    if bias {
        h = add_broadcast(&h, a[2]);
    }
    let hidden = if gated {
        let (n, w) = rows(&h);
        let half = w / 2;
        let mut shape = h.shape.clone();
        if let Some(last) = shape.last_mut() {
            *last = half;
        }
        let vals = (0..n).flat_map(|r| {
            let h = &h;
            (0..half).map(move |k| act.eval(h.get(r * w + k)) * h.get(r * w + half + k))
        });
        Tensor::from_f64(tessera_ir::DType::F32, shape, vals)
    } else {
        activate(&h, act)
    };
    let w_out = a[if bias { 3 } else { 2 }];
    let y = matmul(&hidden, w_out);
    if bias {
        add_broadcast(&y, a[4])
    } else {
        y
    }
}

/// Fused attention: for every query row, scores q·k (rounded to f32 as a matmul stores
/// them), the score function, a stable softmax over keys, and the weighted sum of values.
pub fn attention(f: &ScoreFn, a: &[&Tensor], out_shape: Vec<usize>) -> Tensor {
    let (q, k, v) = (a[0], a[1], a[2]);
    let r = out_shape.len();
    let (s, e) = (q.shape[q.shape.len() - 2], q.shape[q.shape.len() - 1]);
    let (t, ev) = (k.shape[k.shape.len() - 2], v.shape[v.shape.len() - 1]);
    let batch = &out_shape[..r - 2];
    let (oq, ok, ov) = (
        broadcast_offsets(batch, &q.shape[..q.shape.len() - 2]),
        broadcast_offsets(batch, &k.shape[..k.shape.len() - 2]),
        broadcast_offsets(batch, &v.shape[..v.shape.len() - 2]),
    );
    // Extra operands read at a score index [batch.., i, j]: strides aligned to the score shape
    // (0 along broadcast axes).
    let mut score_shape = batch.to_vec();
    score_shape.extend([s, t]);
    let leaf_strides: Vec<Vec<usize>> = a[3..]
        .iter()
        .map(|l| {
            let st = strides(&l.shape);
            let pad = score_shape.len().saturating_sub(l.shape.len());
            (0..score_shape.len()).map(|d| if d < pad || l.shape[d - pad] == 1 { 0 } else { st[d - pad] }).collect()
        })
        .collect();
    let batch_st = strides(batch);
    let heads: usize = batch.iter().skip(1).product();
    let mut out = Vec::with_capacity(out_shape.iter().product());
    let mut scores = vec![0f64; t];
    for (bi, ((&iq, &ik), &iv)) in oq.iter().zip(&ok).zip(&ov).enumerate() {
        let idx: Vec<usize> = batch_st.iter().zip(batch).map(|(&st, &n)| (bi / st.max(1)) % n.max(1)).collect();
        let b_index = idx.first().copied().unwrap_or(0);
        let h_index = if batch.len() > 1 { bi % heads.max(1) } else { 0 };
        let lbase: Vec<usize> = leaf_strides.iter().map(|ls| idx.iter().zip(ls).map(|(i, st)| i * st).sum()).collect();
        for i in 0..s {
            for (j, sc) in scores.iter_mut().enumerate() {
                let dot: f64 = (0..e).map(|p| q.get(iq * s * e + i * e + p) * k.get(ik * t * e + j * e + p)).sum();
                let raw = f64::from(dot as f32);
                let leaf = |n: u32| {
                    let n = n as usize;
                    let st = &leaf_strides[n];
                    a[3 + n].get(lbase[n] + i * st[r - 2] + j * st[r - 1])
                };
                let table = |n: u32, kk: i64| {
                    let tab = a[3 + n as usize];
                    if kk >= 0 && (kk as usize) < tab.len() {
                        tab.get(kk as usize)
                    } else {
                        f64::NAN
                    }
                };
                *sc = f.eval([raw, b_index as f64, h_index as f64, i as f64, j as f64], &leaf, &table);
            }
            let m = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = w.iter().sum();
            for c in 0..ev {
                // No keys at all: an empty weighted sum, 0 (as softmax over nothing, then @ v).
                let sum = w.iter().enumerate().map(|(j, wj)| wj * v.get(iv * t * ev + j * ev + c)).sum::<f64>();
                out.push(if t == 0 { 0.0 } else { sum / z });
            }
        }
    }
    Tensor::from_f64(tessera_ir::DType::F32, out_shape, out.into_iter())
}
