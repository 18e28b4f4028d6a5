//! Generation: what a causal model keeps between calls, derived from its optimised graph, and
//! the two programs that share it.
//!
//! Assumes a verified, optimised graph with an `i64[batch, S]` token input (`decoder_input_ids`
//! where there is one, else `input_ids`; `S` a named size, the *step*) and an output `logits`
//! `[batch, S, vocab]`. Every op either works position by position along the step or is one of
//! the constructs whose history has a derived state:
//!
//! | construct | state | decode step |
//! |---|---|---|
//! | `attention` whose keys are the step's positions and whose mask hides later keys | its k and v operands (KV heads only), `[.., past, e]` | reads `concat(state, new)`; the query index `I` is offset by `past` |
//! | `attention` whose keys do not depend on the step (cross-attention) | its k and v, computed once | reads the state as is |
//! | causal `window op=conv` along the step (`pad_left = size - 1`) | its last `size - 1` inputs | convolves `concat(state, new)` |
//! | `scan` along the step | its final carried states | starts from the state |
//! | `concat(fill, x[.., :S - c])` along the step (a token shift) | the last `c` positions of `x` | shifts `concat(state, new)` |
//! | `iota` along the step (positions) | (none) | counts from `past` |
//!
//! Guarantees: `prefill` is the graph with each state added as an output; `decode` reads the
//! same parameters, the token input, the states (named `state.<where>.<what>`, of the types in
//! [`State::ty`], where the size [`PAST`] counts the positions already seen) and the inputs that
//! do not vary along the step; it returns `logits` for the new positions and the updated states.
//! Running prefill on a prompt and decode on the next tokens gives the logits of running the
//! graph on the whole sequence. The padding mask `attention_mask` reads as ones (every token
//! is real); another per-position input is an error. Anything else that mixes positions (a bidirectional mask, a sum over the
//! sequence, a Fourier transform along it, top-k over positions) is a [`StateError`] naming
//! the op, with its source location.
//!
//! Does not: keep a ring buffer for windowed attention (the cache holds every position; the
//! mask hides the old ones), or cache anything inside `scan`/`route` bodies (they see one
//! position or one expert's rows).

use std::collections::HashMap;
use tessera_ir::{scan_results, verify, BinaryOp, DType, Dim, Graph, Node, Op, SNode, ScoreFn, Span, TensorType, ValueId, Var};

/// The size naming how many positions the state already holds, in the decode program.
pub const PAST: &str = "past";

/// The one per-position input besides the tokens that generation feeds (as ones: every token
/// is real).
pub const MASK: &str = "attention_mask";

/// What a state holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateKind {
    /// Keys of a causal attention, one per position.
    Keys,
    /// Values of a causal attention, one per position.
    Values,
    /// Keys of a cross-attention, computed once by prefill.
    CrossKeys,
    /// Values of a cross-attention, computed once by prefill.
    CrossValues,
    /// The carried state of a recurrence.
    Recurrent,
    /// The last inputs of a causal convolution.
    ConvTail,
    /// The last positions of a token shift.
    Shift,
}

impl StateKind {
    /// A short description for listings.
    pub fn describe(self) -> &'static str {
        match self {
            StateKind::Keys => "keys of causal attention",
            StateKind::Values => "values of causal attention",
            StateKind::CrossKeys => "cross-attention keys (once)",
            StateKind::CrossValues => "cross-attention values (once)",
            StateKind::Recurrent => "recurrent state",
            StateKind::ConvTail => "causal convolution inputs",
            StateKind::Shift => "token shift",
        }
    }

    /// Whether decode returns an updated copy (cross-attention states are read only).
    pub fn updated(self) -> bool {
        !matches!(self, StateKind::CrossKeys | StateKind::CrossValues)
    }
}

/// One tensor kept between calls.
#[derive(Clone, Debug, PartialEq)]
pub struct State {
    /// The name of the decode input and of the prefill/decode output (`state.layers.0.self_attn.k`).
    pub name: String,
    /// What it holds.
    pub kind: StateKind,
    /// Its type as decode reads it; [`PAST`] names the positions already seen.
    pub ty: TensorType,
    /// The op it belongs to.
    pub span: Span,
}

/// The two programs of generation.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The whole graph, with each state as an extra output.
    pub prefill: Graph,
    /// One call per new position(s): tokens and states in, logits and states out.
    pub decode: Graph,
    /// The states, in the order decode reads them.
    pub states: Vec<State>,
    /// The token input's name.
    pub tokens: String,
    /// The named size of the step (the token input's second axis).
    pub step: String,
}

/// Why a graph's state cannot be derived.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct StateError {
    /// Where (the op's span; unknown for whole-graph problems).
    pub span: Span,
    /// What is wrong, naming the op.
    pub message: String,
}

fn err<T>(span: Span, message: impl Into<String>) -> Result<T, StateError> {
    Err(StateError { span, message: message.into() })
}

