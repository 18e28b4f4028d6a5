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
    /// Part `index` of `parts` equal parts along `axis` (a fused QKV or gate/up tensor).
    Split {
        /// The fused tensor.
        of: Box<WeightExpr>,
        /// How many equal parts.
        parts: usize,
        /// Which part, from 0.
        index: usize,
        /// The axis cut (negative counts from the end).
        axis: i64,
    },
    /// The same elements with a new shape (one entry may be -1).
    Reshape(Box<WeightExpr>, Vec<i64>),
    /// Rows of a `[heads * head_dim, d]` projection reordered from the interleaved rotary
    /// layout (pairs `2i, 2i+1`, as in Meta's LLaMA checkpoints) to the rotate-half layout
    /// (`i, i + head_dim/2`) that `nn.rope` uses.
    RopeHalves(Box<WeightExpr>, usize),
    /// The first when the checkpoint has every tensor it loads, else the second (an
    /// `lm_head.weight` that may be left out when tied to the embedding).
    Or(Box<WeightExpr>, Box<WeightExpr>),
}

impl WeightExpr {
    /// The checkpoint name templates this expression loads.
    pub fn loads(&self) -> Vec<&str> {
        match self {
            WeightExpr::Load(n) => vec![n.as_str()],
            WeightExpr::Transpose(e) | WeightExpr::Split { of: e, .. } | WeightExpr::Reshape(e, _) | WeightExpr::RopeHalves(e, _) => {
                e.loads()
            }
            WeightExpr::Or(a, b) => [a.loads(), b.loads()].concat(),
        }
    }
}

impl fmt::Display for WeightExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightExpr::Load(n) => write!(f, "\"{n}\""),
            WeightExpr::Transpose(e) => write!(f, "transpose({e})"),
            WeightExpr::Split { of, parts, index, axis } => write!(f, "split({of}, {parts}, axis = {axis})[{index}]"),
            WeightExpr::Reshape(e, s) => write!(f, "reshape({e}, {s:?})"),
            WeightExpr::RopeHalves(e, h) => write!(f, "rope_halves({e}, {h})"),
            WeightExpr::Or(a, b) => write!(f, "{a} or {b}"),
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

/// Matches a parameter name against a pattern: `{x}` matches one non-empty segment without
/// dots. Returns the holes' values.
pub fn match_pattern(pattern: &str, name: &str) -> Option<HashMap<String, String>> {
    let mut holes = HashMap::new();
    let mut rest = name;
    let mut pat = pattern;
    while !pat.is_empty() {
        if let Some(after) = pat.strip_prefix('{') {
            let close = after.find('}')?;
            let hole = &after[..close];
            pat = &after[close + 1..];
            let len = rest.find('.').unwrap_or(rest.len());
            if len == 0 {
                return None;
            }
            holes.insert(hole.to_string(), rest[..len].to_string());
            rest = &rest[len..];
        } else {
            let lit_len = pat.find('{').unwrap_or(pat.len());
            rest = rest.strip_prefix(&pat[..lit_len])?;
            pat = &pat[lit_len..];
        }
    }
    rest.is_empty().then_some(holes)
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
    }
}
