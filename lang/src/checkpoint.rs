//! `checkpoint` definitions: how a standard checkpoint's `config.json` keys and tensor names
//! map onto a model's hyper-parameters and parameters.
//!
//! ```text
//! checkpoint llama {
//!   layers = config("num_hidden_layers")             # required key
//!   eps    = config("rms_norm_eps", 1e-6)            # default when absent
//!   require(config("rope_scaling", none) == none, "RoPE scaling is not implemented")
//!   prefix("model.")                                 # tensor names may carry this prefix
//!   ignore("rotary_emb.inv_freq")                    # a buffer, not a parameter
//!   "layers.{l}.self_attn.q.weight" <- transpose("layers.{l}.self_attn.q_proj.weight")
//! }
//! ```
//!
//! The body runs once, before elaboration: an assignment to one of the model's
//! hyper-parameters becomes an override (command-line overrides win), other assignments are
//! local names, `require` checks the configuration, and each `"pattern" <- expr` line becomes
//! a [`WeightRule`]. Without a configuration, `config(key)` without a default is unknown and
//! the assignments and checks that use it are skipped (the model's defaults apply).
//! Without a configuration, every `config(..)` is unknown, with or without a default.

use crate::ast::*;
use crate::diag::{codes, Diagnostic};
use crate::elab::Override;
use crate::program::Program;
use std::collections::HashMap;
use tessera_ir::{NameMap, Parts, WeightExpr, WeightRule};

/// A value read from a configuration file (`config.json`).
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigValue {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A non-integer number.
    Float(f64),
    /// A string.
    Str(String),
    /// An array.
    List(Vec<ConfigValue>),
    /// An object, as JSON text (dotted keys reach into it).
    Other(String),
}

/// Looks a key up in the configuration; dotted keys (`rope_parameters.rope_theta`) reach
/// into nested objects.
pub type ConfigLookup<'a> = &'a dyn Fn(&str) -> Option<ConfigValue>;

/// What a `checkpoint` definition yields for one configuration.
#[derive(Clone, Debug, Default)]
pub struct CheckpointMap {
    /// Hyper-parameter values taken from the configuration.
    pub hparams: Vec<(String, Override)>,
    /// How checkpoint tensors become parameters.
    pub names: NameMap,
}

#[derive(Clone, Debug)]
enum CV {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    None,
    Other(String),
    /// A `config(key)` of a key we cannot know (no configuration given).
    Unknown,
    Weight(WeightExpr),
    /// `split(w, parts, axis, groups)` before it is indexed.
    Parts(WeightExpr, Parts, i64, usize),
    List(Vec<CV>),
    /// Already reported.
    Poison,
}

impl CV {
    fn kind(&self) -> &'static str {
        match self {
            CV::Int(_) => "an int",
            CV::Float(_) => "a float",
            CV::Bool(_) => "a bool",
            CV::Str(_) => "a string",
            CV::None => "none",
            CV::Other(_) => "a JSON array or object",
            CV::List(_) => "a tuple",
            CV::Unknown | CV::Poison => "unknown",
            CV::Weight(_) => "a checkpoint tensor",
            CV::Parts(..) => "a split tensor (index it: `split(w, 3)[0]`)",
        }
    }

    /// A string names a checkpoint tensor where a tensor is expected.
    fn weight(&self) -> Option<WeightExpr> {
        match self {
            CV::Str(s) => Some(WeightExpr::Load(s.clone())),
            CV::Weight(w) => Some(w.clone()),
            _ => None,
        }
    }

    fn into_weight(self) -> CV {
        match self.weight() {
            Some(w) => CV::Weight(w),
            None => self,
        }
    }

    fn from_config(v: ConfigValue) -> CV {
        match v {
            ConfigValue::Null => CV::None,
            ConfigValue::Bool(b) => CV::Bool(b),
            ConfigValue::Int(i) => CV::Int(i),
            ConfigValue::Float(f) => CV::Float(f),
            ConfigValue::Str(s) => CV::Str(s),
            ConfigValue::List(items) => CV::List(items.into_iter().map(CV::from_config).collect()),
            ConfigValue::Other(s) => CV::Other(s),
        }
    }

    /// The hyper-parameter value it sets; `None` for unknown values, `Err` for kinds a
    /// hyper-parameter cannot take.
    fn to_override(&self) -> Result<Option<Override>, &CV> {
        Ok(Some(match self {
            CV::Int(i) => Override::Int(*i),
            CV::Float(f) => Override::Float(*f),
            CV::Bool(b) => Override::Bool(*b),
            CV::Str(s) => Override::Str(s.clone()),
            CV::List(items) => {
                let mut out = Vec::with_capacity(items.len());
                for i in items {
                    match i.to_override()? {
                        Some(o) => out.push(o),
                        None => return Ok(None),
                    }
                }
                Override::List(out)
            }
            // `none` leaves the model's default (written `= none` where none is meaningful).
            CV::Unknown | CV::Poison | CV::None => return Ok(None),
            other => return Err(other),
        }))
    }

    fn show(&self) -> String {
        match self {
            CV::Int(i) => i.to_string(),
            CV::Float(f) => f.to_string(),
            CV::Bool(b) => b.to_string(),
            CV::Str(s) => format!("\"{s}\""),
            CV::None => "null".into(),
            CV::Other(s) => s.clone(),
            CV::List(items) => format!("[{}]", items.iter().map(CV::show).collect::<Vec<_>>().join(", ")),
            CV::Weight(w) => w.to_string(),
            _ => self.kind().into(),
        }
    }
}