/// Derives the state and the prefill and decode programs of `g` (see the module doc).
pub fn derive(g: &Graph) -> Result<Generation, StateError> {
    let inputs = g.inputs();
    let Some((tokens, tv)) = ["decoder_input_ids", "input_ids"].into_iter().find_map(|n| inputs.iter().find(|(m, _)| *m == n).copied())
    else {
        return err(Span::UNKNOWN, "generation needs a token input `input_ids` (or `decoder_input_ids`)");
    };
    let tt = g.ty(tv);
    let step = match (tt.dtype, tt.shape.as_slice()) {
        (DType::I64, [_, s]) if s.as_sym().is_some() => s.as_sym().map(str::to_string).unwrap_or_default(),
        _ => return err(g.node(tv).span, format!("generation needs `{tokens}` of type i64[batch, seq] with a named length; it is {tt}")),
    };
    let Some(logits) = g.output("logits") else {
        return err(Span::UNKNOWN, "generation needs an output called `logits`");
    };
    let lt = g.ty(logits);
    if lt.rank() != 3 || lt.shape[1] != Dim::sym(&step) {
        return err(g.node(logits).span, format!("generation needs `logits` of shape [batch, {step}, vocab]; it is {lt}"));
    }
    if g.nodes().iter().any(|n| n.ty.shape.iter().any(|d| d.mentions(PAST))) {
        return err(Span::UNKNOWN, format!("the model already names a size `{PAST}`, which generation uses for the positions seen"));
    }
    let mut b = Builder {
        g,
        tokens: tokens.to_string(),
        step: step.clone(),
        decode: {
            let mut d = Graph::new(&g.name);
            d.files = g.files.clone();
            d
        },
        prefill: g.clone(),
        q: vec![None; g.len()],
        k: HashMap::new(),
        states: Vec::new(),
        decode_out: Vec::new(),
        prefill_out: Vec::new(),
        names: HashMap::new(),
        past_scalar: None,
        uses: g.use_counts(),
    };
    let skip = prefill_only(g, &step);
    for v in g.values() {
        if skip[v.index()] {
            continue;
        }
        let nv = b.lower(v)?;
        b.q[v.index()] = Some(nv);
    }
    let mut decode = b.decode;
    decode.outputs = std::iter::once(("logits".to_string(), b.q[logits.index()].unwrap_or(logits))).chain(b.decode_out).collect();
    let mut prefill = b.prefill;
    prefill.outputs.extend(b.prefill_out);
    // Generation reads the logits of the last position only: compute just those.
    let last = last_position(&mut prefill, logits, &step, &mut HashMap::new())?;
    for (name, v) in &mut prefill.outputs {
        if name == "logits" {
            *v = last;
        }
    }
    let prefill = crate::dce(&prefill);
    let decode = crate::dce(&crate::cse(&decode));
    for (what, graph) in [("decode", &decode), ("prefill", &prefill)] {
        if let Err(e) = verify(graph) {
            return err(
                Span::UNKNOWN,
                format!("internal compiler error: the derived {what} program is invalid:\n{}\n{graph}", e.join("\n")),
            );
        }
    }
    Ok(Generation { prefill, decode, states: b.states, tokens: tokens.to_string(), step })
}

struct Builder<'a> {
    g: &'a Graph,
    tokens: String,
    step: String,
    decode: Graph,
    prefill: Graph,
    /// The decode value of each graph value (its step axis holds the new positions).
    q: Vec<Option<ValueId>>,
    /// The decode value of a graph value read along the keys (its step axis holds every
    /// position seen: `past + step`).
    k: HashMap<(ValueId, Option<i64>), ValueId>,
    states: Vec<State>,
    decode_out: Vec<(String, ValueId)>,
    prefill_out: Vec<(String, ValueId)>,
    names: HashMap<String, usize>,
    past_scalar: Option<ValueId>,
    /// How many times each graph value is read.
    uses: Vec<u32>,
}

