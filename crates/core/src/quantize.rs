//! Static int8 quantization of an f32 ONNX embedder into the QDQ form that `face-edge-kernels` runs in
//! integer arithmetic: int8 weights with one scale per output channel behind a `DequantizeLinear`, and
//! uint8 activations behind `QuantizeLinear -> DequantizeLinear` pairs whose ranges are the minimum and
//! maximum seen while tract runs the f32 graph on calibration inputs. The same recipe as onnxruntime's
//! `quantize_static(QDQ, per_channel, MinMax, QUInt8 activations, QInt8 weights)`, which
//! `models/quantize.py` calls and the tests compare with.
//!
//! Pure: ONNX bytes and input tensors in, ONNX bytes out. Reading crops, the held-out check and
//! writing files are the daemon's (`face_edge::quantize`).

use prost::Message as _;
use std::collections::{HashMap, HashSet};
use tract_onnx::data_resolver::MmapDataResolver;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::pb::tensor_proto::{DataLocation, DataType};
use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};
use tract_onnx::prelude::*;
use tract_onnx::tensor::load_tensor;

/// Per-axis `DequantizeLinear` (per-channel weight scales) exists from this opset on.
const QDQ_OPSET: i64 = 13;
/// The IR version that opset 13 needs.
const QDQ_IR_VERSION: i64 = 7;

/// Ops whose meaning is the same in opsets 11, 12 and 13, so a graph made only of them can declare
/// opset 13 unchanged. Anything else (Softmax, Squeeze, Split, the reductions...) changed at 13 and
/// needs a real converter (`python3 models/quantize.py` uses onnx's).
const SAME_FROM_OPSET_11: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "Conv",
    "Div",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "Identity",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Mul",
    "Pad",
    "PRelu",
    "Relu",
    "Reshape",
    // Opset 13 only made its roi and scales inputs optional (and added bfloat16).
    "Resize",
    "Sigmoid",
    "Sub",
    "Tanh",
    "Transpose",
];

/// Ops whose inputs and outputs get quantizers, as onnxruntime's QDQ quantizer places them: the
/// layers the integer kernels replace and the cheap ops between them.
const QUANTIZED_OPS: &[&str] = &[
    "Add",
    "AveragePool",
    "Clip",
    "Concat",
    "Conv",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Mul",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Transpose",
];

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error("not an ONNX model: {0}")]
    Decode(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("tract cannot run the f32 model for calibration: {0}")]
    Tract(String),
    #[error("calibration input {index}: {message}")]
    Input { index: usize, message: String },
    #[error("no calibration input was given")]
    NoCalibration,
}

/// The observed range of one activation tensor.
#[derive(Debug, Clone, Copy)]
struct Range {
    low: f32,
    high: f32,
}

/// A quantization in progress: the f32 graph prepared for QDQ (opset 13, Conv + Relu/Clip fused) and
/// the tract plan that reports every activation to be quantized.
pub struct QdqQuantizer {
    model: ModelProto,
    /// Names of the activation tensors to quantize, in the order of the plan's outputs.
    tensors: Vec<String>,
    plan: std::sync::Arc<TypedSimplePlan>,
    ranges: Vec<Option<Range>>,
    inputs_seen: usize,
    folded_activations: usize,
}

/// What `finish` made.
pub struct QdqModel {
    pub bytes: Vec<u8>,
    /// Activation tensors given a QuantizeLinear/DequantizeLinear pair.
    pub activations: usize,
    /// Weight tensors stored as int8.
    pub weights: usize,
    /// Relu/Clip nodes folded into the range of the convolution before them.
    pub folded_activations: usize,
    pub calibration_inputs: usize,
}

/// Whether the tensors that only feed the graph's outputs through layout ops and Sigmoid (a
/// detector's heads: scores, box and landmark offsets) are quantized too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heads {
    /// Everything, as onnxruntime's quantizer does (embedders: the recipe models/quantize.py is
    /// compared with).
    Quantized,
    /// Kept in f32: a detector's outputs are decoded into pixel coordinates and a score threshold,
    /// where 256 levels over each head's range cost landmark precision and move borderline scores,
    /// for a few small convolutions' worth of f32 work.
    F32,
}