/// The `checkpoint` definition for `model` in the root file, if there is one.
pub fn find<'p>(prog: &'p Program, model: &str) -> Option<&'p Def> {
    prog.root_defs().iter().find(|d| d.kind == DefKind::Checkpoint && d.name.name == model).map(|d| &**d)
}

/// Evaluates the `checkpoint` definition of `model` against a configuration (`None`: no
/// `config.json`). `overrides` (from the command line) take precedence over the
/// configuration. Returns `Ok(None)` when the file has no checkpoint map for the model.
pub fn resolve(
    prog: &Program,
    model: &str,
    config: Option<ConfigLookup>,
    overrides: &[(String, Override)],
) -> Result<Option<CheckpointMap>, Vec<Diagnostic>> {
    let Some(def) = find(prog, model) else { return Ok(None) };
    let model_def = prog.root_defs().iter().find(|d| d.kind == DefKind::Model && d.name.name == model);
    let hparams: Vec<String> = model_def.map(|d| d.params.iter().flatten().map(|h| h.name.name.clone()).collect()).unwrap_or_default();
    // What each hyper-parameter takes: its annotation, else the kind of its literal default.
    let kinds: HashMap<String, &'static str> = model_def
        .map(|d| d.params.iter().flatten().filter_map(|h| Some((h.name.name.clone(), expected_kind(h)?))).collect())
        .unwrap_or_default();
    let mut ev = Eval { prog, config, env: HashMap::new(), diags: Vec::new(), map: CheckpointMap::default(), kinds };
    for (k, o) in overrides {
        ev.env.insert(k.clone(), from_override(o));
    }
    let Body::Block(stmts) = &def.body else {
        return Err(vec![Diagnostic::error(codes::MISPLACED, "a checkpoint map needs a `{ ... }` body", def.span, "here")]);
    };
    ev.stmts(stmts, &hparams, overrides);
    if ev.diags.iter().any(Diagnostic::is_error) {
        return Err(ev.diags);
    }
    Ok(Some(ev.map))
}

fn from_override(o: &Override) -> CV {
    match o {
        Override::Int(i) => CV::Int(*i),
        Override::Float(f) => CV::Float(*f),
        Override::Bool(b) => CV::Bool(*b),
        Override::Str(s) => CV::Str(s.clone()),
        Override::List(items) => CV::List(items.iter().map(from_override).collect()),
        // Reported by the elaborator, which applies the overrides.
        Override::Invalid(_) => CV::Poison,
    }
}

struct Eval<'a> {
    prog: &'a Program,
    config: Option<ConfigLookup<'a>>,
    env: HashMap<String, CV>,
    diags: Vec<Diagnostic>,
    map: CheckpointMap,
    /// The kind each hyper-parameter takes (`an int`, ...), where the model says.
    kinds: HashMap<String, &'static str>,
}

