//! Runs one ONNX network N times on a fixed input the way face-edge plans it (declutter, face-edge's
//! kernels, optimise; one thread), for bench/arm_icount.sh to count instructions per inference
//! under qemu against onnxruntime doing the same.
//!
//! `network_runs MODEL.onnx 1x3x112x112 N [tract|f16]`: `tract` leaves face-edge's kernels out,
//! `f16` translates the graph to half precision as `--precision f16` does. With `NETWORK_RUNS_GRAPH`
//! set it prints the decluttered graph, with `NETWORK_RUNS_OPS` the optimised plan's operator counts
//! (which of face-edge's ops were installed).

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{bail, format_err};

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, shape, runs, rest @ ..] = args.as_slice() else {
        bail!("usage: network_runs MODEL.onnx 1x3x112x112 N [tract|f16]");
    };
    let shape: Vec<usize> = shape.split('x').map(str::parse).collect::<Result<_, _>>()?;
    let runs: usize = runs.parse()?;
    let mode = rest.first().map(String::as_str).unwrap_or("face-edge");
    // As face-edge parses models: symbolic batch annotations would clash with the batch of 1.
    let mut typed = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .with_ignore_output_shapes(true)
        .model_for_path(model)?
        .with_input_fact(0, f32::fact(&shape).into())?
        .into_typed()?;
    typed = if mode == "face-edge" {
        face_edge_kernels::declutter(typed)?
    } else {
        typed.into_decluttered()?
    };
    let mut input = Tensor::from_shape(
        &shape,
        &(0..shape.iter().product::<usize>())
            .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
            .collect::<Vec<_>>(),
    )?;
    if std::env::var_os("NETWORK_RUNS_GRAPH").is_some() {
        for id in typed.eval_order()? {
            let node = typed.node(id);
            eprintln!("{id} {} {:?} <- {:?}", node.name, node.op, node.inputs);
        }
    }
    match mode {
        "face-edge" => {
            face_edge_kernels::install(&mut typed)?;
        }
        "tract" => {}
        "f16" => {
            typed = tract_onnx::tract_core::transform::get_transform("f32_to_f16")?
                .ok_or_else(|| format_err!("no f32_to_f16 transform"))?
                .transform_into(typed)?;
            input = input.cast_to::<f16>()?.into_owned();
        }
        other => bail!("unknown mode {other}"),
    }
    let optimised = typed.into_optimized()?;
    if std::env::var_os("NETWORK_RUNS_OPS").is_some() {
        let mut ops = std::collections::BTreeMap::<String, usize>::new();
        for node in optimised.nodes() {
            *ops.entry(node.op.name().to_string()).or_default() += 1;
        }
        eprintln!("{ops:?}");
    }
    let plan = optimised.into_runnable()?;
    let started = std::time::Instant::now();
    for _ in 0..runs {
        plan.run(tvec!(input.clone().into_tvalue()))?;
    }
    eprintln!(
        "{mode}: {runs} runs, {:.2} ms each",
        started.elapsed().as_secs_f64() * 1e3 / runs.max(1) as f64
    );
    Ok(())
}
