//! Generation: a [`Session`] runs a causal model token by token over the state that
//! [`tessera_passes::generation`] derives from its graph (KV caches, recurrent states,
//! convolution tails), with the prefill and decode programs compiled once per [`Model`] and
//! reading the model's one copy of the parameters.
//!
//! ```no_run
//! # fn main() -> Result<(), tessera::Error> {
//! let mut model = tessera::Compiler::new().define("layers", 2).compile_file("stdlib/llama.tsr")?;
//! model.random_weights(0)?;
//! let mut session = model.session(64)?;                      // state for up to 64 positions
//! let prompts = vec![vec![1, 2, 3, 4], vec![5, 6]];          // rows may differ in length
//! let out = session.generate(&prompts, &tessera::GenerateOptions::greedy(8), |_, _| {})?;
//! println!("{:?}", out.tokens);                              // 8 new tokens per row
//! # Ok(()) }
//! ```
//!
//! Rows of different lengths decode together: prefill runs over the shortest prompt, then
//! each step feeds every row its next prompt token, or, once its prompt is consumed, the token
//! it chose, so each row sees exactly its own tokens at its own positions (no padding exists
//! to attend to).

use crate::api::{Error, Model};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use tessera_codegen::Engine;
use tessera_passes::generation::{Generation, PAST};
use tessera_runtime::{Dims, RunError, Tensor};

/// The compiled programs of generation (built once per model, on first use).
pub(crate) struct Programs {
    pub(crate) derived: Generation,
    prefill: Engine,
    decode: Engine,
}

impl Programs {
    pub(crate) fn new(model: &Model) -> Result<Programs, Error> {
        let derived = tessera_passes::generation::derive(model.graph()).map_err(|e| {
            let at = e.span.display_in(&model.graph().files).map(|s| format!("{s}: ")).unwrap_or_default();
            Error::Generation(format!("{at}{}", e.message))
        })?;
        let prefill = model.engine_for(&derived.prefill)?;
        let decode = model.engine_for(&derived.decode)?;
        // On a GPU the states stay on the device from step to step.
        let names: Vec<String> = derived.states.iter().map(|s| s.name.clone()).collect();
        prefill.carry(&names)?;
        decode.carry(&names)?;
        Ok(Programs { derived, prefill, decode })
    }

    /// Forgets what the programs keep of the parameters (see [`Engine::forget_params`]).
    pub(crate) fn forget_params(&self) {
        self.prefill.forget_params();
        self.decode.forget_params();
    }
}

/// How the next token is chosen from the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// How many tokens to add to each row.
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy (the largest logit, the first of equals).
    pub temperature: f32,
    /// Sample among the `top_k` most likely tokens only (0: all).
    pub top_k: usize,
    /// Sample among the most likely tokens whose probabilities sum to `top_p` (1: all).
    pub top_p: f32,
    /// The seed of the sampler.
    pub seed: u64,
    /// Tokens that end a row (it stops growing; its remaining tokens are `pad`).
    pub eos: Vec<i64>,
    /// What a stopped row is filled with in [`Generated::tokens`] (never fed to the model).
    pub pad: i64,
    /// For an encoder-decoder model: the decoder's first token.
    pub decoder_start: i64,
}

impl GenerateOptions {
    /// Greedy decoding of `n` tokens, never stopping early.
    pub fn greedy(n: usize) -> GenerateOptions {
        GenerateOptions { max_new_tokens: n, temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, eos: Vec::new(), pad: 0, decoder_start: 0 }
    }
}

/// What [`Session::generate`] produced.
#[derive(Clone, Debug, Default)]
pub struct Generated {
    /// The new tokens of each row (`max_new_tokens` each; after an end token, `pad`).
    pub tokens: Vec<Vec<i64>>,
    /// The logits that chose each token: `[row][step][vocab]` (rows that stopped repeat
    /// nothing: their list is shorter).
    pub logits: Vec<Vec<Vec<f32>>>,
    /// Seconds until every row had its first token.
    pub first_token_seconds: f64,
    /// Seconds of the decode steps after that.
    pub decode_seconds: f64,
    /// Decode steps run after the first token.
    pub decode_steps: usize,
}

