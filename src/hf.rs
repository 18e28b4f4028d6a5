//! Hugging Face-format models: `config.json` → hyper-parameters, `model.safetensors` →
//! parameters (through the model file's `checkpoint` map), `tokenizer.json` → token ids, and
//! sentence embeddings (mean pooling) on top.

use crate::ir::Graph;
use crate::lang::{CheckpointMap, ConfigValue};
use crate::runtime::{self, Bound, Dims, RunError, Tensor};
use serde_json::Value as Json;
use std::collections::HashMap;

/// Reads a `config.json`.
pub fn read_config(path: &str) -> Result<Json, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let v: Json = serde_json::from_str(&python_constants(&text)).map_err(|e| format!("{path} is not valid JSON: {e}"))?;
    if !v.is_object() {
        return Err(format!("{path} should hold a JSON object"));
    }
    Ok(v)
}

/// Strings that stand for the bare `Infinity`, `-Infinity` and `NaN` of Python's `json`
/// (which `transformers` writes, e.g. Mamba-2's `time_step_limit`), so that a strict JSON
/// parser reads them; [`config_value`] turns them back into floats.
const PY_CONSTANTS: [(&str, &str, f64); 3] =
    [("-Infinity", "\\u0000-Infinity", f64::NEG_INFINITY), ("Infinity", "\\u0000Infinity", f64::INFINITY), ("NaN", "\\u0000NaN", f64::NAN)];