impl QdqQuantizer {
    /// Prepares `onnx` (an f32 model with one image input of `input_shape`) for calibration, every
    /// activation quantized.
    pub fn new(onnx: &[u8], input_shape: &[usize]) -> Result<QdqQuantizer, QuantizeError> {
        Self::with_heads(onnx, input_shape, Heads::Quantized)
    }

    /// `new`, with `heads` saying whether the output heads are quantized.
    pub fn with_heads(
        onnx: &[u8],
        input_shape: &[usize],
        heads: Heads,
    ) -> Result<QdqQuantizer, QuantizeError> {
        let mut model =
            ModelProto::decode(onnx).map_err(|e| QuantizeError::Decode(e.to_string()))?;
        let graph = model
            .graph
            .as_mut()
            .ok_or_else(|| QuantizeError::Decode("the model has no graph".into()))?;
        refuse_unsupported(graph)?;
        // Calibrated on the graph as it is, so a folded Relu/Clip's output range is the one measured.
        let unfolded = model.clone();
        let graph = model.graph.as_mut().expect("checked above");
        let folded_activations = fold_activations(graph);
        let mut candidates = activation_candidates(graph);
        if heads == Heads::F32 {
            let heads = head_tensors(graph);
            candidates.retain(|t| !heads.contains(t.as_str()));
        }
        declare_opset_13(&mut model)?;
        let (plan, tensors) = calibration_plan(&unfolded, &candidates, input_shape)?;
        let ranges = vec![None; tensors.len()];
        Ok(QdqQuantizer {
            model,
            tensors,
            plan,
            ranges,
            inputs_seen: 0,
            folded_activations,
        })
    }

    /// How many activation tensors will be quantized.
    pub fn activation_count(&self) -> usize {
        self.tensors.len()
    }

    /// Runs the f32 model on one input (as the embedder feeds it) and widens every activation's range.
    pub fn observe(&mut self, input: Tensor) -> Result<(), QuantizeError> {
        let index = self.inputs_seen;
        let outputs = self
            .plan
            .run(tvec!(input.into()))
            .map_err(|e| QuantizeError::Input {
                index,
                message: format!("{e:#}"),
            })?;
        for (range, value) in self.ranges.iter_mut().zip(outputs.iter()) {
            let values = crate::inference::f32_values(value).map_err(|e| QuantizeError::Input {
                index,
                message: format!("{e:#}"),
            })?;
            for &v in values.iter().filter(|v| v.is_finite()) {
                let r = range.get_or_insert(Range { low: v, high: v });
                r.low = r.low.min(v);
                r.high = r.high.max(v);
            }
        }
        self.inputs_seen += 1;
        Ok(())
    }

    /// The QDQ model: int8 weights and the calibrated activation quantizers.
    pub fn finish(self) -> Result<QdqModel, QuantizeError> {
        if self.inputs_seen == 0 {
            return Err(QuantizeError::NoCalibration);
        }
        let QdqQuantizer {
            mut model,
            tensors,
            ranges,
            inputs_seen,
            folded_activations,
            ..
        } = self;
        let graph = model.graph.as_mut().expect("checked in new");
        let mut names = Names::of(graph);
        let weights = quantize_weights(graph, &mut names);
        let quantizers: HashMap<String, ActivationQuantizer> = tensors
            .iter()
            .zip(&ranges)
            .filter_map(|(t, r)| r.map(|r| (t.clone(), ActivationQuantizer::of(r))))
            .collect();
        insert_activation_quantizers(graph, &quantizers, &mut names);
        Ok(QdqModel {
            bytes: model.encode_to_vec(),
            activations: quantizers.len(),
            weights,
            folded_activations,
            calibration_inputs: inputs_seen,
        })
    }
}