/// Generation in progress: the state of a batch of rows, which grows by one position per step.
pub struct Session<'m> {
    model: &'m Model,
    programs: &'m Programs,
    max_len: usize,
    states: HashMap<String, Tensor>,
    /// The memory the next step writes its updated states into (the previous step's).
    spare: HashMap<String, Tensor>,
    /// Seconds per kernel kind over the decode steps, when profiling (`TESSERA_PROFILE=1`,
    /// compiled backends).
    pub profile: Vec<(&'static str, f64)>,
    /// Inputs that do not vary along the step (an encoder's), passed to every decode call.
    fixed: HashMap<String, Tensor>,
    past: usize,
    batch: usize,
}

impl Model {
    /// A generation session whose state holds up to `max_len` positions per row. The first
    /// call derives the state and compiles the prefill and decode programs; a model whose
    /// state cannot be derived (bidirectional attention, a sum over the sequence) is an
    /// [`Error::Generation`] naming the op.
    pub fn session(&self, max_len: usize) -> Result<Session<'_>, Error> {
        let programs = self.programs()?;
        Ok(Session {
            model: self,
            programs,
            max_len,
            states: HashMap::new(),
            spare: HashMap::new(),
            profile: Vec::new(),
            fixed: HashMap::new(),
            past: 0,
            batch: 0,
        })
    }
}

fn run_err(e: RunError) -> Error {
    Error::Run(e)
}