/// The kind a hyper-parameter takes, as `CV::kind` names it: from its annotation, else from
/// a literal default (an int default takes ints; a float one takes ints and floats).
fn expected_kind(h: &crate::ast::HParam) -> Option<&'static str> {
    if let Some(crate::ast::TypeAnn::Scalar(t, _)) = &h.ty {
        return match t.as_str() {
            "int" => Some("an int"),
            "float" => Some("a float"),
            "bool" => Some("a bool"),
            "str" => Some("a string"),
            _ => None,
        };
    }
    fn literal(e: &Expr) -> &ExprKind {
        match &e.kind {
            ExprKind::Unary(UnOp::Neg, inner) => &inner.kind, // `= -1`
            k => k,
        }
    }
    match h.default.as_ref().map(literal) {
        Some(ExprKind::Int(_)) => Some("an int"),
        Some(ExprKind::Float(_)) => Some("a float"),
        Some(ExprKind::Bool(_)) => Some("a bool"),
        Some(ExprKind::Str(_)) => Some("a string"),
        _ => None,
    }
}

/// The key of a `config("key", ..)` expression.
fn config_key(e: &Expr) -> Option<&str> {
    let ExprKind::Call { callee, args, .. } = &e.kind else { return None };
    match (&callee.kind, args.first().map(|a| &a.value.kind)) {
        (ExprKind::Name(f), Some(ExprKind::Str(k))) if f == "config" => Some(k),
        _ => None,
    }
}