/// Rewrites the bare constants outside strings to [`PY_CONSTANTS`] placeholders.
fn python_constants(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut quoted, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !quoted {
            if let Some((word, placeholder, _)) = PY_CONSTANTS.iter().find(|(w, ..)| rest.starts_with(w)) {
                out.push('"');
                out.push_str(placeholder);
                out.push('"');
                rest = &rest[word.len()..];
                continue;
            }
        }
        if quoted && escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Looks `key` up in a configuration; `a.b` reaches into nested objects and `a.0` into lists
/// (Mamba-2's `time_step_limit.1`). A key holding `null` reads as [`ConfigValue::Null`], an
/// absent one as `None`.
pub fn config_value(config: &Json, key: &str) -> Option<ConfigValue> {
    key.split('.')
        .try_fold(config, |v, k| match (v, k.parse::<usize>()) {
            (Json::Array(items), Ok(i)) => items.get(i),
            _ => v.get(k),
        })
        .map(json_value)
}

fn json_value(v: &Json) -> ConfigValue {
    match v {
        Json::Null => ConfigValue::Null,
        Json::Bool(b) => ConfigValue::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => ConfigValue::Int(i),
            None => ConfigValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => match PY_CONSTANTS.iter().find(|(w, ..)| s.strip_prefix('\0') == Some(*w)) {
            Some((.., f)) => ConfigValue::Float(*f),
            None => ConfigValue::Str(s.clone()),
        },
        Json::Array(items) => ConfigValue::List(items.iter().map(json_value).collect()),
        // `transformers` ≥ 5 writes a non-finite float as {"__float__": "Infinity"}.
        Json::Object(o) => match (o.len(), o.get("__float__").and_then(Json::as_str)) {
            (1, Some(w)) => match PY_CONSTANTS.iter().find(|(name, ..)| *name == w) {
                Some((.., f)) => ConfigValue::Float(*f),
                None => ConfigValue::Other(v.to_string()),
            },
            _ => ConfigValue::Other(v.to_string()),
        },
    }
}

/// Reads the checkpoint at `path` and binds it to the parameters of `g`, through `map` when
/// the model file has one (names taken as they are otherwise).
pub fn load_weights(g: &Graph, dims: &Dims, map: Option<&CheckpointMap>, path: &str) -> Result<Bound, RunError> {
    let ck = runtime::read_safetensors(path)?;
    let empty = crate::ir::NameMap::default();
    runtime::bind_checkpoint(g, dims, map.map_or(&empty, |m| &m.names), &ck, path)
}

/// Token ids for a batch of texts from a `tokenizer.json`, padded to the longest: the
/// tensors `input_ids`, `attention_mask` and `token_type_ids` ([n, longest], i64).
pub fn tokenize(tokenizer_json: &str, texts: &[String]) -> Result<Vec<(String, Tensor)>, String> {
    let mut tok = tokenizers::Tokenizer::from_file(tokenizer_json).map_err(|e| format!("cannot load {tokenizer_json}: {e}"))?;
    // Pad to the longest text and do not truncate: a tokenizer.json may fix both (MiniLM's pads
    // every text to 128), which Hugging Face's own pipelines override the same way.
    tok.with_padding(Some(tokenizers::PaddingParams::default()));
    tok.with_truncation(None).map_err(|e| format!("cannot configure {tokenizer_json}: {e}"))?;
    let enc = tok.encode_batch(texts.to_vec(), true).map_err(|e| format!("cannot tokenize: {e}"))?;
    let n = enc.len();
    let len = enc.iter().map(|e| e.len()).max().unwrap_or(0);
    let field = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| {
        let data = enc.iter().flat_map(|e| f(e).iter().map(|&x| i64::from(x))).collect();
        Tensor::i64(vec![n, len], data)
    };
    Ok(vec![
        ("input_ids".to_string(), field(&|e| e.get_ids())),
        ("attention_mask".to_string(), field(&|e| e.get_attention_mask())),
        ("token_type_ids".to_string(), field(&|e| e.get_type_ids())),
    ])
}

/// Sentence embeddings: `hidden` [n, s, d] averaged over the positions where `mask` [n, s] is
/// nonzero, then scaled to unit length. Returns [n, d].
pub fn mean_pool_normalize(hidden: &Tensor, mask: &Tensor) -> Result<Tensor, String> {
    let [n, s, d] = hidden.shape[..] else { return Err(format!("expected a [batch, seq, d] output, got {:?}", hidden.shape)) };
    if mask.shape != [n, s] {
        return Err(format!("attention_mask is {:?}, the output {:?}", mask.shape, hidden.shape));
    }
    let mut out = vec![0.0f64; n * d];
    for b in 0..n {
        let row = &mut out[b * d..(b + 1) * d];
        let mut count = 0.0;
        for t in 0..s {
            if mask.get(b * s + t) != 0.0 {
                count += 1.0;
                for (k, r) in row.iter_mut().enumerate() {
                    *r += hidden.get((b * s + t) * d + k);
                }
            }
        }
        row.iter_mut().for_each(|r| *r /= f64::max(count, 1e-9));
        let norm = row.iter().map(|r| r * r).sum::<f64>().sqrt().max(1e-12);
        row.iter_mut().for_each(|r| *r /= norm);
    }
    Ok(Tensor::from_f64(crate::ir::DType::F32, vec![n, d], out.into_iter()))
}

/// The inputs of `g` among `tensors`, by name; the others are dropped (a tokenizer gives
/// `token_type_ids` to models that may not take them).
pub fn declared_inputs(g: &Graph, tensors: Vec<(String, Tensor)>) -> HashMap<String, Tensor> {
    let declared: Vec<&str> = g.inputs().iter().map(|(n, _)| *n).collect();
    tensors.into_iter().filter(|(n, _)| declared.contains(&n.as_str())).collect()
}

/// A text tokenizer from a `tokenizer.json`, for generation.
pub struct TextTokenizer(tokenizers::Tokenizer);

impl TextTokenizer {
    /// Loads `tokenizer.json`.
    pub fn load(path: &str) -> Result<TextTokenizer, String> {
        tokenizers::Tokenizer::from_file(path).map(TextTokenizer).map_err(|e| format!("cannot load {path}: {e}"))
    }

    /// The ids of a text, with the tokenizer's special tokens (a BOS where it adds one).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, String> {
        let enc = self.0.encode(text, true).map_err(|e| format!("cannot tokenize {text:?}: {e}"))?;
        Ok(enc.get_ids().iter().map(|&x| i64::from(x)).collect())
    }

    /// The text of some ids (special tokens left out). An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[i64]) -> Result<String, String> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&x| u32::try_from(x).map_err(|_| format!("token id {x} is outside the vocabulary")))
            .collect::<Result<_, _>>()?;
        self.0.decode(&ids, true).map_err(|e| format!("cannot decode: {e}"))
    }
}

/// Integer ids a config gives for `key`: a number or a list of numbers (`eos_token_id`).
pub fn config_ids(config: &Json, key: &str) -> Vec<i64> {
    match config.get(key) {
        Some(Json::Number(n)) => n.as_i64().into_iter().collect(),
        Some(Json::Array(a)) => a.iter().filter_map(Json::as_i64).collect(),
        _ => Vec::new(),
    }
}

/// The standard library's model file for a config's `model_type` (`stdlib/llama.tsr`): looked
/// up under the working directory, then beside this build's sources.
pub fn stdlib_model(config: &Json, path: &str) -> Result<String, String> {
    let Some(kind) = config.get("model_type").and_then(Json::as_str) else {
        return Err(format!("{path} has no `model_type`: name the model file (e.g. stdlib/llama.tsr)"));
    };
    if !kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(format!("{path}: `model_type` {kind:?} is not a model name"));
    }
    let candidates = [format!("stdlib/{kind}.tsr"), format!("{}/stdlib/{kind}.tsr", env!("CARGO_MANIFEST_DIR"))];
    candidates
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .ok_or_else(|| format!("the standard library has no model for `model_type` = {kind:?} (from {path}): name a model file"))
}
