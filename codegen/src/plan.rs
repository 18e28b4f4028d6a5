//! The memory plan of a kernel program, shared by the CPU and GPU executors: intermediate
//! buffers placed in one arena, a slot reused once its last reader has run.

use crate::kernel::{BufId, Program, Storage};

/// Where each arena buffer lives: byte offsets and the arena size.
#[derive(Clone, Debug)]
pub struct MemoryPlan {
    /// Offset of each buffer (arena buffers only).
    pub offsets: Vec<Option<usize>>,
    /// Arena size in bytes.
    pub bytes: usize,
}

const ALIGN: usize = 64;

/// Plans the arena: buffers are placed first-fit when their step runs and freed after their
/// last reader (outputs live to the end).
pub fn plan(p: &Program, sizes: &[usize]) -> MemoryPlan {
    let n = p.buffers.len();
    let last = p.last_reads();
    let mut offsets = vec![None; n];
    let mut live: Vec<(usize, usize, BufId)> = Vec::new(); // (offset, size, buffer)
    let mut bytes = 0;
    for (s, step) in p.steps.iter().enumerate() {
        for &b in step.outs() {
            // A step writing into a view writes its base's memory.
            let b = p.root(b);
            if p.buffers[b].storage == Storage::Arena && offsets[b].is_none() {
                let size = sizes[b].div_ceil(ALIGN).max(1) * ALIGN;
                live.sort_unstable();
                let mut at = 0;
                for &(o, sz, _) in &live {
                    if o >= at + size {
                        break;
                    }
                    at = at.max(o + sz);
                }
                live.push((at, size, b));
                offsets[b] = Some(at);
                bytes = bytes.max(at + size);
            }
        }
        live.retain(|&(_, _, buf)| last[buf] > s);
    }
    MemoryPlan { offsets, bytes }
}
