//! Binding a checkpoint's tensors to a graph's parameters through a checkpoint map
//! ([`WeightRule`]s): every parameter must be produced, with its declared shape and dtype;
//! checkpoint tensors that no parameter uses are reported back as a warning.

use crate::interp::{concrete, Dims};
use crate::{RunError, Tensor};
use std::collections::{BTreeSet, HashMap};
use tessera_ir::{fill_template, match_pattern, Graph, NameMap, Op, Parts, WeightExpr};

/// Parameters bound from a checkpoint, and what the checkpoint held that no parameter used.
#[derive(Debug)]
pub struct Bound {
    /// Parameter name → value.
    pub params: HashMap<String, Tensor>,
    /// Checkpoint tensors no parameter used, sorted.
    pub unused: Vec<String>,
}

/// Computes every parameter of `g` from the checkpoint `ck` (read from `path`) by `names`.
/// With no rules, or when the checkpoint holds every parameter under its own name, names are taken
/// as they are. All problems are collected into one [`RunError::Checkpoint`].
pub fn bind_checkpoint(g: &Graph, dims: &Dims, names: &NameMap, ck: &HashMap<String, Tensor>, path: &str) -> Result<Bound, RunError> {
    let params: Vec<(&str, &tessera_ir::TensorType)> = g
        .nodes()
        .iter()
        .filter_map(|n| match &n.op {
            Op::Param(name, _) => Some((name.as_str(), &n.ty)),
            _ => None,
        })
        .collect();
    let (rules, prefixes) = (&names.rules, &names.prefixes);
    let native = rules.is_empty() || params.iter().all(|(n, _)| ck.contains_key(*n));
    let mut used = BTreeSet::new();
    let mut errors = Vec::new();
    let mut out = HashMap::new();
    for (name, ty) in params {
        let expected = match concrete(&ty.shape, dims) {
            Ok(s) => s,
            Err(e) => {
                errors.push(format!("parameter `{name}`: {e}"));
                continue;
            }
        };
        let (expr, origin) = if native {
            (WeightExpr::Load(name.to_string()), String::new())
        } else {
            match rules.iter().find_map(|r| match_pattern(&r.pattern, name).map(|h| (r, h))) {
                Some((r, holes)) => (fill(&r.expr, &holes), format!(" (mapped at {})", r.origin)),
                None => {
                    errors.push(format!("parameter `{name}` has no line in the model's checkpoint map"));
                    continue;
                }
            }
        };
        let mut ctx = Ctx { ck, prefixes, used: &mut used, param: name, origin: &origin, leading: expected.first().copied() };
        let t = match ctx.eval(&expr) {
            Ok(t) => t,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        if t.dtype() != ty.dtype {
            errors.push(format!("parameter `{name}` is {} but checkpoint tensor {expr} is {}{origin}", ty.dtype, t.dtype()));
        } else if t.shape != expected {
            errors.push(format!("parameter `{name}` has shape {expected:?} but checkpoint tensor {expr} gives {:?}{origin}", t.shape));
        } else {
            out.insert(name.to_string(), t);
        }
    }
    if !errors.is_empty() {
        return Err(RunError::Checkpoint { path: path.to_string(), errors });
    }
    let ignored = |k: &str| {
        names.ignored.iter().any(|p| {
            std::iter::once(k).chain(prefixes.iter().filter_map(|pre| k.strip_prefix(pre.as_str()))).any(|k| match_pattern(p, k).is_some())
        })
    };
    let unused = ck.keys().filter(|k| !used.contains(k.as_str()) && !ignored(k)).cloned().collect::<BTreeSet<_>>().into_iter().collect();
    Ok(Bound { params: out, unused })
}

fn fill(e: &WeightExpr, holes: &HashMap<String, String>) -> WeightExpr {
    match e {
        WeightExpr::Load(t) => WeightExpr::Load(fill_template(t, holes)),
        WeightExpr::Transpose(x) => WeightExpr::Transpose(Box::new(fill(x, holes))),
        WeightExpr::Split { of, parts, index, axis, groups } => {
            WeightExpr::Split { of: Box::new(fill(of, holes)), parts: parts.clone(), index: *index, axis: *axis, groups: *groups }
        }
        WeightExpr::Reshape(x, s) => WeightExpr::Reshape(Box::new(fill(x, holes)), s.clone()),
        WeightExpr::RopeHalves(x, h) => WeightExpr::RopeHalves(Box::new(fill(x, holes)), *h),
        WeightExpr::Stack(x, hole) => WeightExpr::Stack(Box::new(fill(x, holes)), hole.clone()),
        WeightExpr::Or(a, b) => WeightExpr::Or(Box::new(fill(a, holes)), Box::new(fill(b, holes))),
        WeightExpr::NeedsConfig => WeightExpr::NeedsConfig,
    }
}

struct Ctx<'a> {
    ck: &'a HashMap<String, Tensor>,
    prefixes: &'a [String],
    used: &'a mut BTreeSet<String>,
    param: &'a str,
    origin: &'a str,
    /// The parameter's leading size: how many tensors a `stack` loads.
    leading: Option<usize>,
}

