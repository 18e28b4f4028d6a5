//! Tensors in and out: safetensors files, dimension binding, seeded random parameters and
//! inputs.

use crate::interp::{concrete, Dims};
use crate::{RunError, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use tessera_ir::{DType, Graph, Init, Op};

fn file_err(path: &str, msg: impl ToString) -> RunError {
    RunError::File { path: path.to_string(), msg: msg.to_string() }
}

/// Reads every tensor of a safetensors file (memory-mapped). f32, f16, bf16, i64, i32 and bool
/// are accepted (f16 and bf16 widened to f32, i32 to i64). A name given twice in the header is
/// an error (the format's parser would keep one silently).
pub fn read_safetensors(path: &str) -> Result<HashMap<String, Tensor>, RunError> {
    let file = std::fs::File::open(path).map_err(|e| file_err(path, e))?;
    // SAFETY: the file is opened read-only and only read while mapped; a concurrent writer
    // could change the bytes under us, which at worst yields wrong numbers, not unsoundness
    // in this code (all reads are bounds-checked copies).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| file_err(path, e))?;
    if let Some(dup) = duplicate_name(&map) {
        return Err(file_err(path, format!("the checkpoint names tensor `{dup}` more than once")));
    }
    let st =
        SafeTensors::deserialize(&map).map_err(|e| file_err(path, format!("not a valid safetensors file (truncated or corrupt?): {e}")))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let b = view.data();
        let t = match view.dtype() {
            Dtype::F32 => Tensor::f32(shape, b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            Dtype::F16 => Tensor::f32(shape, b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
            Dtype::BF16 => {
                Tensor::f32(shape, b.chunks_exact(2).map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16)).collect())
            }
            Dtype::I64 => Tensor::i64(
                shape,
                b.chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect(),
            ),
            Dtype::I32 => Tensor::i64(shape, b.chunks_exact(4).map(|c| i64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect()),
            Dtype::BOOL => Tensor { shape, data: crate::Data::Bool(b.iter().map(|&x| x != 0).collect()) },
            other => {
                return Err(file_err(
                    path,
                    format!("tensor `{name}` has dtype {other:?}, which is not supported (use f32, f16, bf16, i64, i32 or bool)"),
                ))
            }
        };
        out.insert(name, t);
    }
    Ok(out)
}

/// The first tensor name that the header of a safetensors file gives twice, if any. A header
/// that does not parse is left to the format's own parser to report.
fn duplicate_name(bytes: &[u8]) -> Option<String> {
    struct Keys(Option<String>);
    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(k) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !seen.insert(k.clone()) && self.0.is_none() {
                    self.0 = Some(k);
                }
            }
            Ok(self.0)
        }
    }
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header = bytes.get(8..8usize.checked_add(len)?)?;
    let mut de = serde_json::Deserializer::from_slice(header);
    serde::Deserializer::deserialize_map(&mut de, Keys(None)).ok().flatten()
}

/// Writes tensors to a safetensors file, in the given order.
pub fn write_safetensors(path: &str, tensors: &[(String, Tensor)]) -> Result<(), RunError> {
    let bytes: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, t)| {
            let dt = match &t.data {
                crate::Data::F32(_) => Dtype::F32,
                crate::Data::I64(_) => Dtype::I64,
                crate::Data::Bool(_) => Dtype::BOOL,
            };
            (n.clone(), dt, t.shape.clone(), t.to_le_bytes())
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(n, dt, s, b)| safetensors::tensor::TensorView::new(*dt, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RunError::Internal(e.to_string()))?;
    safetensors::serialize_to_file(views, None, std::path::Path::new(path)).map_err(|e| file_err(path, e))
}

/// Fills `dims` with the sizes that the given inputs fix (an input declared `[batch, seq]`
/// with shape `[2, 7]` fixes both). Explicit entries must agree.
pub fn bind_dims(g: &Graph, inputs: &HashMap<String, Tensor>, dims: &mut Dims) -> Result<(), RunError> {
    for (name, v) in g.inputs() {
        let Some(t) = inputs.get(name) else { continue };
        let decl = &g.ty(v).shape;
        if decl.len() != t.shape.len() {
            return Err(RunError::BadTensor {
                kind: "input",
                name: name.into(),
                expected: g.ty(v).to_string(),
                got: format!("{}{:?}", t.dtype(), t.shape),
            });
        }
        for (d, &n) in decl.iter().zip(&t.shape) {
            // An axis declared `seq/4` of size n fixes seq = 4n.
            let (s, n) = match (d.as_sym(), d.as_quot()) {
                (Some(s), _) => (Some(s), n),
                (None, Some((s, k))) => (Some(s), n.saturating_mul(k as usize)),
                _ => (None, n),
            };
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            if let Some(s) = s {
                match dims.get(s) {
                    Some(&have) if have != n => {
                        return Err(RunError::DimConflict { input: name.to_string(), name: s.to_string(), value: n, other: have });
                    }
                    _ => {
                        dims.insert(s.to_string(), n);
                    }
                }
            }
        }
    }
    Ok(())
}