impl Session<'_> {
    /// The derived state and programs.
    pub fn generation(&self) -> &Generation {
        &self.programs.derived
    }

    /// Positions the state holds per row.
    pub fn len(&self) -> usize {
        self.past
    }

    /// Whether nothing has been run yet.
    pub fn is_empty(&self) -> bool {
        self.past == 0
    }

    /// Bytes of the state at `max_len` positions for this batch (known after prefill; 0
    /// before).
    pub fn state_bytes(&self) -> u128 {
        let mut bytes = 0u128;
        for s in &self.programs.derived.states {
            let Some(t) = self.states.get(&s.name) else { continue };
            let mut n = t.shape.iter().map(|&x| x as u128).product::<u128>() * s.ty.dtype.size() as u128;
            if let Some(axis) = s.ty.shape.iter().position(|d| d.mentions(PAST)) {
                n = n / (t.shape[axis].max(1) as u128) * self.max_len as u128;
            }
            bytes += n;
        }
        bytes
    }

    /// Runs the prompt: `inputs` holds the token input (`[batch, S]`, every row `S` tokens;
    /// for an encoder-decoder, the decoder's first tokens) and any input that does not vary
    /// along the step (an encoder's `input_ids` and `attention_mask`). Per-position inputs left
    /// out (`attention_mask`) read as ones. Returns the logits at the last position,
    /// `[batch, vocab]`, and resets the state to these rows.
    pub fn prefill(&mut self, inputs: &HashMap<String, Tensor>) -> Result<Tensor, Error> {
        let d = &self.programs.derived;
        let tokens = inputs.get(&d.tokens).ok_or_else(|| run_err(RunError::Missing { kind: "input", name: d.tokens.clone() }))?;
        let (batch, s) = match tokens.shape[..] {
            [b, s] => (b, s),
            _ => return Err(Error::Generation(format!("`{}` must be [batch, positions]; it is {:?}", d.tokens, tokens.shape))),
        };
        if s > self.max_len {
            return Err(Error::Generation(format!(
                "the prompt has {s} positions but the state holds {} (the session's max_len)",
                self.max_len
            )));
        }
        let g = &d.prefill;
        let mut all = HashMap::new();
        self.fixed.clear();
        for (name, v) in g.inputs() {
            let ty = g.ty(v);
            let per_position = ty.shape.iter().any(|x| x.mentions(&d.step));
            match inputs.get(name) {
                Some(t) => {
                    if !per_position {
                        self.fixed.insert(name.to_string(), t.clone());
                    }
                    all.insert(name.to_string(), t.clone());
                }
                None if per_position && name != d.tokens => {
                    let mut dims = Dims::new();
                    dims.insert("batch".into(), batch as i64);
                    dims.insert(d.step.clone(), s as i64);
                    let shape = tessera_runtime::concrete(&ty.shape, &dims).map_err(run_err)?;
                    all.insert(name.to_string(), ones(ty.dtype, shape));
                }
                None => return Err(run_err(RunError::Missing { kind: "input", name: name.to_string() })),
            }
        }
        let mut dims = Dims::new();
        tessera_runtime::bind_dims(g, &all, &mut dims).map_err(run_err)?;
        let (out, _) = self.model.run_engine(&self.programs.prefill, g, &dims, &all, HashMap::new())?;
        self.batch = batch;
        self.past = s;
        self.states.clear();
        self.spare.clear();
        let logits = self.take(out)?;
        let logits = Tensor { shape: vec![batch, logits.shape.last().copied().unwrap_or(0)], data: logits.data };
        // Room for `max_len` positions in each growing state and its spare: the steps that
        // follow write into this memory.
        for st in &d.states {
            let Some(axis) = st.ty.shape.iter().position(|x| x.mentions(PAST)) else { continue };
            if let Some(t) = self.states.get_mut(&st.name) {
                let per = t.len() / t.shape[axis].max(1);
                let room = per * self.max_len;
                if let tessera_runtime::Data::F32(v) = &mut t.data {
                    v.reserve_exact(room.saturating_sub(v.len()));
                    let mut spare = Vec::with_capacity(room);
                    spare.extend_from_slice(v);
                    self.spare.insert(st.name.clone(), Tensor::f32(t.shape.clone(), spare));
                }
            }
        }
        Ok(logits)
    }

    /// Stores the states of a run's outputs; returns its logits.
    fn take(&mut self, out: Vec<(String, Tensor)>) -> Result<Tensor, Error> {
        let mut logits = None;
        for (name, t) in out {
            if name == "logits" {
                logits = Some(t);
            } else {
                self.states.insert(name, t);
            }
        }
        logits.ok_or_else(|| Error::Internal("a generation program without logits".into()))
    }

    /// Appends one token to every row; returns the logits at the new position, `[batch, vocab]`.
    pub fn step(&mut self, tokens: &[i64]) -> Result<Tensor, Error> {
        let d = &self.programs.derived;
        if self.past == 0 {
            return Err(Error::Generation("`step` before `prefill`: the session has no state yet".into()));
        }
        if tokens.len() != self.batch {
            return Err(Error::Generation(format!("`step` got {} tokens for {} rows", tokens.len(), self.batch)));
        }
        if self.past + 1 > self.max_len {
            return Err(Error::Generation(format!("the state is full: it holds {} positions (the session's max_len)", self.max_len)));
        }
        let mut inputs = self.fixed.clone();
        inputs.insert(d.tokens.clone(), Tensor::i64(vec![self.batch, 1], tokens.to_vec()));
        // The states move in; decode writes the updated ones into the spares' memory.
        inputs.extend(std::mem::take(&mut self.states));
        let g = &d.decode;
        let mut dims = Dims::new();
        // Not every state names it (windows keep a fixed number of positions).
        dims.insert(PAST.into(), self.past as i64);
        let result = tessera_runtime::bind_dims(g, &inputs, &mut dims)
            .map_err(run_err)
            .and_then(|()| self.model.run_engine(&self.programs.decode, g, &dims, &inputs, std::mem::take(&mut self.spare)));
        for s in &d.states {
            if let Some(t) = inputs.remove(&s.name) {
                if s.kind.updated() && result.is_ok() {
                    self.spare.insert(s.name.clone(), t);
                } else {
                    self.states.insert(s.name.clone(), t);
                }
            }
        }
        let (out, stats) = result?;
        if let Some(stats) = stats {
            for (kind, t) in stats.profile {
                match self.profile.iter_mut().find(|(k, _)| *k == kind) {
                    Some(e) => e.1 += t,
                    None => self.profile.push((kind, t)),
                }
            }
        }
        self.past += 1;
        let logits = self.take(out)?;
        let v = logits.shape.last().copied().unwrap_or(0);
        Ok(Tensor { shape: vec![self.batch, v], data: logits.data })
    }

    /// Generates `opts.max_new_tokens` tokens after each prompt (rows may differ in length;
    /// for an encoder-decoder model the prompts are the encoder's input and the decoder
    /// starts from `opts.decoder_start`). `on_token(row, token)` sees each token as it is
    /// chosen.
    pub fn generate(
        &mut self,
        prompts: &[Vec<i64>],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(usize, i64),
    ) -> Result<Generated, Error> {
        let d = &self.programs.derived;
        let n = prompts.len();
        if n == 0 || opts.max_new_tokens == 0 {
            return Ok(Generated { tokens: vec![Vec::new(); n], logits: vec![Vec::new(); n], ..Generated::default() });
        }
        if prompts.iter().any(Vec::is_empty) {
            return Err(Error::Generation("every prompt needs at least one token".into()));
        }
        let start = std::time::Instant::now();
        let encoder_decoder = d.tokens != "input_ids";
        // Each row's tokens as the decoder sees them.
        let rows: Vec<Vec<i64>> = if encoder_decoder { vec![vec![opts.decoder_start]; n] } else { prompts.to_vec() };
        let shortest = rows.iter().map(Vec::len).min().unwrap_or(1);
        let mut inputs = HashMap::new();
        let first: Vec<i64> = rows.iter().flat_map(|r| r[..shortest].iter().copied()).collect();
        inputs.insert(d.tokens.clone(), Tensor::i64(vec![n, shortest], first));
        if encoder_decoder {
            let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
            let mut ids = vec![0i64; n * width];
            let mut mask = vec![0i64; n * width];
            for (r, p) in prompts.iter().enumerate() {
                ids[r * width..r * width + p.len()].copy_from_slice(p);
                mask[r * width..r * width + p.len()].iter_mut().for_each(|m| *m = 1);
            }
            inputs.insert("input_ids".into(), Tensor::i64(vec![n, width], ids));
            inputs.insert("attention_mask".into(), Tensor::i64(vec![n, width], mask));
        }
        let logits = self.prefill(&inputs)?;
        let vocab = logits.shape.last().copied().unwrap_or(0);
        let data = f32s(&logits)?;
        // The logits after position `shortest - 1` of each row.
        let mut last: Vec<Vec<f32>> = (0..n).map(|r| data[r * vocab..(r + 1) * vocab].to_vec()).collect();
        let mut out = Generated { tokens: vec![Vec::new(); n], logits: vec![Vec::new(); n], ..Generated::default() };
        let mut done = vec![false; n];
        let mut sampler = rand::rngs::StdRng::seed_from_u64(opts.seed);
        let mut pos = shortest; // the position of the next token of every row
        let mut first_seen = false;
        let mut t_first = start.elapsed().as_secs_f64();
        loop {
            let mut next = Vec::with_capacity(n);
            for r in 0..n {
                if pos < rows[r].len() {
                    next.push(rows[r][pos]); // still in its prompt
                    continue;
                }
                if done[r] || out.tokens[r].len() >= opts.max_new_tokens {
                    // A finished row's steps are discarded; it is fed its last token (`pad`
                    // need not be a token of the vocabulary).
                    next.push(out.tokens[r].last().copied().unwrap_or(rows[r][rows[r].len() - 1]));
                    continue;
                }
                let tok = choose(&last[r], opts, &mut sampler);
                out.tokens[r].push(tok);
                out.logits[r].push(std::mem::take(&mut last[r]));
                on_token(r, tok);
                if opts.eos.contains(&tok) {
                    done[r] = true;
                }
                next.push(tok);
            }
            if !first_seen && out.tokens.iter().all(|t| !t.is_empty()) {
                first_seen = true;
                t_first = start.elapsed().as_secs_f64();
            }
            let finished = (0..n).all(|r| pos >= rows[r].len() && (done[r] || out.tokens[r].len() >= opts.max_new_tokens));
            if finished {
                break;
            }
            let logits = self.step(&next)?;
            if first_seen {
                out.decode_steps += 1;
            }
            let data = f32s(&logits)?;
            last = (0..n).map(|r| data[r * vocab..(r + 1) * vocab].to_vec()).collect();
            pos += 1;
        }
        for r in 0..n {
            out.tokens[r].resize(opts.max_new_tokens, opts.pad);
        }
        out.first_token_seconds = t_first;
        out.decode_seconds = start.elapsed().as_secs_f64() - t_first;
        Ok(out)
    }
}