impl Builder<'_> {
    fn step_dim(&self) -> Dim {
        Dim::sym(&self.step)
    }

    fn past(&self) -> Dim {
        Dim::sym(PAST)
    }

    fn mentions(&self, d: &Dim) -> bool {
        d.mentions(&self.step)
    }

    fn q(&self, v: ValueId) -> Result<ValueId, StateError> {
        self.q[v.index()].ok_or_else(|| StateError {
            span: self.g.node(v).span,
            message: format!("internal compiler error: {v} used before it is lowered"),
        })
    }

    fn add(&mut self, op: Op, inputs: Vec<ValueId>, ty: Option<TensorType>, span: Span) -> Result<ValueId, StateError> {
        self.decode.add(op, inputs, ty, span).map_err(|e| StateError { span, message: format!("internal compiler error: {e}") })
    }

    fn add_prefill(&mut self, op: Op, inputs: Vec<ValueId>, ty: Option<TensorType>, span: Span) -> Result<ValueId, StateError> {
        self.prefill.add(op, inputs, ty, span).map_err(|e| StateError { span, message: format!("internal compiler error: {e}") })
    }

    fn with_axis(ty: &TensorType, axis: usize, d: Dim) -> TensorType {
        let mut t = ty.clone();
        t.shape[axis] = d;
        t
    }

    /// A unique state name from the nearest parameter's layer (`layers.0.self_attn`).
    fn name(&mut self, from: ValueId, what: &str) -> String {
        let base = nearest_param(self.g, from).map(|p| {
            let parts: Vec<&str> = p.split('.').collect();
            parts[..parts.len().saturating_sub(2).max(1)].join(".")
        });
        let base = format!("state.{}.{what}", base.unwrap_or_else(|| "model".into()));
        let n = self.names.entry(base.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base
        } else {
            format!("{base}{n}")
        }
    }

    /// Declares a state: a decode input of type `ty`, its prefill value and (when updated)
    /// its decode value.
    fn state(&mut self, name: String, kind: StateKind, ty: TensorType, span: Span, prefill: ValueId) -> Result<ValueId, StateError> {
        let input = self.add(Op::Input(name.clone()), vec![], Some(ty.clone()), span)?;
        self.prefill_out.push((name.clone(), prefill));
        self.states.push(State { name, kind, ty, span });
        Ok(input)
    }

    fn lower(&mut self, v: ValueId) -> Result<ValueId, StateError> {
        let g = self.g;
        let n = g.node(v);
        let step_axis = |t: &TensorType, axis: usize| t.shape.get(axis).is_some_and(|d| d.mentions(&self.step));
        match &n.op {
            Op::Input(name) if *name != self.tokens && n.ty.shape.iter().any(|d| self.mentions(d)) => {
                // The padding mask: every token generation feeds is real. (An input nothing
                // reads is no obstacle.)
                if self.uses[v.index()] > 0 {
                    self.mask_input(name, n.span)?;
                }
                self.add(Op::Const(1.0), vec![], Some(n.ty.clone()), n.span)
            }
            Op::Iota { axis } if step_axis(&n.ty, *axis) => {
                if n.ty.shape[*axis] != self.step_dim() {
                    return err(
                        n.span,
                        format!(
                            "`iota` along `{}` ({}): generation counts positions along the whole step only",
                            n.ty.shape[*axis], self.step
                        ),
                    );
                }
                let full = Self::with_axis(&n.ty, *axis, self.past().add(&self.step_dim()));
                let all = self.add(Op::Iota { axis: *axis }, vec![], Some(full), n.span)?;
                let slice = Op::Slice { axis: *axis, start: self.past(), end: self.past().add(&self.step_dim()), step: 1 };
                self.add(slice, vec![all], None, n.span)
            }
            Op::Attention(f) => self.attention(v, f),
            Op::Window { axis, size, pad_left, .. } if step_axis(g.ty(n.inputs[0]), *axis) => self.window(v, *axis, *size, *pad_left),
            Op::Scan(s) if s.sliced > 0 && step_axis(g.ty(n.inputs[s.state]), s.axis) => self.scan(v, s),
            Op::Concat { axis } if step_axis(&n.ty, *axis) => self.shift(v, *axis),
            _ => {
                self.positionwise(v)?;
                let inputs = n.inputs.iter().map(|&i| self.q(i)).collect::<Result<Vec<_>, _>>()?;
                Ok(self.decode.push_unchecked(Node { op: n.op.clone(), inputs, ty: n.ty.clone(), span: n.span }))
            }
        }
    }

    /// Refuses an op that mixes positions along the step.
    fn positionwise(&self, v: ValueId) -> Result<(), StateError> {
        let g = self.g;
        let n = g.node(v);
        let ty = |i: usize| n.inputs.get(i).map(|&x| g.ty(x));
        let at = |i: usize, axis: usize| ty(i).and_then(|t| t.shape.get(axis)).is_some_and(|d| self.mentions(d));
        let last = |i: usize, back: usize| ty(i).is_some_and(|t| t.rank() > back && self.mentions(&t.shape[t.rank() - 1 - back]));
        let any = |i: usize| ty(i).is_some_and(|t| t.shape.iter().any(|d| self.mentions(d)));
        let mixes = match &n.op {
            Op::Reduce { axes, .. } => axes.iter().any(|&a| at(0, a)),
            Op::Softmax { axis } | Op::Cumsum { axis } | Op::Rfft { axis } | Op::Segment { axis, .. } | Op::ScatterAdd { axis } => {
                at(0, *axis)
            }
            Op::TopK { axis, .. } | Op::Slice { axis, .. } | Op::Gather { axis } | Op::Concat { axis } | Op::Window { axis, .. } => {
                at(0, *axis)
            }
            Op::Irfft { axis, .. } => at(0, *axis),
            Op::Fft { axes, .. } => axes.iter().any(|&a| at(0, a)),
            Op::Scan(s) => s.sliced > 0 && at(s.state, s.axis),
            Op::MatMul => last(0, 0) || last(1, 0) || last(1, 1),
            Op::Norm { .. } => last(0, 0),
            Op::Gemm { .. } | Op::Ffn { .. } => {
                last(0, 0)
                    || (1..n.inputs.len()).any(|i| any(i) && !(matches!(n.op, Op::Gemm { residual: true, .. }) && i + 1 == n.inputs.len()))
            }
            Op::Route(_) => last(0, 0) || (3..n.inputs.len()).any(any),
            Op::Reshape => ty(0).is_some_and(|t| !keeps_positions(&t.shape, &n.ty.shape, &self.step)),
            _ => false,
        };
        if mixes {
            return err(
                n.span,
                format!("`{}` mixes positions along `{}`: generation cannot derive a state for it (only causal attention, causal convolutions, scans and token shifts carry history)", n.op, self.step),
            );
        }
        Ok(())
    }

    /// The decode value of `v` read along the keys: its step axis spans `past + step`.
    fn keys_side(&mut self, v: ValueId, window: Option<i64>) -> Result<ValueId, StateError> {
        if let Some(&k) = self.k.get(&(v, window)) {
            return Ok(k);
        }
        let g = self.g;
        let n = g.node(v);
        if !n.ty.shape.iter().any(|d| self.mentions(d)) {
            return self.q(v);
        }
        // The keys a decode step sees: every position, or the window's last ones.
        let all = match window {
            Some(c) => Dim::known(c).add(&self.step_dim()),
            None => self.past().add(&self.step_dim()),
        };
        let mut shape = Vec::with_capacity(n.ty.rank());
        for d in &n.ty.shape {
            shape.push(d.subst(&self.step, &all).ok_or_else(|| StateError {
                span: n.span,
                message: format!("the size `{d}` divides the step `{}`: generation cannot extend it", self.step),
            })?);
        }
        let ty = TensorType::new(n.ty.dtype, shape);
        let out = match &n.op {
            Op::Input(name) if *name == self.tokens => {
                return err(n.span, format!("`{name}` is read along the keys of an attention: generation cannot derive it"))
            }
            Op::Input(_) | Op::Const(_) => {
                let c = match &n.op {
                    Op::Const(c) => *c,
                    Op::Input(name) => {
                        self.mask_input(name, n.span)?;
                        1.0
                    }
                    _ => 1.0,
                };
                self.add(Op::Const(c), vec![], Some(ty), n.span)?
            }
            Op::Iota { axis } if window.is_none() => self.add(Op::Iota { axis: *axis }, vec![], Some(ty), n.span)?,
            Op::Reshape | Op::Broadcast | Op::Transpose(_) | Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast => {
                let inputs = n.inputs.iter().map(|&i| self.keys_side(i, window)).collect::<Result<Vec<_>, _>>()?;
                self.add(n.op.clone(), inputs, Some(ty), n.span)?
            }
            _ => {
                return err(
                    n.span,
                    format!(
                        "`{}` computes a value an attention reads along its keys: generation derives only masks and positions there",
                        n.op
                    ),
                )
            }
        };
        self.k.insert((v, window), out);
        Ok(out)
    }

    /// Refuses a per-position input other than the tokens and the padding mask: generation
    /// knows what to feed for those two only.
    fn mask_input(&self, name: &str, span: Span) -> Result<(), StateError> {
        if name == MASK {
            return Ok(());
        }
        err(
            span,
            format!("the input `{name}` varies along `{}`: generation feeds only `{}` and `{MASK}` (all ones)", self.step, self.tokens),
        )
    }

    /// `past` as an i64 scalar of the decode program.
    fn past_scalar(&mut self, span: Span) -> Result<ValueId, StateError> {
        if let Some(p) = self.past_scalar {
            return Ok(p);
        }
        let all = TensorType::new(DType::I64, vec![self.past().add(&Dim::known(1))]);
        let iota = self.add(Op::Iota { axis: 0 }, vec![], Some(all), span)?;
        let one =
            self.add(Op::Slice { axis: 0, start: self.past(), end: self.past().add(&Dim::known(1)), step: 1 }, vec![iota], None, span)?;
        let p = self.add(Op::Reshape, vec![one], Some(TensorType::scalar(DType::I64)), span)?;
        self.past_scalar = Some(p);
        Ok(p)
    }

    /// `past - c` as an i64 scalar of the decode program.
    fn past_minus(&mut self, c: i64, span: Span) -> Result<ValueId, StateError> {
        let past = self.past_scalar(span)?;
        let c = self.add(Op::Const(c as f64), vec![], Some(TensorType::scalar(DType::I64)), span)?;
        self.add(Op::Binary(BinaryOp::Sub), vec![past, c], None, span)
    }

    fn attention(&mut self, v: ValueId, f: &ScoreFn) -> Result<ValueId, StateError> {
        let g = self.g;
        let n = g.node(v);
        let (qt, kt) = (g.ty(n.inputs[0]), g.ty(n.inputs[1]));
        let (s, t) = (qt.rank() - 2, kt.rank() - 2);
        let steps_q = qt.shape[s] == self.step_dim();
        let kv_mentions = |i: usize| g.ty(n.inputs[i]).shape.iter().any(|d| self.mentions(d));
        if !steps_q {
            if qt.shape.iter().any(|d| self.mentions(d)) || kv_mentions(1) || kv_mentions(2) {
                return err(
                    n.span,
                    format!("an attention whose queries are not the positions of `{}`: generation cannot derive its state", self.step),
                );
            }
            self.positionwise(v)?;
            let inputs = n.inputs.iter().map(|&i| self.q(i)).collect::<Result<Vec<_>, _>>()?;
            return Ok(self.decode.push_unchecked(Node { op: n.op.clone(), inputs, ty: n.ty.clone(), span: n.span }));
        }
        let causal_keys = kt.shape[t] == self.step_dim() && g.ty(n.inputs[2]).shape[t] == self.step_dim();
        let mut inputs = vec![self.q(n.inputs[0])?];
        // Positions before a step's query that the mask can still show (a window's).
        let mut window = None;
        if causal_keys {
            let dead = [0i64, 5, 1000].iter().all(|&i| f.tile_class((i, i), (i + 1, i + 1_000_000)) == tessera_ir::TileClass::Dead);
            if !dead {
                return err(
                    n.span,
                    "this attention lets a position see later ones (no causal mask): generation cannot cache it, since a new token would change the past positions' outputs",
                );
            }
            window = window_of(f).map(|w| w - 1);
            for (i, what, kind) in [(1, "k", StateKind::Keys), (2, "v", StateKind::Values)] {
                let x = n.inputs[i];
                let xt = g.ty(x);
                let name = self.name(x, what);
                let new = self.q(x)?;
                let Some(c) = window else {
                    let st = self.state(name.clone(), kind, Self::with_axis(xt, t, self.past()), n.span, x)?;
                    let all = self.add(Op::Concat { axis: t }, vec![st, new], None, n.span)?;
                    self.decode_out.push((name, all));
                    inputs.push(all);
                    continue;
                };
                // A window of `c + 1` keys: the state is the last `c` positions (zeros before
                // the first), and each step keeps the last `c` of them and the new ones.
                let c = Dim::known(c);
                let zeros = self.add_prefill(Op::Const(0.0), vec![], Some(Self::with_axis(xt, t, c.clone())), n.span)?;
                let padded = self.add_prefill(Op::Concat { axis: t }, vec![zeros, x], None, n.span)?;
                let tail = Op::Slice { axis: t, start: self.step_dim(), end: self.step_dim().add(&c), step: 1 };
                let last = self.add_prefill(tail.clone(), vec![padded], None, n.span)?;
                let st = self.state(name.clone(), kind, Self::with_axis(xt, t, c), n.span, last)?;
                let all = self.add(Op::Concat { axis: t }, vec![st, new], None, n.span)?;
                let kept = self.add(tail, vec![all], None, n.span)?;
                self.decode_out.push((name, kept));
                inputs.push(all);
            }
        } else {
            if kv_mentions(1) || kv_mentions(2) {
                return err(
                    n.span,
                    format!("an attention whose keys mix `{}` with other positions: generation cannot derive its state", self.step),
                );
            }
            for (i, what, kind) in [(1, "cross_k", StateKind::CrossKeys), (2, "cross_v", StateKind::CrossValues)] {
                let x = n.inputs[i];
                // Named for the layer of its queries (the keys come from the encoder's output).
                let name = self.name(n.inputs[0], what);
                let st = self.state(name, kind, g.ty(x).clone(), n.span, x)?;
                inputs.push(st);
            }
        }
        // Extra operands broadcast against the scores [.., s, t]: their last axis runs along
        // the keys, the one before along the queries.
        for &l in &n.inputs[3..] {
            let lt = g.ty(l);
            let r = lt.rank();
            let along_keys = r >= 1 && self.mentions(&lt.shape[r - 1]);
            let along_queries = r >= 2 && self.mentions(&lt.shape[r - 2]);
            inputs.push(match (along_keys && causal_keys, along_queries) {
                (true, true) => {
                    return err(g.node(l).span, "an attention operand that varies along both queries and keys: generation cannot derive it")
                }
                (true, false) => self.keys_side(l, window)?,
                _ => self.q(l)?,
            });
        }
        let mut f = f.clone();
        if causal_keys {
            let past = self.past_scalar(n.span)?;
            let leaf = (inputs.len() - 3) as u32;
            inputs.push(past);
            f = offset_queries(&f, leaf);
            if let Some(c) = window {
                // Key slot `J` holds position `J + past - c`; slots before position 0 hold
                // nothing and are masked.
                let offset = self.past_minus(c, n.span)?;
                let leaf = (inputs.len() - 3) as u32;
                inputs.push(offset);
                f = offset_keys(&f, leaf);
            }
        }
        Ok(self.decode.push_unchecked(Node { op: Op::Attention(Box::new(f)), inputs, ty: n.ty.clone(), span: n.span }))
    }

    fn window(&mut self, v: ValueId, axis: usize, size: usize, pad_left: usize) -> Result<ValueId, StateError> {
        let g = self.g;
        let n = g.node(v);
        let x = n.inputs[0];
        let xt = g.ty(x);
        let conv = matches!(n.op, Op::Window { op: tessera_ir::WindowOp::Conv, .. });
        if !conv
            || pad_left + 1 != size
            || xt.shape[axis] != self.step_dim()
            || n.inputs[1..].iter().any(|&w| g.ty(w).shape.iter().any(|d| self.mentions(d)))
        {
            return err(
                n.span,
                format!(
                    "a window along `{}` that is not a causal convolution (pad_left = size - 1): generation cannot derive its state",
                    self.step
                ),
            );
        }
        let c = Dim::known(pad_left as i64);
        let mut ins = Vec::new();
        for &w in &n.inputs[1..] {
            ins.push(self.q(w)?);
        }
        if pad_left == 0 {
            let x = self.q(x)?;
            return self.add(n.op.clone(), [vec![x], ins].concat(), None, n.span);
        }
        let name = self.name(x, "conv");
        // Prefill: the last `size - 1` inputs, zeros before the first.
        let zeros = self.add_prefill(Op::Const(0.0), vec![], Some(Self::with_axis(xt, axis, c.clone())), n.span)?;
        let padded = self.add_prefill(Op::Concat { axis }, vec![zeros, x], None, n.span)?;
        let tail = Op::Slice { axis, start: self.step_dim(), end: self.step_dim().add(&c), step: 1 };
        let last = self.add_prefill(tail.clone(), vec![padded], None, n.span)?;
        let st = self.state(name.clone(), StateKind::ConvTail, Self::with_axis(xt, axis, c.clone()), n.span, last)?;
        let new = self.q(x)?;
        let all = self.add(Op::Concat { axis }, vec![st, new], None, n.span)?;
        let y = self.add(n.op.clone(), [vec![all], ins].concat(), None, n.span)?;
        let kept = self.add(tail, vec![all], None, n.span)?;
        self.decode_out.push((name, kept));
        self.add(Op::Slice { axis, start: c.clone(), end: c.add(&self.step_dim()), step: 1 }, vec![y], None, n.span)
    }

    fn scan(&mut self, v: ValueId, s: &tessera_ir::Scan) -> Result<ValueId, StateError> {
        let g = self.g;
        let n = g.node(v);
        if s.reverse {
            return err(n.span, format!("a scan that walks `{}` backwards: a new token would change every earlier output", self.step));
        }
        let inv = &n.inputs[s.state + s.sliced..];
        if n.inputs[..s.state].iter().chain(inv).any(|&x| g.ty(x).shape.iter().any(|d| self.mentions(d))) {
            return err(
                n.span,
                format!("a scan whose states or invariants vary along `{}`: generation cannot derive its state", self.step),
            );
        }
        let tys: Vec<&TensorType> = n.inputs.iter().map(|&x| g.ty(x)).collect();
        let results = scan_results(s, &tys).map_err(|e| StateError { span: n.span, message: format!("internal compiler error: {e}") })?;
        let per_step = results.len() - s.state;
        let mut inputs = Vec::new();
        let mut names = Vec::new();
        for i in 0..s.state {
            let name = self.name(n.inputs[s.state], &format!("scan{i}"));
            let fin = self.add_prefill(Op::Proj(per_step + i), vec![v], Some(results[per_step + i].clone()), n.span)?;
            inputs.push(self.state(name.clone(), StateKind::Recurrent, g.ty(n.inputs[i]).clone(), n.span, fin)?);
            names.push(name);
        }
        for &x in &n.inputs[s.state..] {
            inputs.push(self.q(x)?);
        }
        let scan = self.decode.push_unchecked(Node { op: n.op.clone(), inputs, ty: n.ty.clone(), span: n.span });
        for (i, name) in names.into_iter().enumerate() {
            let fin = self.add(Op::Proj(per_step + i), vec![scan], Some(results[per_step + i].clone()), n.span)?;
            self.decode_out.push((name, fin));
        }
        Ok(scan)
    }

    /// `concat(fill, x[.., :S - c], axis)`: x shifted `c` positions along the step.
    fn shift(&mut self, v: ValueId, axis: usize) -> Result<ValueId, StateError> {
        let g = self.g;
        let n = g.node(v);
        let Some((fill, x, c)) = shift_parts(g, v, axis, &self.step) else {
            return err(
                n.span,
                format!(
                    "a concatenation along `{}` that is not a shift (`concat(fill, x[.., :-c])`): generation cannot derive its state",
                    self.step
                ),
            );
        };
        let name = self.name(x, "shift");
        let tail = Op::Slice { axis, start: self.step_dim(), end: self.step_dim().add(&c), step: 1 };
        let padded = self.add_prefill(Op::Concat { axis }, vec![fill, x], None, n.span)?;
        let last = self.add_prefill(tail.clone(), vec![padded], None, n.span)?;
        let st = self.state(name.clone(), StateKind::Shift, g.ty(fill).clone(), n.span, last)?;
        let new = self.q(x)?;
        let all = self.add(Op::Concat { axis }, vec![st, new], None, n.span)?;
        let kept = self.add(tail, vec![all], None, n.span)?;
        self.decode_out.push((name, kept));
        self.add(Op::Slice { axis, start: Dim::known(0), end: self.step_dim(), step: 1 }, vec![all], None, n.span)
    }
}

