//! Checkpoint maps: how the tensors of an external checkpoint (a Hugging Face safetensors
//! file) become the parameters of a graph.
//!
//! A [`WeightRule`] matches parameter names against a pattern such as
//! `layers.{l}.attn.q.weight` (each `{name}` hole matches one dot-free segment) and computes
//! the parameter from checkpoint tensors with a [`WeightExpr`]: a load of a name template
//! (`h.{l}.attn.c_attn.weight`, holes filled from the match), transposes, splits of fused
//! tensors, reshapes and the rotary-embedding layout change. The language produces rules
//! (`checkpoint` definitions); the runtime applies them. Data only: nothing here reads files.

use std::collections::HashMap;
use std::fmt;

/// How one parameter is computed from checkpoint tensors.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightExpr {
    /// The checkpoint tensor named by this template (`{hole}`s filled from the match).
    Load(String),
    /// Swap the last two axes.
    Transpose(Box<WeightExpr>),
    /// Part `index` along `axis` of a fused tensor (QKV, gate/up). The axis is viewed as
    /// `groups` consecutive groups, each cut into the same parts; the part is taken from
    /// every group and the pieces concatenated in order. One group is a plain split; a
    /// per-head fused QKV `[H, 3, hd]` (GPT-NeoX) is `groups = H` with three equal parts.
    Split {
        /// The fused tensor.
        of: Box<WeightExpr>,
        /// How each group is cut.
        parts: Parts,
        /// Which part, from 0.
        index: usize,
        /// The axis cut (negative counts from the end).
        axis: i64,
        /// How many groups the axis holds (1: the whole axis is one group).
        groups: usize,
    },
    /// The same elements with a new shape (one entry may be -1).
    Reshape(Box<WeightExpr>, Vec<i64>),
    /// Rows of a `[heads * head_dim, d]` projection reordered from the interleaved rotary
    /// layout (pairs `2i, 2i+1`, as in Meta's LLaMA checkpoints) to the rotate-half layout
    /// (`i, i + head_dim/2`) that `nn.rope` uses.
    RopeHalves(Box<WeightExpr>, usize),
    /// One tensor per expert stacked along a new leading axis (mixture-of-experts weights
    /// stored one tensor per expert): the expression evaluated with the hole named by the
    /// string filled with `0, 1, ..` up to the parameter's leading size.
    Stack(Box<WeightExpr>, String),
    /// The first when the checkpoint has every tensor it loads, else the second (an
    /// `lm_head.weight` that may be left out when tied to the embedding).
    Or(Box<WeightExpr>, Box<WeightExpr>),
    /// A map line whose tensor expression depends on configuration keys that are not known
    /// (no `config.json` given): binding a parameter through it is an error saying so.
    NeedsConfig,
}

/// How a group of a fused axis is cut: into equal parts, or into parts of given sizes.
#[derive(Clone, Debug, PartialEq)]
pub enum Parts {
    /// This many equal parts.
    Equal(usize),
    /// Parts of these sizes, in order (they must add up to the group's size).
    Sizes(Vec<usize>),
}

impl Parts {
    /// How many parts.
    pub fn count(&self) -> usize {
        match self {
            Parts::Equal(n) => *n,
            Parts::Sizes(s) => s.len(),
        }
    }

    /// The (start, length) of part `index` of a group of `len` elements, if it cuts so.
    pub fn range(&self, len: usize, index: usize) -> Option<(usize, usize)> {
        match self {
            Parts::Equal(n) if *n > 0 && len.is_multiple_of(*n) && index < *n => Some((index * (len / n), len / n)),
            Parts::Sizes(s) if s.iter().sum::<usize>() == len && index < s.len() => Some((s[..index].iter().sum(), s[index])),
            _ => None,
        }
    }
}

impl fmt::Display for Parts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Parts::Equal(n) => write!(f, "{n}"),
            Parts::Sizes(s) => write!(f, "({})", s.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
        }
    }
}

impl WeightExpr {
    /// The checkpoint name templates this expression loads.
    pub fn loads(&self) -> Vec<&str> {
        match self {
            WeightExpr::Load(n) => vec![n.as_str()],
            WeightExpr::Transpose(e)
            | WeightExpr::Split { of: e, .. }
            | WeightExpr::Reshape(e, _)
            | WeightExpr::RopeHalves(e, _)
            | WeightExpr::Stack(e, _) => e.loads(),
            WeightExpr::Or(a, b) => [a.loads(), b.loads()].concat(),
            WeightExpr::NeedsConfig => Vec::new(),
        }
    }
}

