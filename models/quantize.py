#!/usr/bin/env python3
"""Make a smaller or int8 variant of a face-edge embedder, with its own manifest.

    pip install -r models/requirements.txt
    python3 models/quantize.py models/mobilefacenet.toml --models-dir DIR --method int8-weights
    python3 models/quantize.py models/mobilefacenet.toml --models-dir DIR --method int8-qdq \\
        --calibration CROPS_DIR

Methods:
  int8-weights  every Conv/Gemm/MatMul weight stored as int8 (symmetric, one scale per output channel)
                behind a DequantizeLinear; activations stay f32. A file about 4x smaller, computing what
                f32 computes (tract folds the dequantisation into f32 weights at load time).
  int8-qdq      onnxruntime's static quantisation in QDQ format: int8 per-channel weights, uint8
                activations whose ranges are calibrated (min/max) on aligned face crops.

Both first convert the graph to ONNX opset 13 if it is older (per-axis DequantizeLinear needs 13).

Calibration crops are images of exactly the model's input size (`face-edge embed --save-crops DIR` makes
them from any photos); other files in the folder are skipped and counted. Crops are taken in name order,
so the same folder gives the same file byte for byte.

Output, in --out-dir (default: --models-dir): `<weights stem>.<method>.onnx` and `<id>-<method>.toml`, a
manifest with the new file's sha256 and a [variant] table naming the base model and this command. Put both
in face-edge's models directory and select the variant by its id. Run by a person or CI, never by the daemon.
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import re
import shlex
import sys
import tempfile
import tomllib

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

METHODS = ("int8-weights", "int8-qdq")
QDQ_OPSET = 13


def fail(message: str) -> None:
    print(f"quantize.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def sha256_of(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_base(manifest_path: pathlib.Path, models_dir: pathlib.Path) -> tuple[dict, str, pathlib.Path]:
    text = manifest_path.read_text()
    try:
        manifest = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(f"{manifest_path}: {e}")
    if manifest.get("role") != "embedder":
        fail(f"{manifest_path}: role is {manifest.get('role')!r}; only embedders have variants")
    if "variant" in manifest:
        fail(f"{manifest_path}: already a variant of {manifest['variant'].get('base')!r}; start from the base model")
    weights = models_dir / manifest["weights"]
    if not weights.is_file():
        fail(f"{weights}: not found (the base model's weights, from its manifest {manifest_path})")
    expected = manifest.get("sha256")
    if expected and sha256_of(weights) != expected:
        fail(f"{weights}: sha256 differs from {manifest_path}'s {expected}")
    return manifest, text, weights


def at_least_opset_13(model: onnx.ModelProto) -> onnx.ModelProto:
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is None or version >= QDQ_OPSET:
        return model
    return version_converter.convert_version(model, QDQ_OPSET)


def weight_axis(node: onnx.NodeProto) -> int | None:
    """The axis of the output channels in the weight input (input 1), or None if not a weighted op."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return 1
    return None


def int8_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replaces each 2-D+ float weight of Conv/Gemm/MatMul by int8 + per-channel DequantizeLinear."""
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    replaced = 0
    new_nodes = []
    for node in graph.node:
        axis = weight_axis(node)
        name = node.input[1] if axis is not None and len(node.input) > 1 else None
        tensor = initializers.get(name) if name else None
        # A weight shared with another node keeps its float copy: rewriting it would change that node too.
        if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT or consumers[name] != 1:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(tensor).astype(np.float32)
        if w.ndim < 2:
            new_nodes.append(node)
            continue
        reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
        peak = np.abs(w).max(axis=reduce_axes)
        scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        graph.initializer.remove(tensor)
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{name}_int8"),
                numpy_helper.from_array(scale, f"{name}_scale"),
                numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero"),
            ]
        )
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                [name],
                name=f"{name}_dequantize",
                axis=axis,
            )
        )
        new_nodes.append(node)
        replaced += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    print(f"int8-weights: {replaced} weight tensors stored as int8")
    return model


class CropReader:
    """Feeds aligned crops to onnxruntime's calibrator, normalised as the manifest says."""

    def __init__(self, folder: pathlib.Path, manifest: dict, input_name: str, limit: int):
        from PIL import Image

        spec = manifest["embedder"]
        width, height = spec["input_size"]
        norm = spec["normalization"]
        scale = 1.0 / 255.0 if norm["units"] == "0..1" else 1.0
        if "mean" in norm:
            mean, gain = np.array(norm["mean"]), 1.0 / np.array(norm["std"])
        else:
            mean, gain = np.array(norm["offset"]), np.array(norm["scale"])
        bgr = spec["color"] == "BGR"
        self.inputs = []
        skipped = 0
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
            with Image.open(path) as image:
                if image.size != (width, height):
                    skipped += 1
                    continue
                pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
            if bgr:
                pixels = pixels[:, :, ::-1]
            values = (pixels * scale - mean) * gain
            self.inputs.append({input_name: values.transpose(2, 0, 1)[None].astype(np.float32)})
            if len(self.inputs) == limit:
                break
        if not self.inputs:
            fail(f"{folder}: no {width}x{height} crops to calibrate on ({skipped} images of other sizes)")
        print(f"{len(self.inputs)} {width}x{height} crops from {folder} ({skipped} images of other sizes skipped)")
        self.next = iter(self.inputs)

    def get_next(self):
        return next(self.next, None)

    def rewind(self):
        self.next = iter(self.inputs)