/// Refuses graphs this quantizer would get wrong: already quantized, weights in external files.
fn refuse_unsupported(graph: &GraphProto) -> Result<(), QuantizeError> {
    if let Some(node) = graph.node.iter().find(|n| {
        n.op_type == "QuantizeLinear"
            || n.op_type == "DequantizeLinear"
            || n.op_type.starts_with("QLinear")
    }) {
        return Err(QuantizeError::Unsupported(format!(
            "the model is already quantized (node {:?} is a {}); start from the f32 model",
            node.name, node.op_type
        )));
    }
    if let Some(t) = graph
        .initializer
        .iter()
        .find(|t| t.data_location == Some(DataLocation::External as i32))
    {
        return Err(QuantizeError::Unsupported(format!(
            "weight {:?} is stored in an external file; only self-contained .onnx files are quantized",
            t.name
        )));
    }
    Ok(())
}

/// Opset 11 and 12 graphs made only of ops that did not change declare opset 13, which per-channel
/// `DequantizeLinear` needs. Older graphs, or other ops, are refused with the op named.
fn declare_opset_13(model: &mut ModelProto) -> Result<(), QuantizeError> {
    let graph = model.graph.as_ref().expect("checked in new");
    let Some(opset) = model
        .opset_import
        .iter_mut()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
    else {
        return Err(QuantizeError::Unsupported(
            "the model declares no ONNX opset".into(),
        ));
    };
    if opset.version >= QDQ_OPSET {
        return Ok(());
    }
    let convert_first = |why: String| {
        QuantizeError::Unsupported(format!(
            "opset {} model: {why}; convert it to opset 13 first (python3 models/quantize.py does)",
            opset.version
        ))
    };
    if opset.version < 11 {
        return Err(convert_first("older than opset 11".into()));
    }
    if let Some(node) = graph
        .node
        .iter()
        .find(|n| !n.domain.is_empty() || !SAME_FROM_OPSET_11.contains(&n.op_type.as_str()))
    {
        return Err(convert_first(format!(
            "op {} (node {:?}) may mean something else at opset 13",
            node.op_type, node.name
        )));
    }
    opset.version = QDQ_OPSET;
    model.ir_version = model.ir_version.max(QDQ_IR_VERSION);
    Ok(())
}

/// Removes each Relu, and each Clip whose range contains 0, that is the only reader of a convolution's
/// output: the convolution writes the activation's output instead, whose calibrated range starts at
/// the clip's bounds, so the uint8 saturation does the clipping (onnxruntime does the same).
fn fold_activations(graph: &mut GraphProto) -> usize {
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for input in &node.input {
            readers.entry(input.as_str()).or_default().push(i);
        }
    }
    let constants = Constants::of(graph);
    let mut folds = vec![];
    for (i, node) in graph.node.iter().enumerate() {
        if node.op_type != "Conv" || outputs.contains(node.output[0].as_str()) {
            continue;
        }
        let [reader] = readers.get(node.output[0].as_str()).map_or(&[][..], |r| r) else {
            continue;
        };
        let activation = &graph.node[*reader];
        let contains_zero = match activation.op_type.as_str() {
            "Relu" => true,
            "Clip" => {
                let bound = |k: usize, default: f32| match activation.input.get(k) {
                    None => Some(default),
                    Some(name) if name.is_empty() => Some(default),
                    Some(name) => constants.scalar(name),
                };
                matches!(
                    (bound(1, f32::NEG_INFINITY), bound(2, f32::INFINITY)),
                    (Some(low), Some(high)) if low <= 0.0 && high >= 0.0
                ) && activation.attribute.is_empty()
            }
            _ => false,
        };
        if contains_zero && activation.input[0] == node.output[0] {
            folds.push((i, *reader));
        }
    }
    let mut removed = HashSet::new();
    for &(conv, activation) in &folds {
        let out = graph.node[activation].output[0].clone();
        graph.node[conv].output[0] = out;
        removed.insert(activation);
    }
    let mut index = 0;
    graph.node.retain(|_| {
        index += 1;
        !removed.contains(&(index - 1))
    });
    // The folded clips' bounds, if they were Constant nodes, are read by nothing now.
    let read: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    graph
        .node
        .retain(|n| n.op_type != "Constant" || n.output.iter().any(|o| read.contains(o)));
    // Shape annotations of tensors that no longer exist would mislead a reader; they are optional.
    graph.value_info.clear();
    folds.len()
}