/// The operands of a step scan that are its initial states, and both operands of a token
/// shift: decode reads a state in their place.
fn replaced_by_state(g: &Graph, u: ValueId, i: usize, step: &str) -> bool {
    let n = g.node(u);
    match &n.op {
        Op::Scan(s) => i < s.state && s.sliced > 0 && g.ty(n.inputs[s.state]).shape.get(s.axis).is_some_and(|d| d.mentions(step)),
        Op::Concat { axis } => shift_parts(g, u, *axis, step).is_some(),
        _ => false,
    }
}

/// `concat(fill, x[.., :S - c], axis)` as `(fill, x, c)`.
fn shift_parts(g: &Graph, v: ValueId, axis: usize, step: &str) -> Option<(ValueId, ValueId, Dim)> {
    let n = g.node(v);
    let [fill, shifted] = n.inputs[..] else { return None };
    let s = Dim::sym(step);
    if g.ty(v).shape.get(axis).is_none_or(|d| *d != s) {
        return None;
    }
    let c = Dim::known(g.ty(fill).shape[axis].as_known().filter(|&c| c >= 1)?);
    let sn = g.node(shifted);
    match &sn.op {
        Op::Slice { axis: a, start, end, step: 1 }
            if *a == axis && start.as_known() == Some(0) && *end == s.sub(&c) && g.ty(sn.inputs[0]).shape[axis] == s =>
        {
            Some((fill, sn.inputs[0], c))
        }
        _ => None,
    }
}