impl Eval<'_> {
    fn err(&mut self, d: Diagnostic) -> CV {
        self.diags.push(d);
        CV::Poison
    }

    fn stmts(&mut self, stmts: &[Stmt], hparams: &[String], overrides: &[(String, Override)]) {
        for s in stmts {
            match s {
                Stmt::Assign { names, value } => {
                    let v = self.expr(value);
                    let [name] = names.as_slice() else {
                        self.err(Diagnostic::error(codes::MISPLACED, "assign one name at a time here", value.span, "here"));
                        continue;
                    };
                    if overrides.iter().any(|(k, _)| *k == name.name) {
                        continue;
                    }
                    if hparams.contains(&name.name) {
                        let want = self.kinds.get(&name.name).copied();
                        let fits = match (want, &v) {
                            (_, CV::None | CV::Unknown | CV::Poison) | (None, _) => true,
                            (Some("a float"), CV::Int(_)) => true,
                            (Some(w), v) => v.kind() == w,
                        };
                        if !fits {
                            let (msg, help) = match config_key(value) {
                                Some(k) => (
                                    format!(
                                        "config.json: `{k}` is {} ({}), but `{}` takes {}",
                                        v.kind(),
                                        v.show(),
                                        name.name,
                                        want.unwrap_or("?")
                                    ),
                                    format!("fix `{k}` in config.json, or set `{}` with -D", name.name),
                                ),
                                None => (
                                    format!("`{}` takes {}, but this gives {} ({})", name.name, want.unwrap_or("?"), v.kind(), v.show()),
                                    "check the configuration this line reads".to_string(),
                                ),
                            };
                            self.err(Diagnostic::error(codes::CONFIG_UNSUPPORTED, msg, value.span, "read here").with_help(help));
                            self.env.insert(name.name.clone(), CV::Poison);
                            continue;
                        }
                        let o = match v.to_override() {
                            Ok(o) => o,
                            Err(other) => {
                                let msg = format!("hyper-parameter `{}` cannot take {} ({})", name.name, other.kind(), other.show());
                                self.err(Diagnostic::error(codes::CONFIG_UNSUPPORTED, msg, value.span, "this value"));
                                None
                            }
                        };
                        if let Some(o) = o {
                            self.map.hparams.push((name.name.clone(), o));
                        }
                    }
                    self.env.insert(name.name.clone(), v);
                }
                Stmt::If { cond, then, els } => match self.expr(cond) {
                    CV::Bool(true) => self.stmts(then, hparams, overrides),
                    CV::Bool(false) => self.stmts(els, hparams, overrides),
                    CV::Unknown | CV::Poison => {}
                    other => {
                        let msg = format!("an `if` condition must be a bool, not {}", other.kind());
                        self.err(Diagnostic::error(codes::TYPE, msg, cond.span, "this value"));
                    }
                },
                Stmt::Map { pattern, span, value } => match self.expr(value).into_weight() {
                    CV::Weight(w) => {
                        let (line, col) = self.prog.sources.line_col(*span);
                        let origin = format!("{}:{line}:{col}", self.prog.sources.path(span.file));
                        self.map.names.rules.push(WeightRule { pattern: pattern.clone(), expr: w, origin });
                    }
                    CV::Poison => {}
                    CV::Unknown => {
                        let (line, col) = self.prog.sources.line_col(*span);
                        let origin = format!("{}:{line}:{col}", self.prog.sources.path(span.file));
                        self.map.names.rules.push(WeightRule { pattern: pattern.clone(), expr: WeightExpr::NeedsConfig, origin });
                    }
                    other => {
                        let msg = format!("a parameter is computed from checkpoint tensors, not from {}", other.kind());
                        self.err(
                            Diagnostic::error(codes::TYPE, msg, value.span, "this value")
                                .with_help("name a checkpoint tensor: \"h.{l}.attn.c_proj.weight\""),
                        );
                    }
                },
                Stmt::Expr(e) => {
                    self.expr(e);
                }
                other => {
                    let span = match other {
                        Stmt::Input { name, .. } | Stmt::Param { name, .. } | Stmt::Output { name, .. } => name.span,
                        Stmt::For { span, .. } | Stmt::Return { span, .. } => *span,
                        _ => Span { file: 0, start: 0, end: 0 },
                    };
                    self.err(
                        Diagnostic::error(codes::MISPLACED, "this statement is not allowed in a checkpoint map", span, "here").with_help(
                            "a checkpoint map holds `name = config(\"key\")`, `require(cond, \"why\")`, `prefix(\"p.\")`, `if` and `\"param\" <- \"tensor\"` lines",
                        ),
                    );
                }
            }
        }
    }

    fn config(&mut self, key: &str, default: Option<CV>, span: Span) -> CV {
        // Without a configuration every key is unknown, defaults included: the model's own
        // defaults (and -D) apply, not the checkpoint format's.
        let Some(lookup) = self.config else { return CV::Unknown };
        match (lookup(key), default) {
            (Some(v), _) => CV::from_config(v),
            (None, Some(d)) => d,
            (None, None) => self.err(
                Diagnostic::error(codes::CONFIG_MISSING, format!("the configuration has no key `{key}`"), span, "required here")
                    .with_help(format!("add \"{key}\" to config.json, or give a default: config(\"{key}\", VALUE)")),
            ),
        }
    }

    fn args(&mut self, args: &[Arg]) -> Vec<(Option<String>, CV, Span)> {
        args.iter().map(|a| (a.name.as_ref().map(|n| n.name.clone()), self.expr(&a.value), a.value.span)).collect()
    }

    fn call(&mut self, f: &str, args: &[Arg], span: Span) -> CV {
        let vals = self.args(args);
        if vals.iter().any(|(_, v, _)| matches!(v, CV::Poison)) {
            return CV::Poison;
        }
        let pos: Vec<&CV> = vals.iter().filter(|(n, ..)| n.is_none()).map(|(_, v, _)| v).collect();
        let tensor_fn = matches!(f, "transpose" | "split" | "reshape" | "rope_halves" | "stack");
        if tensor_fn && vals.iter().any(|(_, v, _)| matches!(v, CV::Unknown)) {
            return CV::Unknown;
        }
        let w0 = pos.first().and_then(|v| v.weight());
        let named = |k: &str| vals.iter().find(|(n, ..)| n.as_deref() == Some(k)).map(|(_, v, _)| v.clone());
        let arity = |n: usize, m: usize| pos.len() >= n && pos.len() <= m;
        let bad = |this: &mut Self, usage: &str| {
            this.err(
                Diagnostic::error(codes::BAD_ARGS, format!("bad arguments to `{f}`"), span, "this call")
                    .with_help(format!("usage: {usage}")),
            )
        };
        match f {
            "config" => match (pos.first(), arity(1, 2)) {
                (Some(CV::Str(k)), true) => {
                    let k = k.clone();
                    let d = pos.get(1).map(|v| (*v).clone());
                    self.config(&k, d, span)
                }
                _ => bad(self, "config(\"key\") or config(\"key\", default)"),
            },
            "require" => match (pos.first(), pos.get(1), arity(2, 2)) {
                (Some(CV::Bool(true)), _, true) | (Some(CV::Unknown), _, true) => CV::None,
                (Some(CV::Bool(false)), Some(CV::Str(msg)), true) => {
                    let msg = msg.clone();
                    self.err(
                        Diagnostic::error(
                            codes::CONFIG_UNSUPPORTED,
                            format!("unsupported configuration: {msg}"),
                            span,
                            "this check failed",
                        )
                        .with_help("this model file does not implement that configuration; it would compute a different model"),
                    )
                }
                _ => bad(self, "require(condition, \"what is unsupported\")"),
            },
            "prefix" => match (pos.first(), arity(1, 1)) {
                (Some(CV::Str(p)), true) => {
                    self.map.names.prefixes.push(p.clone());
                    CV::None
                }
                _ => bad(self, "prefix(\"transformer.\")"),
            },
            "ignore" => match (pos.first(), arity(1, 1)) {
                (Some(CV::Str(p)), true) => {
                    self.map.names.ignored.push(p.clone());
                    CV::None
                }
                _ => bad(self, "ignore(\"embeddings.position_ids\")"),
            },
            "transpose" => match (w0, arity(1, 1)) {
                (Some(w), true) => CV::Weight(WeightExpr::Transpose(Box::new(w))),
                _ => bad(self, "transpose(\"tensor.name\")"),
            },
            "split" => {
                const USAGE: &str =
                    "split(\"tensor.name\", parts, axis = 0, groups = 1)[index], parts a count or a tuple of sizes: split(w, (72, 24, 24))[0]";
                let axis = named("axis").or_else(|| pos.get(2).map(|v| (*v).clone())).unwrap_or(CV::Int(0));
                let groups = named("groups").unwrap_or(CV::Int(1));
                let parts = match pos.get(1) {
                    Some(CV::Int(n)) if *n > 0 => Ok(Parts::Equal(*n as usize)),
                    Some(CV::List(items)) if !items.is_empty() => items
                        .iter()
                        .map(|v| match v {
                            CV::Int(n) if *n > 0 => Ok(*n as usize),
                            other => Err(format!("a part size must be a positive int, not {}", other.show())),
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(Parts::Sizes),
                    Some(other) => Err(format!("the parts must be a positive count or a tuple of sizes, not {}", other.show())),
                    None => Err("the parts are missing".to_string()),
                };
                let unknown =
                    |v: &CV| matches!(v, CV::Unknown) || matches!(v, CV::List(items) if items.iter().any(|i| matches!(i, CV::Unknown)));
                if unknown(&axis) || unknown(&groups) || pos.get(1).is_some_and(|p| unknown(p)) {
                    return CV::Unknown;
                }
                let why = match (&w0, parts, &axis, &groups, arity(2, 3)) {
                    (_, _, _, _, false) => {
                        format!("`split` takes a tensor and its parts, then `axis` ({} positional arguments given)", pos.len())
                    }
                    (None, ..) => "the first argument must name a checkpoint tensor".to_string(),
                    (_, Err(why), ..) => why,
                    (_, _, a, _, _) if !matches!(a, CV::Int(_)) => format!("`axis` must be an int, not {}", a.show()),
                    (_, _, _, g, _) if !matches!(g, CV::Int(n) if *n > 0) => format!("`groups` must be a positive int, not {}", g.show()),
                    (Some(w), Ok(p), CV::Int(a), CV::Int(g), true) => return CV::Parts(w.clone(), p, *a, *g as usize),
                    _ => "unexpected arguments".to_string(),
                };
                self.err(
                    Diagnostic::error(codes::BAD_ARGS, format!("bad arguments to `split`: {why}"), span, "this call")
                        .with_help(format!("usage: {USAGE}")),
                )
            }
            "reshape" => {
                if matches!(pos.get(1), Some(CV::Unknown))
                    || matches!(pos.get(1), Some(CV::List(items)) if items.iter().any(|i| matches!(i, CV::Unknown)))
                {
                    return CV::Unknown;
                }
                let dims: Option<Vec<i64>> = match pos.get(1) {
                    Some(CV::List(items)) => items.iter().map(|v| if let CV::Int(i) = v { Some(*i) } else { None }).collect(),
                    Some(CV::Int(i)) => Some(vec![*i]),
                    _ => None,
                };
                match (w0, dims, arity(2, 2)) {
                    (Some(w), Some(d), true) => CV::Weight(WeightExpr::Reshape(Box::new(w), d)),
                    _ => bad(self, "reshape(\"tensor.name\", (rows, cols))"),
                }
            }
            "per_layer" => match (pos.first(), pos.get(1), arity(2, 2)) {
                (Some(CV::Unknown), ..) | (_, Some(CV::Unknown), _) => CV::Unknown,
                (Some(CV::List(items)), Some(CV::Int(n)), true) if items.len() as i64 == *n => CV::List(items.clone()),
                (Some(CV::List(items)), Some(CV::Int(n)), true) => self.err(
                    Diagnostic::error(
                        codes::CONFIG_UNSUPPORTED,
                        format!("a per-layer list of {} for {n} layers", items.len()),
                        span,
                        "this list",
                    )
                    .with_help("the configuration must give one value per layer, or one value for all"),
                ),
                (Some(v @ (CV::Int(_) | CV::Float(_) | CV::Bool(_) | CV::Str(_))), Some(CV::Int(n)), true) if (0..=1 << 20).contains(n) => {
                    CV::List(vec![(*v).clone(); *n as usize])
                }
                _ => bad(self, "per_layer(value or list, layers): the list as it is, or the value once per layer"),
            },
            "float" => match (pos.first(), arity(1, 1)) {
                (Some(CV::Int(i)), true) => CV::Float(*i as f64),
                (Some(CV::Float(f)), true) => CV::Float(*f),
                (Some(CV::Unknown), true) => CV::Unknown,
                _ => bad(self, "float(number)"),
            },
            "int" => match (pos.first(), arity(1, 1)) {
                (Some(CV::Int(i)), true) => CV::Int(*i),
                (Some(CV::Float(f)), true) if f.is_finite() && f.abs() < 9.0e15 => CV::Int(f.trunc() as i64),
                (Some(CV::Unknown), true) => CV::Unknown,
                _ => bad(self, "int(number), a finite number (truncated toward zero)"),
            },
            "stack" => match (w0, pos.get(1), arity(2, 2)) {
                (Some(w), Some(CV::Str(hole)), true) if !hole.is_empty() => CV::Weight(WeightExpr::Stack(Box::new(w), hole.clone())),
                _ => bad(self, "stack(\"experts.{e}.w1.weight\", \"e\"): one tensor per expert, the hole counting experts"),
            },
            "rope_halves" => match (w0, pos.get(1), arity(2, 2)) {
                (Some(w), Some(CV::Int(h)), true) if *h > 0 => CV::Weight(WeightExpr::RopeHalves(Box::new(w), *h as usize)),
                _ => bad(self, "rope_halves(\"tensor.name\", heads)"),
            },
            _ => self.err(
                Diagnostic::error(codes::UNKNOWN_NAME, format!("`{f}` is not available in a checkpoint map"), span, "unknown here")
                    .with_help(
                        "available: config, require, prefix, ignore, float, int, per_layer, transpose, split, reshape, rope_halves, stack",
                    ),
            ),
        }
    }

    fn expr(&mut self, e: &Expr) -> CV {
        match &e.kind {
            ExprKind::Int(i) => CV::Int(*i),
            ExprKind::Float(f) => CV::Float(*f),
            ExprKind::Bool(b) => CV::Bool(*b),
            ExprKind::None => CV::None,
            ExprKind::Str(s) => CV::Str(s.clone()),
            ExprKind::Tuple(items) | ExprKind::List(items) => CV::List(items.iter().map(|x| self.expr(x)).collect()),
            ExprKind::Name(n) => match self.env.get(n) {
                Some(v) => v.clone(),
                None => self.err(Diagnostic::error(codes::UNKNOWN_NAME, format!("unknown name `{n}`"), e.span, "not defined here")),
            },
            ExprKind::Call { callee, args, .. } => match &callee.kind {
                ExprKind::Name(f) => self.call(f, args, e.span),
                _ => self.err(Diagnostic::error(codes::TYPE, "only built-in functions can be called here", callee.span, "this")),
            },
            ExprKind::Member { base, name } if name.name == "T" => match self.expr(base).into_weight() {
                CV::Weight(w) => CV::Weight(WeightExpr::Transpose(Box::new(w))),
                v @ (CV::Poison | CV::Unknown) => v,
                other => self.err(Diagnostic::error(codes::TYPE, format!("`.T` of {}", other.kind()), base.span, "this value")),
            },
            ExprKind::Index { base, items } => {
                let b = self.expr(base);
                let idx = match items.as_slice() {
                    [IndexItem::Expr(i)] => self.expr(i),
                    _ => CV::Poison,
                };
                match (b, idx) {
                    (CV::Parts(w, parts, axis, groups), CV::Int(i)) if (0..parts.count() as i64).contains(&i) => {
                        CV::Weight(WeightExpr::Split { of: Box::new(w), parts, index: i as usize, axis, groups })
                    }
                    (CV::List(items), CV::Int(i)) => {
                        let n = items.len() as i64;
                        match usize::try_from(if i < 0 { i + n } else { i }).ok().and_then(|k| items.get(k)) {
                            Some(v) => v.clone(),
                            None => self.err(Diagnostic::error(
                                codes::VALUE,
                                format!("index {i} is out of range for a list of {n}"),
                                e.span,
                                "here",
                            )),
                        }
                    }
                    (CV::Poison, _) | (_, CV::Poison) => CV::Poison,
                    (CV::Unknown, _) | (_, CV::Unknown) => CV::Unknown,
                    _ => self.err(Diagnostic::error(codes::VALUE, "index a split by a part number below its count", e.span, "here")),
                }
            }
            ExprKind::Unary(op, x) => match (op, self.expr(x)) {
                (UnOp::Neg, CV::Int(i)) => CV::Int(-i),
                (UnOp::Neg, CV::Float(f)) => CV::Float(-f),
                (UnOp::Not, CV::Bool(b)) => CV::Bool(!b),
                (_, v @ (CV::Unknown | CV::Poison)) => v,
                (_, v) => self.err(Diagnostic::error(codes::TYPE, format!("cannot apply this operator to {}", v.kind()), x.span, "this")),
            },
            ExprKind::Binary(op, a, b) => {
                let (x, y) = (self.expr(a), self.expr(b));
                self.binary(*op, x, y, e.span)
            }
            _ => self.err(Diagnostic::error(codes::UNSUPPORTED, "this expression is not available in a checkpoint map", e.span, "here")),
        }
    }

    fn binary(&mut self, op: BinOp, x: CV, y: CV, span: Span) -> CV {
        use BinOp::*;
        let num = |v: &CV| match v {
            CV::Int(i) => Some(*i as f64),
            CV::Float(f) => Some(*f),
            _ => None,
        };
        match (op, &x, &y) {
            (_, CV::Poison, _) | (_, _, CV::Poison) => CV::Poison,
            (_, CV::Unknown, _) | (_, _, CV::Unknown) => CV::Unknown,
            (Or, CV::Str(_) | CV::Weight(_), CV::Str(_) | CV::Weight(_)) => match (x.weight(), y.weight()) {
                (Some(a), Some(b)) => CV::Weight(WeightExpr::Or(Box::new(a), Box::new(b))),
                _ => CV::Poison,
            },
            (Eq | Ne, _, _) => {
                let same = match (num(&x), num(&y)) {
                    (Some(a), Some(b)) => a == b,
                    _ => match (&x, &y) {
                        (CV::Str(a), CV::Str(b)) | (CV::Other(a), CV::Other(b)) => a == b,
                        (CV::Bool(a), CV::Bool(b)) => a == b,
                        (CV::List(_), CV::List(_)) => x.show() == y.show(),
                        (CV::None, CV::None) => true,
                        _ => false,
                    },
                };
                CV::Bool(same == (op == Eq))
            }
            (And | Or, CV::Bool(a), CV::Bool(b)) => CV::Bool(if op == And { *a && *b } else { *a || *b }),
            (Add | Sub | Mul | FloorDiv | Rem, CV::Int(a), CV::Int(b)) => match op {
                Add => CV::Int(a + b),
                Sub => CV::Int(a - b),
                Mul => CV::Int(a * b),
                _ if *b == 0 => self.err(Diagnostic::error(codes::VALUE, "division by zero", span, "here")),
                FloorDiv => CV::Int(a.div_euclid(*b)),
                _ => CV::Int(a.rem_euclid(*b)),
            },
            _ => match (num(&x), num(&y)) {
                (Some(a), Some(b)) => match op {
                    Add => CV::Float(a + b),
                    Sub => CV::Float(a - b),
                    Mul => CV::Float(a * b),
                    Div => CV::Float(a / b),
                    Pow => CV::Float(a.powf(b)),
                    Lt => CV::Bool(a < b),
                    Le => CV::Bool(a <= b),
                    Gt => CV::Bool(a > b),
                    Ge => CV::Bool(a >= b),
                    _ => self.err(Diagnostic::error(codes::TYPE, "this operator does not apply to numbers", span, "here")),
                },
                _ => self.err(Diagnostic::error(codes::TYPE, format!("cannot combine {} and {}", x.kind(), y.kind()), span, "here")),
            },
        }
    }
}
