//! The Rust API (the JIT use case):
//!
//! ```no_run
//! # fn main() -> Result<(), tessera::Error> {
//! let mut model = tessera::Compiler::new().define("layers", 2).compile_file("stdlib/llama.tsr")?;
//! model.random_weights(0)?;                     // or model.load_weights("model.safetensors")?
//! let inputs = model.random_inputs(&[("batch", 1), ("seq", 16)], 0)?;
//! let outputs = model.run(&inputs)?;
//! # Ok(()) }
//! ```

use crate::{hf, render, Frontend};
use std::collections::HashMap;
pub use tessera_codegen::cuda::Precision;
pub use tessera_codegen::Backend;
use tessera_codegen::Engine;
use tessera_ir::Graph;
use tessera_lang::{CheckpointMap, Override};
use tessera_runtime::{Dims, RunError, Tensor};

/// Errors of the API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The program has mistakes; the rendered diagnostics.
    #[error("{0}")]
    Diagnostics(String),
    /// Running or loading failed.
    #[error(transparent)]
    Run(#[from] RunError),
    /// A file could not be read.
    #[error("{0}")]
    Io(String),
    /// A compiler bug.
    #[error("internal error: {0}")]
    Internal(String),
    /// Generation cannot run this model or these inputs (the message names the op or size).
    #[error("{0}")]
    Generation(String),
}

/// Compiles model files into runnable [`Model`]s.
#[derive(Clone, Debug)]
pub struct Compiler {
    defines: Vec<(String, Override)>,
    model: Option<String>,
    config: Option<serde_json::Value>,
    backend: Backend,
    keep_clif: bool,
    precision: Precision,
}

impl Default for Compiler {
    fn default() -> Compiler {
        Compiler::new()
    }
}

impl Compiler {
    /// Defaults: the file's only model, its default hyper-parameters, the CPU backend.
    pub fn new() -> Compiler {
        Compiler { defines: Vec::new(), model: None, config: None, backend: Backend::Cpu, keep_clif: false, precision: Precision::F32 }
    }

    /// Sets a hyper-parameter (wins over a config.json).
    pub fn define(mut self, key: &str, value: impl Into<Override>) -> Compiler {
        self.defines.push((key.to_string(), value.into()));
        self
    }

    /// Chooses the model of a file that defines several.
    pub fn model(mut self, name: &str) -> Compiler {
        self.model = Some(name.to_string());
        self
    }

    /// Takes hyper-parameters from a Hugging Face config.json (through the checkpoint map).
    pub fn config_file(mut self, path: &str) -> Result<Compiler, Error> {
        self.config = Some(hf::read_config(path).map_err(Error::Io)?);
        Ok(self)
    }

    /// Chooses the backend.
    pub fn backend(mut self, backend: Backend) -> Compiler {
        self.backend = backend;
        self
    }

    /// Stores f32 tensors as `precision` says (bf16: the CUDA backend only).
    pub fn precision(mut self, precision: Precision) -> Compiler {
        self.precision = precision;
        self
    }

    /// Keeps the Cranelift IR of the compiled kernels (see [`Model::clif`]).
    pub fn keep_clif(mut self, keep: bool) -> Compiler {
        self.keep_clif = keep;
        self
    }

    /// Compiles a `.tsr` file.
    pub fn compile_file(&self, path: &str) -> Result<Model, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io(format!("cannot read {path}: {e}")))?;
        self.compile_str(path, &text)
    }

    /// Compiles `.tsr` source text (`path` names it in diagnostics and resolves imports).
    pub fn compile_str(&self, path: &str, text: &str) -> Result<Model, Error> {
        let fe = Frontend::tsr_with_config(path, text, self.model.as_deref(), &self.defines, self.config.as_ref());
        let Some(g) = fe.graph else { return Err(Error::Diagnostics(render(&fe.diagnostics, &fe.sources, false, 100))) };
        Model::from_graph(g, fe.checkpoint, self.backend, self.keep_clif, self.precision)
    }
}

/// A compiled model with its parameters.
pub struct Model {
    graph: Graph,
    checkpoint: Option<CheckpointMap>,
    engine: Engine,
    backend: Backend,
    precision: Precision,
    params: HashMap<String, Tensor>,
    max_memory: u128,
    /// The prefill and decode programs, compiled on the first [`Model::session`].
    generation: std::sync::OnceLock<crate::generate::Programs>,
}

impl Model {
    /// Optimises `g` and, for the CPU backend, schedules and compiles it.
    pub fn from_graph(
        g: Graph,
        checkpoint: Option<CheckpointMap>,
        backend: Backend,
        keep_clif: bool,
        precision: Precision,
    ) -> Result<Model, Error> {
        tessera_ir::verify(&g).map_err(|e| Error::Internal(e.join("\n")))?;
        let g = tessera_passes::run_pipeline(&g, |_, _| {}).map_err(|e| Error::Internal(e.to_string()))?;
        let engine = Engine::new(&g, backend, keep_clif, precision)?;
        Ok(Model {
            graph: g,
            checkpoint,
            engine,
            backend,
            precision,
            params: HashMap::new(),
            max_memory: crate::default_memory_budget(),
            generation: std::sync::OnceLock::new(),
        })
    }