/// Activation tensors to quantize: the image input and every node output that an op of
/// `QUANTIZED_OPS` writes or reads, except the graph's outputs (the embedding stays f32) and the
/// outputs of Constant nodes. Tensors tract finds to be constants or not f32 are dropped later.
fn activation_candidates(graph: &GraphProto) -> Vec<String> {
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let mut read_by_quantized: HashSet<&str> = HashSet::new();
    for node in graph
        .node
        .iter()
        .filter(|n| QUANTIZED_OPS.contains(&n.op_type.as_str()))
    {
        read_by_quantized.extend(node.input.iter().map(String::as_str));
    }
    let mut candidates: Vec<String> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|name| !initializers.contains(name))
        .map(str::to_owned)
        .collect();
    for node in &graph.node {
        if node.op_type == "Constant" || !node.domain.is_empty() {
            continue;
        }
        let writes_quantized = QUANTIZED_OPS.contains(&node.op_type.as_str());
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            if !outputs.contains(out.as_str())
                && (writes_quantized || read_by_quantized.contains(out.as_str()))
            {
                candidates.push(out.clone());
            }
        }
    }
    candidates
}

/// Ops that move or squash values on the way to an output without computing new features.
const HEAD_OPS: &[&str] = &["Flatten", "Reshape", "Sigmoid", "Transpose"];

/// The tensors every reader of which is a `HEAD_OPS` node whose outputs are graph outputs or such
/// tensors themselves: the output heads' values.
fn head_tensors(graph: &GraphProto) -> HashSet<&str> {
    let mut heads: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    // Backwards from the outputs until nothing changes (the graphs are small).
    loop {
        let before = heads.len();
        for node in &graph.node {
            for input in &node.input {
                let readers: Vec<&NodeProto> = graph
                    .node
                    .iter()
                    .filter(|n| n.input.contains(input))
                    .collect();
                let into_head = |n: &&NodeProto| {
                    HEAD_OPS.contains(&n.op_type.as_str())
                        && n.output.iter().all(|o| heads.contains(o.as_str()))
                };
                if !heads.contains(input.as_str()) && readers.iter().all(into_head) {
                    heads.insert(input);
                }
            }
        }
        if heads.len() == before {
            return heads;
        }
    }
}

/// The f32 model with every candidate as an output, optimised by tract; returns the tensors it
/// reports, those that are f32 activations (not constants), in output order.
fn calibration_plan(
    model: &ModelProto,
    candidates: &[String],
    input_shape: &[usize],
) -> Result<(std::sync::Arc<TypedSimplePlan>, Vec<String>), QuantizeError> {
    let tract_err = |e: TractError| QuantizeError::Tract(format!("{e:#}"));
    let parsed = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .with_ignore_output_shapes(true)
        .parse(model, None)
        .map_err(tract_err)?;
    let mut inference = parsed.model;
    inference
        .set_input_fact(0, f32::fact(input_shape).into())
        .map_err(tract_err)?;
    let outlets: Vec<OutletId> = candidates
        .iter()
        .map(|name| parsed.outlets_by_name[name])
        .collect();
    inference
        .select_output_outlets(&outlets)
        .map_err(tract_err)?;
    let mut typed = inference.into_typed().map_err(tract_err)?;
    let mut kept_outlets = vec![];
    let mut kept_names = vec![];
    for (name, outlet) in candidates
        .iter()
        .zip(typed.output_outlets().map_err(tract_err)?)
    {
        let fact = typed.outlet_fact(*outlet).map_err(tract_err)?;
        if fact.datum_type == f32::datum_type() && fact.konst.is_none() {
            kept_outlets.push(*outlet);
            kept_names.push(name.clone());
        }
    }
    typed
        .select_output_outlets(&kept_outlets)
        .map_err(tract_err)?;
    let plan = typed
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(tract_err)?;
    Ok((plan, kept_names))
}

