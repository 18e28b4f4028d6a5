//! The semantics of routing, shared by the interpreter and every backend: top-k selection
//! ([`topk`]) and the grouping of rows by expert that a route runs its body over
//! ([`Routing`], [`route_rows`]).

use crate::{Dims, RunError, Tensor};
use std::cmp::Ordering;
use std::collections::HashMap;

/// The order of top-k: larger first, NaN above every number, ties by the lower index (as
/// `torch.topk` on the CPU).
fn descending(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
    }
}

/// The `k` largest of each line along `axis` of a tensor of `shape` whose element `i` is
/// `get(i)`: (values, indices), each of the shape with `axis` of size `k`. A stable sort of
/// each line, so ties keep the lower index first. A `k` larger than the axis (a size bound at
/// run time) is an error.
pub fn topk(shape: &[usize], k: usize, axis: usize, get: impl Fn(usize) -> f64) -> Result<(Vec<f64>, Vec<i64>), RunError> {
    let n = shape[axis];
    if k > n {
        return Err(RunError::TopK { k, n, axis });
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    let (mut vals, mut idxs) = (vec![0.0; outer * k * inner], vec![0i64; outer * k * inner]);
    let mut order: Vec<usize> = Vec::with_capacity(n);
    let mut line: Vec<f64> = Vec::with_capacity(n);
    for o in 0..outer {
        for j in 0..inner {
            line.clear();
            line.extend((0..n).map(|t| get((o * n + t) * inner + j)));
            order.clear();
            order.extend(0..n);
            order.sort_by(|&a, &b| descending(line[a], line[b]));
            for (r, &t) in order.iter().take(k).enumerate() {
                let at = (o * k + r) * inner + j;
                vals[at] = line[t];
                idxs[at] = t as i64;
            }
        }
    }
    Ok((vals, idxs))
}

/// Which rows each expert receives: rows `rows[starts[e]..starts[e + 1]]` of the flattened
/// `[tokens, k]` choices go to expert `e`, in token order. `slot[i]` is the choice (`t·k + j`)
/// whose row is position `i` of that grouping.
#[derive(Clone, Debug, Default)]
pub struct Routing {
    /// Where each expert's rows start in the grouping (`experts + 1` entries).
    pub starts: Vec<usize>,
    /// The choice (`token·k + j`) of each grouped row.
    pub slot: Vec<usize>,
}

impl Routing {
    /// Groups the `[tokens, k]` choices `idx` by expert (a counting sort: stable, O(tokens·k)).
    /// An index outside `0..experts` is an error naming it.
    pub fn new(idx: &[i64], experts: usize, at: &str) -> Result<Routing, RunError> {
        let mut counts = vec![0usize; experts + 1];
        for &e in idx {
            if e < 0 || e as usize >= experts {
                return Err(RunError::IndexOutOfRange { index: e, size: experts, at: format!("{at}: an expert index") });
            }
            counts[e as usize + 1] += 1;
        }
        for e in 0..experts {
            counts[e + 1] += counts[e];
        }
        let mut next = counts.clone();
        let mut slot = vec![0; idx.len()];
        for (i, &e) in idx.iter().enumerate() {
            slot[next[e as usize]] = i;
            next[e as usize] += 1;
        }
        Ok(Routing { starts: counts, slot })
    }

    /// The rows of expert `e` (as positions in the grouping).
    pub fn rows(&self, e: usize) -> std::ops::Range<usize> {
        self.starts[e]..self.starts[e + 1]
    }
}

/// Runs a route expert by expert, the definition of its semantics: groups the rows of `x`
/// (`args[0]`, `[.., d]`) by the experts `args[1]` chooses, runs `body` (argument names to
/// values, and the number of rows) on each expert's rows and stacked slices, and sums the
/// outputs weighted by `args[2]` into a result of `shape`. Experts that receive no row do
/// not run.
pub fn route_rows(
    r: &tessera_ir::Route,
    args: &[&Tensor],
    shape: Vec<usize>,
    dims: &Dims,
    at: &str,
    mut body: impl FnMut(&HashMap<String, Tensor>, &Dims) -> Result<Tensor, RunError>,
) -> Result<Tensor, RunError> {
    let (x, idx, w) = (args[0], args[1], args[2]);
    let d = x.shape.last().copied().unwrap_or(1);
    // From the shape, not `len / d`: rows of width 0 are still rows.
    let tokens: usize = x.shape.iter().rev().skip(1).product();
    let k = idx.shape.last().copied().unwrap_or(1);
    let choices: Vec<i64> = (0..idx.len()).map(|i| idx.get(i) as i64).collect();
    let routing = Routing::new(&choices, r.experts, at)?;
    let names: Vec<String> = r.body.inputs().iter().map(|(n, _)| n.to_string()).collect();
    let d_out = shape.last().copied().unwrap_or(1);
    let mut out: Vec<f64> = vec![0.0; tokens * d_out];
    for e in 0..r.experts {
        let rows = routing.rows(e);
        if rows.is_empty() {
            continue;
        }
        let n = rows.len();
        let mut bound = HashMap::new();
        let picks = routing.slot[rows.clone()].to_vec();
        bound.insert(names[0].clone(), x.take(vec![n, d], picks.iter().flat_map(|&c| (c / k * d)..(c / k * d + d))));
        for (name, s) in names[1..].iter().zip(&args[3..]) {
            let inner: usize = s.shape[1..].iter().product();
            bound.insert(name.clone(), s.take(s.shape[1..].to_vec(), e * inner..(e + 1) * inner));
        }
        let mut dims = dims.clone();
        dims.insert(tessera_ir::Route::ROWS.to_string(), n as i64);
        let y = body(&bound, &dims)?;
        if y.shape != [n, d_out] {
            return Err(RunError::Internal(format!("a route body returned {:?} for [{n}, {d_out}]", y.shape)));
        }
        for (i, &c) in picks.iter().enumerate() {
            let (t, g) = (c / k, w.get(c));
            for j in 0..d_out {
                out[t * d_out + j] += g * y.get(i * d_out + j);
            }
        }
    }
    Ok(Tensor::from_f64(tessera_ir::DType::F32, shape, out.into_iter()))
}