    /// Compiles another graph over this model's parameters for its backend (generation's
    /// prefill and decode programs).
    pub(crate) fn engine_for(&self, g: &Graph) -> Result<Engine, Error> {
        Ok(self.engine.sibling(g, self.backend, self.precision)?)
    }

    /// The generation programs, derived and compiled on first use.
    pub(crate) fn programs(&self) -> Result<&crate::generate::Programs, Error> {
        if let Some(p) = self.generation.get() {
            return Ok(p);
        }
        let p = crate::generate::Programs::new(self)?;
        Ok(self.generation.get_or_init(|| p))
    }

    /// Runs `engine` (compiled from `g`) on this model's parameters, writing outputs into the
    /// memory of the tensors of `reuse` with their names.
    pub(crate) fn run_engine(
        &self,
        engine: &Engine,
        g: &Graph,
        dims: &Dims,
        inputs: &HashMap<String, Tensor>,
        reuse: HashMap<String, Tensor>,
    ) -> Result<(tessera_codegen::engine::Outputs, Option<tessera_codegen::RunStats>), Error> {
        engine.memory_estimate(g, dims)?.check(self.max_memory)?;
        Ok(engine.run_reusing(g, dims, inputs, &self.params, reuse)?)
    }

    /// Refuses runs (and random weights) estimated to need more than `bytes` (default: this
    /// machine's memory), before anything is allocated.
    pub fn set_max_memory(&mut self, bytes: u128) {
        self.max_memory = bytes;
    }

    /// The optimised graph.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The kernel program (compiled backends).
    pub fn program(&self) -> Option<&tessera_codegen::Program> {
        self.engine.program()
    }

    /// The Cranelift IR of the compiled kernels (when the compiler kept it).
    pub fn clif(&self) -> &[String] {
        self.engine.clif()
    }

    /// Loads a safetensors checkpoint through the model's checkpoint map. Returns the names
    /// of checkpoint tensors no parameter used.
    pub fn load_weights(&mut self, path: &str) -> Result<Vec<String>, Error> {
        let bound = hf::load_weights(&self.graph, &Dims::new(), self.checkpoint.as_ref(), path)?;
        self.set_params(bound.params);
        Ok(bound.unused)
    }

    /// Seeded random parameters (the documented initialisation).
    pub fn random_weights(&mut self, seed: u64) -> Result<(), Error> {
        let mut params = 0u128;
        for (_, v) in self.graph.params() {
            let n: u128 = tessera_runtime::concrete(&self.graph.ty(v).shape, &Dims::new())?.iter().map(|&n| n as u128).product();
            params += n * self.graph.ty(v).dtype.size() as u128;
        }
        tessera_runtime::MemoryEstimate { params, ..Default::default() }.check(self.max_memory)?;
        let params = tessera_runtime::random_params(&self.graph, &Dims::new(), seed)?;
        self.set_params(params);
        Ok(())
    }

    /// Seeded random inputs for the given dimension sizes.
    pub fn random_inputs(&self, dims: &[(&str, i64)], seed: u64) -> Result<HashMap<String, Tensor>, Error> {
        let dims: Dims = dims.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        Ok(tessera_runtime::random_inputs(&self.graph, &dims, seed, &HashMap::new())?)
    }

    /// Runs on the inputs (dimension sizes taken from them).
    pub fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, Error> {
        let mut dims = Dims::new();
        tessera_runtime::bind_dims(&self.graph, inputs, &mut dims)?;
        self.run_with_dims(&dims, inputs)
    }

    /// Runs with explicit dimension sizes.
    pub fn run_with_dims(&self, dims: &Dims, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, Error> {
        let declared: Vec<&str> = self.graph.inputs().iter().map(|(n, _)| *n).collect();
        if let Some(extra) = inputs.keys().find(|k| !declared.contains(&k.as_str())) {
            return Err(RunError::Unknown { kind: "input", name: extra.clone() }.into());
        }
        self.engine.memory_estimate(&self.graph, dims)?.check(self.max_memory)?;
        Ok(self.engine.run(&self.graph, dims, inputs, &self.params)?.0)
    }

    /// The parameters, by name.
    pub fn params(&self) -> &HashMap<String, Tensor> {
        &self.params
    }

    /// Replaces the parameters (and forgets what the engines derived from the old ones).
    pub fn set_params(&mut self, params: HashMap<String, Tensor>) {
        self.params = params;
        self.engine.forget_params();
        if let Some(p) = self.generation.get() {
            p.forget_params();
        }
    }
}