/// Values only prefill needs: every use is replaced by a state in decode (a scan's zero
/// initial state built from the first position, a shift's fill and shifted slice), directly or
/// through other such values.
fn prefill_only(g: &Graph, step: &str) -> Vec<bool> {
    let mut only = vec![false; g.len()];
    let mut used = vec![false; g.len()];
    let mut real = vec![false; g.len()];
    for (_, v) in &g.outputs {
        real[v.index()] = true;
    }
    for u in (0..g.len() as u32).rev().map(ValueId) {
        // `u`'s uses are all seen (they come later): decide it, then mark its operands.
        only[u.index()] = used[u.index()] && !real[u.index()];
        for (i, &w) in g.node(u).inputs.iter().enumerate() {
            used[w.index()] = true;
            if !(only[u.index()] || replaced_by_state(g, u, i, step)) {
                real[w.index()] = true;
            }
        }
    }
    only
}

/// `v` at the last position of the step only (its step axis of size 1): position-wise ops are
/// rebuilt over their operands' last positions, so the work after the last op that mixes
/// positions is done once per row instead of once per position; other values are sliced.
fn last_position(g: &mut Graph, v: ValueId, step: &str, memo: &mut HashMap<ValueId, ValueId>) -> Result<ValueId, StateError> {
    if let Some(&w) = memo.get(&v) {
        return Ok(w);
    }
    let n = g.node(v).clone();
    let s = Dim::sym(step);
    let bad = |e: String| StateError { span: n.span, message: format!("internal compiler error: {e}") };
    let Some(axis) = n.ty.shape.iter().position(|d| *d == s) else {
        if n.ty.shape.iter().any(|d| d.mentions(step)) {
            return Err(bad(format!("{v} has no plain `{step}` axis")));
        }
        return Ok(v);
    };
    let one = Dim::known(1);
    let rows_only = |g: &Graph, x: ValueId| g.ty(x).shape.iter().filter(|d| d.mentions(step)).all(|d| *d == s);
    let rebuild = match &n.op {
        Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast | Op::Norm { .. } | Op::Gemm { .. } | Op::Ffn { .. } => true,
        Op::MatMul => {
            !g.ty(n.inputs[1]).shape.iter().any(|d| d.mentions(step)) && g.ty(n.inputs[0]).shape.last().is_some_and(|d| !d.mentions(step))
        }
        Op::Softmax { axis: a } => *a != axis,
        _ => false,
    } && n.inputs.iter().all(|&x| rows_only(g, x));
    let w = if rebuild {
        let mut inputs = Vec::with_capacity(n.inputs.len());
        for &x in &n.inputs {
            inputs.push(last_position(g, x, step, memo)?);
        }
        let ty = TensorType::new(n.ty.dtype, n.ty.shape.iter().map(|d| if *d == s { one.clone() } else { d.clone() }).collect());
        g.add(n.op.clone(), inputs, Some(ty), n.span).map_err(|e| bad(e.to_string()))?
    } else {
        g.add(Op::Slice { axis, start: s.sub(&one), end: s.clone(), step: 1 }, vec![v], None, n.span).map_err(|e| bad(e.to_string()))?
    };
    memo.insert(v, w);
    Ok(w)
}