impl Ctx<'_> {
    fn fail(&self, what: String) -> String {
        format!("parameter `{}`: {what}{}", self.param, self.origin)
    }

    /// The checkpoint's name for `name`: as written, or with one of the prefixes.
    fn lookup(&self, name: &str) -> Option<String> {
        std::iter::once(name.to_string()).chain(self.prefixes.iter().map(|p| format!("{p}{name}"))).find(|n| self.ck.contains_key(n))
    }

    fn eval(&mut self, e: &WeightExpr) -> Result<Tensor, String> {
        match e {
            WeightExpr::NeedsConfig => Err(self.fail(
                "its checkpoint map line depends on the checkpoint's config.json, which was not given (pass --config or --hf)".into(),
            )),
            WeightExpr::Stack(x, hole) => {
                let n = self.leading.ok_or_else(|| self.fail(format!("stack({x}) makes a parameter of at least one axis")))?;
                let mut parts = Vec::with_capacity(n);
                for e in 0..n {
                    let holes = HashMap::from([(hole.clone(), e.to_string())]);
                    parts.push(self.eval(&fill(x, &holes))?);
                }
                let Some(first) = parts.first() else {
                    return Err(self.fail(format!("stack({x}) over 0 experts")));
                };
                let shape = first.shape.clone();
                if let Some(p) = parts.iter().position(|t| t.shape != shape || t.dtype() != first.dtype()) {
                    let t = &parts[p];
                    return Err(self.fail(format!(
                        "stack({x}): tensor {p} is {} {:?} where tensor 0 is {} {shape:?}",
                        t.dtype(),
                        t.shape,
                        first.dtype()
                    )));
                }
                let mut all = vec![n];
                all.extend(&shape);
                let per = first.len();
                let t = Tensor::from_f64(first.dtype(), all, parts.iter().flat_map(|t| (0..per).map(move |i| t.get(i))));
                Ok(t)
            }
            WeightExpr::Or(a, b) => {
                if a.loads().iter().all(|n| self.lookup(n).is_some()) {
                    self.eval(a)
                } else {
                    self.eval(b)
                }
            }
            WeightExpr::Load(name) => {
                let found = self.lookup(name).ok_or_else(|| {
                    let tried =
                        if self.prefixes.is_empty() { String::new() } else { format!(" (nor with prefix {})", self.prefixes.join(", ")) };
                    self.fail(format!("expected checkpoint tensor `{name}`, which the checkpoint does not have{tried}"))
                })?;
                self.used.insert(found.clone());
                self.ck.get(&found).cloned().ok_or_else(|| self.fail(format!("checkpoint tensor `{found}` vanished")))
            }
            WeightExpr::Transpose(x) => {
                let t = self.eval(x)?;
                let r = t.shape.len();
                if r < 2 {
                    return Err(self.fail(format!("cannot transpose {x}, of shape {:?}", t.shape)));
                }
                let (rows, cols) = (t.shape[r - 2], t.shape[r - 1]);
                let mut shape = t.shape.clone();
                shape.swap(r - 2, r - 1);
                let batch = t.len() / (rows * cols).max(1);
                let idx =
                    (0..batch).flat_map(move |b| (0..cols).flat_map(move |c| (0..rows).map(move |rr| b * rows * cols + rr * cols + c)));
                Ok(t.take(shape, idx))
            }
            WeightExpr::Split { of, parts, index, axis, groups } => {
                let t = self.eval(of)?;
                let r = t.shape.len() as i64;
                let a = if *axis < 0 { axis + r } else { *axis };
                let cut = usize::try_from(a)
                    .ok()
                    .filter(|&a| a < t.shape.len() && *groups > 0 && t.shape[a].is_multiple_of(*groups))
                    .and_then(|a| parts.range(t.shape[a] / groups, *index).map(|range| (a, range)));
                let Some((a, (start, part))) = cut else {
                    let how = match parts {
                        Parts::Equal(n) => format!("{n} equal parts"),
                        Parts::Sizes(s) => format!("parts of sizes {parts} (adding up to {})", s.iter().sum::<usize>()),
                    };
                    let grouped = if *groups > 1 { format!(" in each of {groups} groups") } else { String::new() };
                    return Err(self.fail(format!("cannot split {of}, of shape {:?}, into {how}{grouped} along axis {axis}", t.shape)));
                };
                let outer: usize = t.shape[..a].iter().product();
                let inner: usize = t.shape[a + 1..].iter().product();
                let (full, group) = (t.shape[a], t.shape[a] / groups);
                let mut shape = t.shape.clone();
                shape[a] = part * groups;
                let idx = (0..outer).flat_map(move |o| {
                    (0..*groups).flat_map(move |g| {
                        let first = g * group + start;
                        (first..first + part).flat_map(move |k| (0..inner).map(move |i| (o * full + k) * inner + i))
                    })
                });
                Ok(t.take(shape, idx))
            }
            WeightExpr::Reshape(x, dims) => {
                let t = self.eval(x)?;
                let known: i64 = dims.iter().filter(|&&d| d != -1).product();
                let holes = dims.iter().filter(|&&d| d == -1).count();
                let n = t.len() as i64;
                let ok = match holes {
                    0 => known == n,
                    1 => known > 0 && n % known == 0,
                    _ => false,
                };
                if !ok || dims.iter().any(|&d| d < -1) {
                    return Err(self.fail(format!("cannot reshape {x}, of shape {:?}, to {dims:?}", t.shape)));
                }
                let shape = dims.iter().map(|&d| if d == -1 { (n / known) as usize } else { d as usize }).collect();
                Ok(t.reshaped(shape))
            }
            WeightExpr::RopeHalves(x, heads) => {
                let t = self.eval(x)?;
                let (rows, cols) = (t.shape.first().copied().unwrap_or(0), t.shape.get(1).copied().unwrap_or(0));
                if t.shape.len() != 2 || rows % heads != 0 || (rows / heads) % 2 != 0 {
                    return Err(
                        self.fail(format!("rope_halves needs [heads * even head_dim, d] rows; {x} is {:?} for {heads} heads", t.shape))
                    );
                }
                let hd = rows / heads;
                let half = hd / 2;
                let shape = t.shape.clone();
                // New row h*hd + p*half + i comes from old row h*hd + 2i + p.
                let idx = (0..rows).flat_map(move |row| {
                    let (h, k) = (row / hd, row % hd);
                    let (p, i) = (k / half, k % half);
                    let src = h * hd + 2 * i + p;
                    (0..cols).map(move |c| src * cols + c)
                });
                Ok(t.take(shape, idx))
            }
        }
    }
}