def int8_qdq(model: onnx.ModelProto, reader: CropReader, out: pathlib.Path) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        converted = pathlib.Path(tmp) / "opset13.onnx"
        prepared = pathlib.Path(tmp) / "prepared.onnx"
        onnx.save(model, converted)
        # Shape inference and graph clean-up first, as onnxruntime recommends before quantising.
        quant_pre_process(str(converted), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )


def check_against_base(base: pathlib.Path, variant: pathlib.Path, crops: list[dict], bound: float) -> float:
    """Embeds the crops with both models in onnxruntime and refuses a variant whose mean cosine to the
    base's embeddings is under `bound`; returns that mean."""
    import onnxruntime

    def embed(path: pathlib.Path) -> np.ndarray:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rows = np.concatenate([session.run(None, feed)[0].reshape(1, -1) for feed in crops])
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    cosines = (embed(base) * embed(variant)).sum(axis=1)
    print(f"check: cosine to the base model on {len(crops)} crops: mean {cosines.mean():.5f}, min {cosines.min():.5f}")
    if cosines.mean() < bound:
        variant.unlink()
        fail(f"mean cosine {cosines.mean():.5f} is under {bound}: this variant would not recognise the same people; nothing written")
    return float(cosines.mean())


def variant_manifest(base_text: str, manifest: dict, method: str, weights: pathlib.Path, command: str,
                     checked_cosine: float | None) -> str:
    """The base manifest with a new id, description, weights and sha256, and a [variant] table (with the
    check's mean cosine to the base when there was one)."""
    replacements = {
        "id": f"{manifest['id']}-{method}",
        "description": f"{manifest['description']} ({method} variant)",
        "weights": weights.name,
        "sha256": sha256_of(weights),
    }
    lines = []
    top_level = True
    for line in base_text.splitlines():
        if line.startswith("["):
            top_level = False
        key = re.match(r"\s*([a-z0-9_]+)\s*=", line)
        if top_level and line.lstrip().startswith("#"):
            continue  # the base's notes (where to download it...) do not describe the variant
        if top_level and key and key.group(1) in ("url", "git_blob_sha1", "sha256"):
            continue  # the variant is made locally: no download, a checksum of its own (below)
        if top_level and key and key.group(1) in replacements:
            name = key.group(1)
            line = f"{name} = {quote(replacements[name])}"
            if name == "weights":
                line += f"\nsha256 = {quote(replacements['sha256'])}"
        lines.append(line)
    lines += [
        "",
        "[variant]",
        f"base = {quote(manifest['id'])}",
        f"method = {quote(method)}",
        f"made_by = {quote(command)}",
    ]
    if checked_cosine is not None:
        lines.append(f"checked_cosine = {checked_cosine:.5f}")
    lines.append("")
    return "\n".join(lines)


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", type=pathlib.Path, help="the base model's manifest (models/<id>.toml)")
    parser.add_argument("--models-dir", type=pathlib.Path, required=True, help="where the base weights are")
    parser.add_argument("--method", choices=METHODS, required=True)
    parser.add_argument("--calibration", type=pathlib.Path, help="int8-qdq: folder of aligned crops")
    parser.add_argument("--limit", type=int, default=500, help="int8-qdq: at most this many crops (default 500)")
    parser.add_argument("--out-dir", type=pathlib.Path, help="default: --models-dir")
    parser.add_argument("--check", type=pathlib.Path, help="folder of aligned crops to compare the variant with the base model on (default: --calibration)")
    parser.add_argument("--min-cosine", type=float, default=0.98, help="refuse a variant whose mean cosine to the base is lower (default 0.98)")
    args = parser.parse_args()

    manifest, base_text, weights = load_base(args.manifest, args.models_dir)
    out_dir = args.out_dir or args.models_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{weights.stem}.{args.method}.onnx"
    model = at_least_opset_13(onnx.load(str(weights)))

    # Written under a temporary name and renamed: an interrupted run never leaves a half file that a
    # later manifest would describe.
    partial = out.with_suffix(".onnx.partial")
    input_name = model.graph.input[0].name
    for folder in (args.calibration, args.check):
        if folder is not None and not folder.is_dir():
            fail(f"{folder}: not a folder of aligned crops")
    calibration = args.calibration and CropReader(args.calibration, manifest, input_name, args.limit)
    if args.method == "int8-weights":
        onnx.save(int8_weights(model), str(partial))
    else:
        if calibration is None:
            fail("int8-qdq needs --calibration DIR, a folder of aligned crops of the model's input size")
        int8_qdq(model, calibration, partial)
    onnx.checker.check_model(str(partial))
    check = CropReader(args.check, manifest, input_name, args.limit) if args.check else calibration
    checked_cosine = None
    if check is not None:
        checked_cosine = check_against_base(weights, partial, check.inputs, args.min_cosine)
    else:
        print("no --check or --calibration crops: the variant was not compared with the base model")
    partial.replace(out)

    command = "python3 models/quantize.py " + " ".join(
        shlex.quote(a) for a in [f"models/{args.manifest.name}", "--method", args.method]
        + (["--calibration", str(args.calibration), "--limit", str(args.limit)] if args.method == "int8-qdq" else [])
    )
    manifest_out = out_dir / f"{manifest['id']}-{args.method}.toml"
    manifest_out.write_text(variant_manifest(base_text, manifest, args.method, out, command, checked_cosine))
    print(f"{out}: {out.stat().st_size} bytes (base {weights.stat().st_size}), sha256 {sha256_of(out)}")
    print(f"{manifest_out}: manifest for id {manifest['id']}-{args.method}")


if __name__ == "__main__":
    main()