fn f32s(t: &Tensor) -> Result<&[f32], Error> {
    match &t.data {
        tessera_runtime::Data::F32(v) => Ok(v),
        _ => Err(Error::Generation(format!("the logits are {}, not f32", t.dtype()))),
    }
}

fn ones(dtype: tessera_ir::DType, shape: Vec<usize>) -> Tensor {
    let n = shape.iter().product();
    match dtype {
        tessera_ir::DType::I64 => Tensor::i64(shape, vec![1; n]),
        tessera_ir::DType::Bool => Tensor { shape, data: tessera_runtime::Data::Bool(vec![true; n]) },
        _ => Tensor::f32(shape, vec![1.0; n]),
    }
}

fn state_bytes(ty: &tessera_ir::TensorType, dims: &Dims) -> u128 {
    let n: u128 = ty.shape.iter().map(|d| d.eval(dims).unwrap_or(1).max(0) as u128).product();
    n * ty.dtype.size() as u128
}

/// The next token from one row's logits.
fn choose(logits: &[f32], opts: &GenerateOptions, rng: &mut rand::rngs::StdRng) -> i64 {
    let argmax = || {
        let mut best = 0;
        for (i, &x) in logits.iter().enumerate() {
            if x > logits[best] || (logits[best].is_nan() && !x.is_nan()) {
                best = i;
            }
        }
        best as i64
    };
    if opts.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if opts.top_k > 0 {
        order.truncate(opts.top_k);
    }
    let Some(&top) = order.first() else { return argmax() };
    let mut probs: Vec<f64> = order.iter().map(|&i| (((logits[i] - logits[top]) / opts.temperature) as f64).exp()).collect();
    let sum: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= sum);
    if opts.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= opts.top_p as f64
        });
        let keep = keep.map_or(probs.len(), |k| k + 1);
        order.truncate(keep);
        probs.truncate(keep);
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
    }
    let mut u: f64 = rng.random();
    for (k, p) in probs.iter().enumerate() {
        if u < *p {
            return order[k] as i64;
        }
        u -= p;
    }
    order[order.len() - 1] as i64
}

