#!/usr/bin/env python3
"""One ONNX network N times on onnxruntime (one thread), with its input at the shape given: for networks
whose input size is not fixed in the file (YuNet), which ../shared/tools/arm-icount/ort_net.py would run
at 1x1. The input is the same pseudo-random image every run, 0..255 like the frames YuNet is fed.

    python3 bench/ort_shaped.py MODEL.onnx 1x3x480x640 N
"""
import sys

import numpy as np
import onnxruntime as ort

path, shape, runs = sys.argv[1], [int(d) for d in sys.argv[2].split("x")], int(sys.argv[3])
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
image = (np.random.default_rng(0).random(shape, dtype=np.float32) * 255).round()
for _ in range(runs):
    session.run(None, {name: image})