impl fmt::Display for WeightExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightExpr::Load(n) => write!(f, "\"{n}\""),
            WeightExpr::Transpose(e) => write!(f, "transpose({e})"),
            WeightExpr::Split { of, parts, index, axis, groups: 1 } => write!(f, "split({of}, {parts}, axis = {axis})[{index}]"),
            WeightExpr::Split { of, parts, index, axis, groups } => {
                write!(f, "split({of}, {parts}, axis = {axis}, groups = {groups})[{index}]")
            }
            WeightExpr::Reshape(e, s) => write!(f, "reshape({e}, {s:?})"),
            WeightExpr::RopeHalves(e, h) => write!(f, "rope_halves({e}, {h})"),
            WeightExpr::Stack(e, hole) => write!(f, "stack({e}, \"{hole}\")"),
            WeightExpr::Or(a, b) => write!(f, "{a} or {b}"),
            WeightExpr::NeedsConfig => write!(f, "(depends on config.json)"),
        }
    }
}

/// One line of a checkpoint map: parameters matching `pattern` are computed by `expr`.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightRule {
    /// A parameter name pattern with `{hole}`s.
    pub pattern: String,
    /// How to compute the parameter.
    pub expr: WeightExpr,
    /// Where the rule is written, as `file:line:col`.
    pub origin: String,
}

/// How a checkpoint's tensor names map onto a graph's parameters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NameMap {
    /// How each parameter is computed, in order (the first matching pattern wins).
    pub rules: Vec<WeightRule>,
    /// Prefixes that checkpoint tensor names may carry (`transformer.`, `bert.`).
    pub prefixes: Vec<String>,
    /// Patterns of checkpoint tensors known to be unneeded (buffers such as
    /// `embeddings.position_ids`): not reported as unused.
    pub ignored: Vec<String>,
}

/// Matches a parameter name against a pattern: `{x}` matches a non-empty run of characters
/// without dots, inside a segment too (`{x}_layernorm` matches `input_layernorm`; where
/// several splits fit, the shortest hole wins). Returns the holes' values; a hole named
/// twice must match the same text.
pub fn match_pattern(pattern: &str, name: &str) -> Option<HashMap<String, String>> {
    let mut holes = HashMap::new();
    match_from(pattern, name, &mut holes).then_some(holes)
}

fn match_from(pat: &str, rest: &str, holes: &mut HashMap<String, String>) -> bool {
    let Some(open) = pat.find('{') else { return pat == rest };
    let Some(rest) = rest.strip_prefix(&pat[..open]) else { return false };
    let after = &pat[open + 1..];
    let Some(close) = after.find('}') else { return after.is_empty() && rest.is_empty() };
    let (hole, pat) = (&after[..close], &after[close + 1..]);
    let segment = rest.find('.').unwrap_or(rest.len());
    for len in (1..=segment).filter(|&n| rest.is_char_boundary(n)) {
        let value = &rest[..len];
        if holes.get(hole).is_some_and(|v| v != value) {
            continue;
        }
        let fresh = !holes.contains_key(hole);
        if fresh {
            holes.insert(hole.to_string(), value.to_string());
        }
        if match_from(pat, &rest[len..], holes) {
            return true;
        }
        if fresh {
            holes.remove(hole);
        }
    }
    false
}

/// Fills the `{hole}`s of a template. Unknown holes are left as written.
pub fn fill_template(template: &str, holes: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                match holes.get(&after[..close]) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&rest[open..open + close + 2]),
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_segments() {
        let m = match_pattern("layers.{l}.attn.q.weight", "layers.12.attn.q.weight").unwrap();
        assert_eq!(m["l"], "12");
        assert!(match_pattern("layers.{l}.attn.q.weight", "layers.1.2.attn.q.weight").is_none());
        assert!(match_pattern("layers.{l}.attn.q.weight", "layers..attn.q.weight").is_none());
        assert!(match_pattern("wte", "wte2").is_none());
        assert!(match_pattern("wte", "wte").unwrap().is_empty());
        assert_eq!(fill_template("h.{l}.ln_{l}.{x}", &m), "h.12.ln_12.{x}");
        let m = match_pattern("layers.{l}.{x}_layernorm.weight", "layers.3.input_layernorm.weight").unwrap();
        assert_eq!((m["l"].as_str(), m["x"].as_str()), ("3", "input"));
        assert!(match_pattern("layers.{l}.{x}_layernorm.weight", "layers.3._layernorm.weight").is_none());
        let m = match_pattern("{a}_{b}", "x_y_z").unwrap();
        assert_eq!((m["a"].as_str(), m["b"].as_str()), ("x", "y_z"));
        assert!(match_pattern("{a}.{a}", "x.y").is_none());
        assert!(match_pattern("{a}.{a}", "x.x").is_some());
    }
}