/// A uint8 quantizer for a range: asymmetric, covering 0 (padding and ReLU zeros stay exact).
#[derive(Debug, Clone, Copy)]
struct ActivationQuantizer {
    scale: f32,
    zero_point: u8,
}

impl ActivationQuantizer {
    fn of(range: Range) -> ActivationQuantizer {
        let low = f64::from(range.low.min(0.0));
        let high = f64::from(range.high.max(0.0));
        let scale = (high - low) / 255.0;
        if scale == 0.0 || !scale.is_finite() {
            return ActivationQuantizer {
                scale: 1.0,
                zero_point: 0,
            };
        }
        let zero_point = (-low / scale).round_ties_even().clamp(0.0, 255.0) as u8;
        ActivationQuantizer {
            scale: scale as f32,
            zero_point,
        }
    }
}

/// Tensor and node names in use, to give each new one a name of its own.
struct Names(HashSet<String>);

impl Names {
    fn of(graph: &GraphProto) -> Names {
        let mut used: HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
        used.extend(graph.input.iter().map(|i| i.name.clone()));
        for node in &graph.node {
            used.insert(node.name.clone());
            used.extend(node.input.iter().cloned());
            used.extend(node.output.iter().cloned());
        }
        Names(used)
    }

    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_owned();
        let mut n = 1;
        while self.0.contains(&name) {
            n += 1;
            name = format!("{base}_{n}");
        }
        self.0.insert(name.clone());
        name
    }
}

/// Float values of initializers and Constant nodes, for Clip bounds.
struct Constants<'a>(HashMap<&'a str, &'a TensorProto>);