/// A stable 64-bit hash (FNV-1a), so that a parameter's random values depend only on its name
/// and the seed, not on the order of declaration.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Random parameters: each parameter with `init=normal(σ)` draws N(0, σ²) from a generator
/// seeded by `seed` and the parameter's name; `init=fill(v)` is constant.
pub fn random_params(g: &Graph, dims: &Dims, seed: u64) -> Result<HashMap<String, Tensor>, RunError> {
    let mut out = HashMap::new();
    for node in g.nodes() {
        let Op::Param(name, init) = &node.op else { continue };
        let shape = concrete(&node.ty.shape, dims)?;
        let n: usize = shape.iter().product();
        let t = match *init {
            Init::Fill(v) => Tensor::from_f64(node.ty.dtype, shape, std::iter::repeat_n(v, n)),
            Init::Normal(std) => {
                let mut rng = StdRng::seed_from_u64(seed ^ fnv(name));
                let dist = Normal::new(0.0, std.abs()).map_err(|_| RunError::BadInit { name: name.clone(), std })?;
                Tensor::from_f64(node.ty.dtype, shape, (0..n).map(|_| dist.sample(&mut rng)))
            }
        };
        out.insert(name.clone(), t);
    }
    Ok(out)
}

/// Checks, before a run, the indices that gathers take straight from an input (token ids) or
/// from positions (`arange(seq)`): an id outside its table names the input, where it is and
/// the table (the parameter) with its size; a sequence longer than a position table names
/// the size. (Gathers of computed indices are still checked as they run.)
pub fn check_indices(g: &Graph, dims: &Dims, inputs: &HashMap<String, Tensor>) -> Result<(), RunError> {
    // The node a value comes from, through ops that only move elements (a cast changes them:
    // -0.3 as an index is 0).
    let origin = |mut v: tessera_ir::ValueId| loop {
        let n = g.node(v);
        match n.op {
            Op::Reshape | Op::Broadcast | Op::Transpose(_) => v = n.inputs[0],
            _ => return n,
        }
    };
    for node in g.nodes() {
        let Op::Gather { axis } = node.op else { continue };
        let Some(rows) = g.ty(node.inputs[0]).shape.get(axis).and_then(|d| d.eval(dims)) else { continue };
        let table = match &origin(node.inputs[0]).op {
            Op::Param(name, _) => format!("parameter `{name}`"),
            _ => "the table".to_string(),
        };
        let at = node.span.display_in(&g.files).map_or_else(String::new, |l| format!(", gathered at {l}"));
        let src = origin(node.inputs[1]);
        match &src.op {
            Op::Input(name) if src.ty.dtype == tessera_ir::DType::I64 => {
                let Some(t) = inputs.get(name) else { continue };
                let bad = (0..t.len()).map(|i| (i, t.get(i))).find(|&(_, x)| x < 0.0 || x >= rows as f64 || x.is_nan());
                if let Some((i, x)) = bad {
                    let position =
                        crate::tensor::strides(&t.shape).iter().zip(&t.shape).map(|(s, n)| (i / s.max(&1)) % n.max(&1)).collect();
                    return Err(RunError::IndexInput { input: name.clone(), value: x, position, rows, table, at });
                }
            }
            Op::Iota { axis: ia } => {
                let Some(len) = src.ty.shape.get(*ia).and_then(|d| d.eval(dims)) else { continue };
                if len > rows {
                    let size = &src.ty.shape[*ia];
                    let named = if size.as_known().is_some() { String::new() } else { format!(" ({size} = {len})") };
                    return Err(RunError::TooManyPositions { len, named, rows, table, at });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Random inputs for those not given: an i64 input that indexes a table (`embed[ids]`) draws
/// uniform ids below the table's size; other i64 inputs (masks) are ones; f32 inputs are
/// N(0, 1); bool inputs are true.
pub fn random_inputs(g: &Graph, dims: &Dims, seed: u64, given: &HashMap<String, Tensor>) -> Result<HashMap<String, Tensor>, RunError> {
    let mut out = HashMap::new();
    for (name, v) in g.inputs() {
        if given.contains_key(name) {
            continue;
        }
        let ty = g.ty(v);
        let shape = concrete(&ty.shape, dims)?;
        let n: usize = shape.iter().product();
        let mut rng = StdRng::seed_from_u64(seed ^ fnv(name) ^ 0x5eed);
        let range = g.nodes().iter().find_map(|node| match node.op {
            Op::Gather { axis } if node.inputs.get(1) == Some(&v) => g.ty(node.inputs[0]).shape.get(axis).and_then(|d| d.eval(dims)),
            _ => None,
        });
        let t = match (ty.dtype, range) {
            (DType::I64, Some(r)) => Tensor::i64(shape, (0..n).map(|_| rng.random_range(0..r.max(1))).collect()),
            (DType::I64, None) => Tensor::i64(shape, vec![1; n]),
            (DType::F32, _) => {
                let dist = Normal::new(0.0f64, 1.0).map_err(|e| RunError::Internal(e.to_string()))?;
                Tensor::from_f64(DType::F32, shape, (0..n).map(|_| dist.sample(&mut rng)))
            }
            (DType::Bool, _) => Tensor::from_f64(DType::Bool, shape, std::iter::repeat_n(1.0, n)),
        };
        out.insert(name.to_string(), t);
    }
    Ok(out)
}