/// Whether a reshape keeps each position's elements together: the product of the axes up to
/// and including the step's is a prefix product of the result (rows may merge with the batch,
/// never with features).
fn keeps_positions(from: &[Dim], to: &[Dim], step: &str) -> bool {
    let Some(i) = from.iter().position(|d| d.mentions(step)) else { return true };
    let upto = from[..=i].iter().fold(Dim::known(1), |a, d| a.mul(d));
    let mut p = Dim::known(1);
    for d in to {
        p = p.mul(d);
        if p == upto {
            return true;
        }
    }
    false
}

/// The parameter nearest to `v` among its operands (breadth first), for naming.
fn nearest_param(g: &Graph, v: ValueId) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    let mut queue = std::collections::VecDeque::from([v]);
    while let Some(x) = queue.pop_front() {
        if !seen.insert(x) || seen.len() > 256 {
            continue;
        }
        let n = g.node(x);
        if let Op::Param(name, _) = &n.op {
            return Some(name.clone());
        }
        queue.extend(n.inputs.iter().copied());
    }
    None
}

/// The window of a causal score function: the smallest distance `w` at which every key `w`
/// or more positions before its query is masked (`None`: no such distance below a million).
fn window_of(f: &ScoreFn) -> Option<i64> {
    const FAR: i64 = 2_000_000;
    let dead = |d: i64| f.tile_class((FAR, FAR), (0, FAR - d)) == tessera_ir::TileClass::Dead;
    if !dead(1_000_000) {
        return None;
    }
    let (mut lo, mut hi) = (1i64, 1_000_000i64);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if dead(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo)
}