impl<'a> Constants<'a> {
    fn of(graph: &'a GraphProto) -> Constants<'a> {
        let mut map: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        for node in graph.node.iter().filter(|n| n.op_type == "Constant") {
            if let Some(t) = node
                .attribute
                .iter()
                .find(|a| a.name == "value")
                .and_then(|a| a.t.as_ref())
            {
                map.insert(node.output[0].as_str(), t);
            }
        }
        Constants(map)
    }

    fn scalar(&self, name: &str) -> Option<f32> {
        match floats(self.0.get(name)?)?.as_slice() {
            [v] => Some(*v),
            _ => None,
        }
    }
}

/// The values of an f32 tensor stored in the file, read by tract-onnx's own loader.
fn floats(t: &TensorProto) -> Option<Vec<f32>> {
    if t.data_type != DataType::Float as i32 {
        return None;
    }
    let tensor = load_tensor(&MmapDataResolver, t, None).ok()?;
    Some(
        tensor
            .try_as_plain_ram()
            .ok()?
            .as_slice::<f32>()
            .ok()?
            .to_vec(),
    )
}

/// The axis of the output channels in a weighted op's weight (input 1).
fn weight_axis(node: &NodeProto) -> Option<usize> {
    match node.op_type.as_str() {
        "Conv" => Some(0),
        "Gemm" => {
            let trans_b = node
                .attribute
                .iter()
                .find(|a| a.name == "transB")
                .map_or(0, |a| a.i);
            Some(if trans_b != 0 { 0 } else { 1 })
        }
        "MatMul" => Some(1),
        _ => None,
    }
}

/// Stores each weight of Conv/Gemm/MatMul read by that node alone as int8, symmetric, one scale per
/// output channel (largest magnitude / 127), behind a per-axis DequantizeLinear. Returns how many.
fn quantize_weights(graph: &mut GraphProto, names: &mut Names) -> usize {
    let mut readers: HashMap<String, usize> = HashMap::new();
    for node in &graph.node {
        for input in &node.input {
            *readers.entry(input.clone()).or_default() += 1;
        }
    }
    let mut dequantizers = vec![];
    let mut new_initializers = vec![];
    let mut replaced = HashSet::new();
    for node in &graph.node {
        let Some(axis) = weight_axis(node) else {
            continue;
        };
        let Some(name) = node.input.get(1) else {
            continue;
        };
        let Some(tensor) = graph.initializer.iter().find(|t| &t.name == name) else {
            continue;
        };
        if readers[name] != 1 || tensor.dims.len() < 2 || tensor.dims.len() <= axis {
            continue;
        }
        let Some(values) = floats(tensor) else {
            continue;
        };
        let (int8, scales) = per_channel_int8(&values, &tensor.dims, axis);
        let quantized = names.fresh(&format!("{name}_quantized"));
        let scale = names.fresh(&format!("{name}_scale"));
        let zero = names.fresh(&format!("{name}_zero_point"));
        new_initializers.push(TensorProto {
            name: quantized.clone(),
            dims: tensor.dims.clone(),
            data_type: DataType::Int8 as i32,
            raw_data: int8.iter().map(|&v| v as u8).collect(),
            ..Default::default()
        });
        new_initializers.push(f32_tensor(&scale, &[scales.len() as i64], &scales));
        new_initializers.push(TensorProto {
            name: zero.clone(),
            dims: vec![scales.len() as i64],
            data_type: DataType::Int8 as i32,
            raw_data: vec![0; scales.len()],
            ..Default::default()
        });
        let mut dq = node_of(
            "DequantizeLinear",
            names.fresh(&format!("{name}_DequantizeLinear")),
            [quantized, scale, zero],
            name.clone(),
        );
        dq.attribute.push(AttributeProto {
            name: "axis".into(),
            r#type: AttributeType::Int as i32,
            i: axis as i64,
            ..Default::default()
        });
        dequantizers.push(dq);
        replaced.insert(name.clone());
    }
    graph.initializer.retain(|t| !replaced.contains(&t.name));
    graph.initializer.extend(new_initializers);
    let count = dequantizers.len();
    dequantizers.append(&mut graph.node);
    graph.node = dequantizers;
    count
}

/// int8 values and one scale per channel of `axis`: scale = largest magnitude / 127, values rounded
/// half to even (as numpy's rint in onnxruntime's quantizer).
fn per_channel_int8(values: &[f32], dims: &[i64], axis: usize) -> (Vec<i8>, Vec<f32>) {
    let channels = dims[axis] as usize;
    let inner: usize = dims[axis + 1..].iter().product::<i64>() as usize;
    let channel_of = |i: usize| (i / inner) % channels;
    let mut peaks = vec![0f32; channels];
    for (i, v) in values.iter().enumerate() {
        let c = channel_of(i);
        peaks[c] = peaks[c].max(v.abs());
    }
    let scales: Vec<f32> = peaks
        .iter()
        .map(|&p| if p > 0.0 { p / 127.0 } else { 1.0 })
        .collect();
    let int8 = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (v / scales[channel_of(i)])
                .round_ties_even()
                .clamp(-127.0, 127.0) as i8
        })
        .collect();
    (int8, scales)
}

fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_owned(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node_of(op: &str, name: String, inputs: [String; 3], output: String) -> NodeProto {
    NodeProto {
        name,
        op_type: op.into(),
        input: inputs.into(),
        output: vec![output],
        ..Default::default()
    }
}

/// Puts `QuantizeLinear -> DequantizeLinear` after each quantized tensor's writer (or at the start, for
/// the graph input) and makes every reader take the dequantized copy.
fn insert_activation_quantizers(
    graph: &mut GraphProto,
    quantizers: &HashMap<String, ActivationQuantizer>,
    names: &mut Names,
) {
    let mut dequantized: HashMap<String, String> = HashMap::new();
    let mut pairs: HashMap<String, [NodeProto; 2]> = HashMap::new();
    let mut sorted: Vec<(&String, &ActivationQuantizer)> = quantizers.iter().collect();
    sorted.sort_by_key(|(name, _)| name.as_str());
    for (tensor, q) in sorted {
        let scale = names.fresh(&format!("{tensor}_scale"));
        let zero = names.fresh(&format!("{tensor}_zero_point"));
        let quantized = names.fresh(&format!("{tensor}_QuantizeLinear_Output"));
        let restored = names.fresh(&format!("{tensor}_DequantizeLinear_Output"));
        graph.initializer.push(f32_tensor(&scale, &[], &[q.scale]));
        graph.initializer.push(TensorProto {
            name: zero.clone(),
            data_type: DataType::Uint8 as i32,
            raw_data: vec![q.zero_point],
            ..Default::default()
        });
        let quantize = node_of(
            "QuantizeLinear",
            names.fresh(&format!("{tensor}_QuantizeLinear")),
            [tensor.clone(), scale.clone(), zero.clone()],
            quantized.clone(),
        );
        let dequantize = node_of(
            "DequantizeLinear",
            names.fresh(&format!("{tensor}_DequantizeLinear")),
            [quantized, scale, zero],
            restored.clone(),
        );
        dequantized.insert(tensor.clone(), restored);
        pairs.insert(tensor.clone(), [quantize, dequantize]);
    }
    let old = std::mem::take(&mut graph.node);
    let mut nodes = Vec::with_capacity(old.len() + 2 * pairs.len());
    for input in &graph.input {
        if let Some(pair) = pairs.remove(&input.name) {
            nodes.extend(pair);
        }
    }
    for mut node in old {
        for input in node.input.iter_mut() {
            if let Some(d) = dequantized.get(input.as_str()) {
                *input = d.clone();
            }
        }
        let outputs = node.output.clone();
        nodes.push(node);
        for out in outputs {
            if let Some(pair) = pairs.remove(&out) {
                nodes.extend(pair);
            }
        }
    }
    graph.node = nodes;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{OperatorSetIdProto, ValueInfoProto};

    fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
        NodeProto {
            name: format!("{op}_{output}"),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            ..Default::default()
        }
    }

    fn graph(nodes: Vec<NodeProto>, initializers: Vec<TensorProto>) -> GraphProto {
        GraphProto {
            node: nodes,
            initializer: initializers,
            input: vec![ValueInfoProto {
                name: "x".into(),
                ..Default::default()
            }],
            output: vec![ValueInfoProto {
                name: "y".into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn scalar(name: &str, v: f32) -> TensorProto {
        f32_tensor(name, &[], &[v])
    }

    #[test]
    fn a_relu_or_a_clip_around_zero_is_folded_into_the_convolution_before_it() {
        let mut g = graph(
            vec![
                node("Conv", &["x", "w1"], "a"),
                node("Relu", &["a"], "b"),
                node("Conv", &["b", "w2"], "c"),
                node("Clip", &["c", "lo", "hi"], "d"),
                node("Conv", &["d", "w3"], "e"),
                node("Clip", &["e", "one", "hi"], "f"),
                node("Conv", &["f", "w4"], "y"),
            ],
            vec![scalar("lo", 0.0), scalar("hi", 6.0), scalar("one", 1.0)],
        );
        assert_eq!(fold_activations(&mut g), 2);
        let ops: Vec<(&str, &str)> = g
            .node
            .iter()
            .map(|n| (n.op_type.as_str(), n.output[0].as_str()))
            .collect();
        // Clip(1, 6) excludes 0: the uint8 range always holds 0, so it cannot do that clip.
        assert_eq!(
            ops,
            [
                ("Conv", "b"),
                ("Conv", "d"),
                ("Conv", "e"),
                ("Clip", "f"),
                ("Conv", "y")
            ]
        );
    }

    #[test]
    fn an_activation_of_a_shared_output_is_not_folded() {
        let mut g = graph(
            vec![
                node("Conv", &["x", "w1"], "a"),
                node("Relu", &["a"], "b"),
                node("Add", &["a", "b"], "y"),
            ],
            vec![],
        );
        assert_eq!(fold_activations(&mut g), 0);
        assert_eq!(g.node.len(), 3);
    }

    #[test]
    fn activation_ranges_cover_zero_and_map_it_exactly() {
        let q = ActivationQuantizer::of(Range {
            low: 0.5,
            high: 6.0,
        });
        assert_eq!((q.scale, q.zero_point), (6.0 / 255.0, 0));
        let q = ActivationQuantizer::of(Range {
            low: -1.0,
            high: 3.0,
        });
        assert_eq!(q.zero_point, 64); // 1 / (4 / 255) = 63.75
        assert!((q.scale - 4.0 / 255.0).abs() < 1e-9);
        let q = ActivationQuantizer::of(Range {
            low: -2.0,
            high: -1.0,
        });
        assert_eq!(q.zero_point, 255);
        let q = ActivationQuantizer::of(Range {
            low: 0.0,
            high: 0.0,
        });
        assert_eq!((q.scale, q.zero_point), (1.0, 0));
    }

    #[test]
    fn weights_get_one_scale_per_output_channel() {
        // 2 x 3 on axis 1 (a Gemm without transB): columns are the channels.
        let (q, scales) = per_channel_int8(&[1.0, -4.0, 0.0, 0.5, 2.0, 0.0], &[2, 3], 1);
        assert_eq!(scales, [1.0 / 127.0, 4.0 / 127.0, 1.0]);
        assert_eq!(q, [127, -127, 0, 64, 64, 0]); // 63.5 and 63.5 round half to even
        let (q, scales) = per_channel_int8(&[1.0, -2.0, 3.0, 6.0], &[2, 2], 0);
        assert_eq!(scales, [2.0 / 127.0, 6.0 / 127.0]);
        assert_eq!(q, [64, -127, 64, 127]);
    }

    fn model(opset: i64, nodes: Vec<NodeProto>) -> ModelProto {
        ModelProto {
            ir_version: 6,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
            graph: Some(graph(nodes, vec![])),
            ..Default::default()
        }
    }

    #[test]
    fn opset_11_becomes_13_only_for_ops_that_did_not_change() {
        let mut m = model(
            11,
            vec![node("Conv", &["x", "w"], "a"), node("Relu", &["a"], "y")],
        );
        declare_opset_13(&mut m).unwrap();
        assert_eq!((m.opset_import[0].version, m.ir_version), (13, 7));
        let mut m = model(11, vec![node("Softmax", &["x"], "y")]);
        let e = declare_opset_13(&mut m).unwrap_err().to_string();
        assert!(e.contains("op Softmax (node \"Softmax_y\")"), "{e}");
        let mut m = model(9, vec![node("Relu", &["x"], "y")]);
        assert!(
            declare_opset_13(&mut m)
                .unwrap_err()
                .to_string()
                .contains("older than opset 11")
        );
    }

    #[test]
    fn a_quantized_model_is_refused() {
        let m = model(13, vec![node("QuantizeLinear", &["x", "s", "z"], "y")]);
        let e = QdqQuantizer::new(&m.encode_to_vec(), &[1, 3, 8, 8])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("already quantized"), "{e}");
        let e = QdqQuantizer::new(b"\xff\xff not onnx", &[1])
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("not an ONNX model"), "{e}");
    }

    #[test]
    fn quantizers_sit_after_the_writer_and_every_reader_takes_the_dequantized_copy() {
        let mut g = graph(
            vec![
                node("Conv", &["x", "w"], "a"),
                node("Add", &["a", "a"], "y"),
            ],
            vec![],
        );
        let mut names = Names::of(&g);
        let q = ActivationQuantizer::of(Range {
            low: 0.0,
            high: 1.0,
        });
        let quantizers = HashMap::from([("x".to_string(), q), ("a".to_string(), q)]);
        insert_activation_quantizers(&mut g, &quantizers, &mut names);
        let ops: Vec<String> = g
            .node
            .iter()
            .map(|n| format!("{}({})", n.op_type, n.input[0]))
            .collect();
        assert_eq!(
            ops,
            [
                "QuantizeLinear(x)",
                "DequantizeLinear(x_QuantizeLinear_Output)",
                "Conv(x_DequantizeLinear_Output)",
                "QuantizeLinear(a)",
                "DequantizeLinear(a_QuantizeLinear_Output)",
                "Add(a_DequantizeLinear_Output)"
            ]
        );
        assert_eq!(g.node[5].input[1], "a_DequantizeLinear_Output");
    }
}
