//! Values of the elaborator: compile-time numbers and functions, or IR tensors.

use crate::ast::Def;
use std::collections::HashMap;
use std::rc::Rc;
use tessera_ir::{Dim, ValueId};

/// A value during elaboration.
#[derive(Clone, Debug)]
pub enum Value {
    /// An IR value.
    Tensor(ValueId),
    /// A compile-time integer, possibly symbolic (`seq`).
    Int(Dim),
    /// A compile-time float.
    Float(f64),
    /// A compile-time boolean.
    Bool(bool),
    /// A string (rearrange patterns, activation names).
    Str(String),
    /// `none`.
    None,
    /// `(a, b)` or `[a, b]`.
    Tuple(Vec<Value>),
    /// A definition, possibly with some parameter lists applied.
    Func(Rc<Closure>),
    /// An imported module.
    Module(usize),
    /// A built-in function.
    Builtin(&'static str),
    /// The result of an expression that already reported an error: using it reports nothing.
    Poison,
}

/// A definition with the parameter lists applied so far.
#[derive(Debug)]
pub struct Closure {
    /// The definition.
    pub def: Rc<Def>,
    /// The module it belongs to (for name lookup).
    pub module: usize,
    /// Parameters bound by earlier applications.
    pub bound: HashMap<String, Value>,
    /// How many parameter lists have been applied.
    pub applied: usize,
}

impl Value {
    /// A short description of the kind of value, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Tensor(_) => "a tensor",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a bool",
            Value::Str(_) => "a string",
            Value::None => "none",
            Value::Tuple(_) => "a tuple",
            Value::Func(_) => "a function",
            Value::Module(_) => "a module",
            Value::Builtin(_) => "a built-in function",
            Value::Poison => "an erroneous value",
        }
    }

    /// A constant integer.
    pub fn int(n: i64) -> Value {
        Value::Int(Dim::known(n))
    }
}
