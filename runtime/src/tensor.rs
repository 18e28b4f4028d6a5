//! Host tensors: element type, concrete shape, row-major data.

use tessera_ir::DType;

/// Row-major element storage.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// f32 elements.
    F32(Vec<f32>),
    /// i64 elements.
    I64(Vec<i64>),
    /// bool elements.
    Bool(Vec<bool>),
}

/// A tensor on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Sizes, outermost first.
    pub shape: Vec<usize>,
    /// The elements.
    pub data: Data,
}

impl Tensor {
    /// An f32 tensor. The caller guarantees `data.len()` is the product of `shape`.
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Tensor {
        Tensor { shape, data: Data::F32(data) }
    }

    /// An i64 tensor.
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Tensor {
        Tensor { shape, data: Data::I64(data) }
    }

    /// A tensor of `dtype` from values computed in f64 (rounded to f32, truncated to i64,
    /// nonzero for bool).
    pub fn from_f64(dtype: DType, shape: Vec<usize>, values: impl Iterator<Item = f64>) -> Tensor {
        let data = match dtype {
            DType::F32 => Data::F32(values.map(|v| v as f32).collect()),
            DType::I64 => Data::I64(values.map(|v| v as i64).collect()),
            DType::Bool => Data::Bool(values.map(|v| v != 0.0).collect()),
        };
        Tensor { shape, data }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self.data {
            Data::F32(_) => DType::F32,
            Data::I64(_) => DType::I64,
            Data::Bool(_) => DType::Bool,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as f64.
    #[inline]
    pub fn get(&self, i: usize) -> f64 {
        match &self.data {
            Data::F32(v) => f64::from(v[i]),
            Data::I64(v) => v[i] as f64,
            Data::Bool(v) => f64::from(u8::from(v[i])),
        }
    }

    /// The elements as little-endian bytes (a bool as one byte), as safetensors files and
    /// device buffers hold them.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match &self.data {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Bool(v) => v.iter().map(|&b| u8::from(b)).collect(),
        }
    }

    /// All elements as f64.
    pub fn to_f64(&self) -> Vec<f64> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }

    /// The same elements with another shape of equal size.
    pub fn reshaped(mut self, shape: Vec<usize>) -> Tensor {
        self.shape = shape;
        self
    }

    /// Elements `idx` (in order) as a new tensor of `shape`.
    pub fn take(&self, shape: Vec<usize>, idx: impl Iterator<Item = usize>) -> Tensor {
        let data = match &self.data {
            Data::F32(v) => Data::F32(idx.map(|i| v[i]).collect()),
            Data::I64(v) => Data::I64(idx.map(|i| v[i]).collect()),
            Data::Bool(v) => Data::Bool(idx.map(|i| v[i]).collect()),
        };
        Tensor { shape, data }
    }
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// For each element of `out` (row-major), the offset of the element of a tensor of shape
/// `inp` that numpy broadcasting maps to it.
pub fn broadcast_offsets(out: &[usize], inp: &[usize]) -> Vec<usize> {
    let pad = out.len() - inp.len();
    let ist = strides(inp);
    // Stride per output axis (0 where the input is broadcast).
    let st: Vec<usize> = (0..out.len()).map(|a| if a < pad || inp[a - pad] == 1 { 0 } else { ist[a - pad] }).collect();
    strided_offsets(out, &st)
}

/// For each element of `out` (row-major), the offset `Σ index[a] * st[a]`.
pub(crate) fn strided_offsets(out: &[usize], st: &[usize]) -> Vec<usize> {
    let n: usize = out.iter().product();
    let mut offs = Vec::with_capacity(n);
    let mut idx = vec![0usize; out.len()];
    let mut off = 0usize;
    for _ in 0..n {
        offs.push(off);
        for a in (0..out.len()).rev() {
            idx[a] += 1;
            off += st[a];
            if idx[a] < out[a] {
                break;
            }
            off -= st[a] * idx[a];
            idx[a] = 0;
        }
    }
    offs
}
