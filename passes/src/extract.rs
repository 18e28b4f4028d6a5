//! `extract`: the cheapest e-node of every e-class under a cost function, by a worklist.
//!
//! egg's `Extractor` sweeps all e-classes until nothing improves, in hash order: a chain of
//! n operations settles one link per sweep in the worst case, O(n²) cost evaluations (8 s
//! for an 11,000-term sum). Here a class is revisited only when one of its children got
//! cheaper, so each class is evaluated about once per improvement of a child.
//!
//! Assumes: a rebuilt e-graph and a cost that grows with the children's costs (as egg's
//! extractor does). Guarantees: the same choice as a sweep to the fixed point, up to ties.

use egg::{Analysis, CostFunction, EGraph, Id, Language};
use std::collections::{HashMap, HashSet, VecDeque};

/// The best node of each e-class that has one whose children all have one.
pub struct Best<L> {
    best: HashMap<Id, (f64, L)>,
}

impl<L: Language> Best<L> {
    /// Finds the cheapest node of every class of `eg` under `cost`.
    pub fn new<N: Analysis<L>, F: CostFunction<L, Cost = f64>>(eg: &EGraph<L, N>, mut cost: F) -> Best<L> {
        let mut parents: HashMap<Id, Vec<Id>> = HashMap::new();
        for class in eg.classes() {
            for node in &class.nodes {
                for &c in node.children() {
                    parents.entry(eg.find(c)).or_default().push(class.id);
                }
            }
        }
        let mut best: HashMap<Id, (f64, L)> = HashMap::new();
        let mut queue: VecDeque<Id> = eg.classes().map(|c| c.id).collect();
        let mut queued: HashSet<Id> = queue.iter().copied().collect();
        while let Some(id) = queue.pop_front() {
            queued.remove(&id);
            let mut improved = false;
            for node in &eg[id].nodes {
                if !node.children().iter().all(|c| best.contains_key(&eg.find(*c))) {
                    continue;
                }
                // Every child has a cost (checked above): the fallback is never taken.
                let c = cost.cost(node, |child| best.get(&eg.find(child)).map_or(f64::INFINITY, |(c, _)| *c));
                let c = if c.is_nan() { f64::INFINITY } else { c }; // a NaN cost never wins
                if best.get(&id).is_none_or(|(old, _)| c < *old) {
                    best.insert(id, (c, node.clone()));
                    improved = true;
                }
            }
            if improved {
                for &p in parents.get(&id).into_iter().flatten() {
                    if queued.insert(p) {
                        queue.push_back(p);
                    }
                }
            }
        }
        Best { best }
    }

    /// The cheapest node of the class `id` (canonical), if it has one.
    pub fn node(&self, id: Id) -> Option<&L> {
        self.best.get(&id).map(|(_, n)| n)
    }
}
