#!/usr/bin/env python3
"""Times onnxruntime on exactly the network inputs `face-edge bench --dump-tensors DIR` wrote, on one
thread like face-edge's inference thread, and prints tract's and onnxruntime's milliseconds side by side
with their ratio. For the embedders it also checks that both runtimes give the same embedding.

    pip install -r bench/requirements.txt
    face-edge bench --dump-tensors /tmp/tensors ../shared/data/photos
    python3 bench/ort_reference.py /tmp/tensors [--json]
"""
import argparse
import json
import pathlib
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort


def session(weights: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One thread, no inter-op parallelism: the same budget as face-edge's inference thread.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(weights, options, providers=["CPUExecutionProvider"])


def timed(sess: ort.InferenceSession, tensor: np.ndarray, runs: int):
    name = sess.get_inputs()[0].name
    outputs = sess.run(None, {name: tensor})  # warm-up
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {name: tensor})
        samples.append((time.perf_counter() - t) * 1e3)
    samples.sort()
    p90 = samples[round((len(samples) - 1) * 0.9)]
    return statistics.median(samples), p90, outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=pathlib.Path, help="the --dump-tensors directory")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per input (default 50)")
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    args = parser.parse_args()

    index = json.loads((args.dir / "index.json").read_text())
    rows = []
    for entry in index:
        tensor = np.load(args.dir / entry["tensor"])
        sess = session(entry["weights"])
        median, p90, outputs = timed(sess, tensor, args.runs)
        row = {
            "stage": entry["stage"],
            "model": entry["model"],
            "input": list(tensor.shape),
            "tract_median_ms": entry["tract_median_ms"],
            "ort_median_ms": median,
            "ort_p90_ms": p90,
            "ratio": entry["tract_median_ms"] / median,
        }
        if entry.get("embedding") is not None:
            ours = np.asarray(entry["embedding"], dtype=np.float64)
            theirs = np.asarray(outputs[0], dtype=np.float64).reshape(-1)
            theirs /= np.linalg.norm(theirs)
            row["embedding_cosine"] = float(ours @ theirs)
        rows.append(row)

    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"onnxruntime {ort.__version__}, 1 thread, {args.runs} runs per input (median ms)")
    print(f"{'stage':<58} {'tract':>8} {'ort':>8} {'ratio':>6}")
    for r in rows:
        extra = f"  cosine {r['embedding_cosine']:.6f}" if "embedding_cosine" in r else ""
        print(f"{r['stage']:<58} {r['tract_median_ms']:>8.2f} {r['ort_median_ms']:>8.2f} {r['ratio']:>6.2f}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
