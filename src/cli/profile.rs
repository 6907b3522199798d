//! `face-edge bench --profile`: where a network's time goes inside tract, summed per operator kind.

use face_edge::inference::Plan;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{SimpleState, eval};

/// One operator kind's share of a network's run time.
#[derive(Serialize)]
pub struct OpShare {
    pub op: String,
    /// How many nodes of the optimised graph are of this kind.
    pub nodes: usize,
    /// Milliseconds per run, summed over those nodes.
    pub ms: f64,
    pub percent: f64,
}

/// Runs `plan` on `input` `runs` times through one reused state, timing every node; the operator kinds
/// are sorted by time, largest first.
pub fn by_op(plan: &Plan, input: &Tensor, runs: usize) -> TractResult<Vec<OpShare>> {
    let mut state = SimpleState::new(plan)?;
    let mut totals: BTreeMap<String, (Duration, Vec<usize>)> = BTreeMap::new();
    for _ in 0..runs.max(1) {
        state.run_plan_with_eval(
            tvec!(input.clone().into_tvalue()),
            |ctx, op_state, node, inputs| {
                let started = Instant::now();
                let out = eval(ctx, op_state, node, inputs);
                let entry = totals.entry(node.op().name().to_string()).or_default();
                entry.0 += started.elapsed();
                if !entry.1.contains(&node.id) {
                    entry.1.push(node.id);
                }
                out
            },
        )?;
    }
    let total: Duration = totals.values().map(|t| t.0).sum();
    let mut shares: Vec<OpShare> = totals
        .into_iter()
        .map(|(op, (time, nodes))| OpShare {
            op,
            nodes: nodes.len(),
            ms: time.as_secs_f64() * 1000.0 / runs.max(1) as f64,
            percent: 100.0 * time.as_secs_f64() / total.as_secs_f64().max(1e-12),
        })
        .collect();
    shares.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(shares)
}