/// `f` with the variable `var` (an i64 index) read as `var + L<leaf>`, and the index of that
/// sum in the result (computed first, so that every use of `var` reads it).
fn offset_var(f: &ScoreFn, var: Var, leaf: u32) -> (ScoreFn, u32) {
    let mut nodes: Vec<(SNode, DType)> = Vec::with_capacity(f.nodes.len() + 3);
    nodes.push((SNode::Var(var), DType::I64));
    nodes.push((SNode::Leaf(leaf), DType::I64));
    nodes.push((SNode::Binary(BinaryOp::Add, 0, 1), DType::I64));
    let sum = 2u32;
    let mut map: Vec<u32> = Vec::with_capacity(f.nodes.len());
    for (node, ty) in &f.nodes {
        let m = |k: &u32| map.get(*k as usize).copied().unwrap_or(*k);
        let node = match node {
            SNode::Var(v) if *v == var => {
                map.push(sum);
                continue;
            }
            SNode::Unary(u, a) => SNode::Unary(*u, m(a)),
            SNode::Binary(b, x, y) => SNode::Binary(*b, m(x), m(y)),
            SNode::Where(c, a, b) => SNode::Where(m(c), m(a), m(b)),
            SNode::Cast(a) => SNode::Cast(m(a)),
            SNode::Gather(t, k) => SNode::Gather(*t, m(k)),
            other => other.clone(),
        };
        nodes.push((node, *ty));
        map.push(nodes.len() as u32 - 1);
    }
    (ScoreFn { nodes }, sum)
}

/// `f` with the key index `J` read as `J + L<leaf>`, and keys at negative positions masked.
fn offset_keys(f: &ScoreFn, leaf: u32) -> ScoreFn {
    let (mut f, key) = offset_var(f, Var::Key, leaf);
    let nodes = &mut f.nodes;
    let root = nodes.len() as u32 - 1;
    let out_ty = nodes[root as usize].1;
    let n = nodes.len() as u32;
    nodes.push((SNode::Const(0.0), DType::I64));
    nodes.push((SNode::Binary(BinaryOp::Ge, key, n), DType::Bool));
    nodes.push((SNode::Const(-1e30), out_ty));
    nodes.push((SNode::Where(n + 1, root, n + 2), out_ty));
    f
}

/// `f` with the query index `I` read as `I + L<leaf>` (the positions already seen).
fn offset_queries(f: &ScoreFn, leaf: u32) -> ScoreFn {
    offset_var(f, Var::Query, leaf).0
}