/// The derived state as `tessera ir --emit state` prints it: each state's type and bytes per
/// row (per position seen where it grows; per position of another size, an encoder's, where it
/// has one), then the totals.
pub fn describe(g: &Generation, files: &[String]) -> String {
    let mut out =
        format!("// state of `{}`: prefill runs the prompt; decode adds `{}` positions after the `{PAST}` seen\n", g.prefill.name, g.step);
    let (mut per_pos, mut fixed, mut per_other) = (0u128, 0u128, Vec::<(String, u128)>::new());
    let width = g.states.iter().map(|s| s.name.len()).max().unwrap_or(0);
    for s in &g.states {
        let mut syms: Vec<String> = s.ty.shape.iter().flat_map(|d| d.symbols().map(str::to_string).collect::<Vec<_>>()).collect();
        syms.sort();
        syms.dedup();
        let at = |past: i64| -> Dims { syms.iter().map(|x| (x.clone(), if x == PAST { past } else { 1 })).collect() };
        let (b0, b1) = (state_bytes(&s.ty, &at(0)), state_bytes(&s.ty, &at(1)));
        let others: Vec<&String> = syms.iter().filter(|x| *x != "batch" && *x != PAST).collect();
        let size = if syms.iter().any(|x| x == PAST) {
            per_pos += b1 - b0;
            format!("{} per position", human(b1 - b0))
        } else if let Some(o) = others.first() {
            match per_other.iter_mut().find(|(n, _)| n == *o) {
                Some((_, b)) => *b += b1,
                None => per_other.push((o.to_string(), b1)),
            }
            format!("{} per `{o}` position", human(b1))
        } else {
            fixed += b1;
            human(b1)
        };
        let at = s.span.display_in(files).unwrap_or_default();
        out.push_str(&format!("{:width$}  {:<30} {:<32} {size:>26} per row  {at}\n", s.name, s.kind.describe(), s.ty.to_string()));
    }
    let others: String = per_other.iter().map(|(o, b)| format!(" + {} per `{o}` position", human(*b))).collect();
    out.push_str(&format!("// total per row: {} per position + {}{others}\n", human(per_pos), human(fixed)));
    out
}

/// Bytes for people: `512 B`, `16.0 KiB`, `1.5 MiB`.
fn human(b: u128) -> String {
    match b {
        0..1024 => format!("{b} B"),
        1024..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        _ => format!("{:.1} MiB", b as f64 / 1_048_576.0),
    }
}
