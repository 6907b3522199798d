#!/usr/bin/env python3
"""The whole-frame reference pipeline on onnxruntime + OpenCV, one thread: decode a JPEG, YuNet at the
frame's size, decoding and NMS as ../shared/README.md gives them, each face aligned to the ArcFace 112
template (similarity transform, bilinear) and embedded by MobileFaceNet. Run N times over the same frame so
that ../shared/tools/arm-icount can take the marginal instructions per frame (N and N + 5 runs), next to
`face-edge embed --model mobilefacenet FRAME...` (bench/arm_frame.sh).

    python3 bench/frame_pipeline.py YUNET.onnx MOBILEFACENET.onnx FRAME.jpg N
"""
import sys

import cv2
import numpy as np
import onnxruntime as ort

ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
SCORE, NMS_IOU = 0.7, 0.3


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def detect(yunet: ort.InferenceSession, bgr: np.ndarray) -> list[np.ndarray]:
    """Landmarks (5x2) of each face kept by NMS."""
    h, w = bgr.shape[:2]
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    padded = np.zeros((ph, pw, 3), np.float32)
    padded[:h, :w] = bgr
    outputs = dict(zip([o.name for o in yunet.get_outputs()],
                       yunet.run(None, {"input": padded.transpose(2, 0, 1)[None]})))
    boxes, scores, marks = [], [], []
    for s in (8, 16, 32):
        cols = pw // s
        cls, obj = outputs[f"cls_{s}"][0, :, 0], outputs[f"obj_{s}"][0, :, 0]
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        keep = np.nonzero(score >= SCORE)[0]
        bbox, kps = outputs[f"bbox_{s}"][0, keep], outputs[f"kps_{s}"][0, keep]
        col, row = (keep % cols).astype(np.float32), (keep // cols).astype(np.float32)
        cx, cy = (col + bbox[:, 0]) * s, (row + bbox[:, 1]) * s
        bw, bh = np.exp(bbox[:, 2]) * s, np.exp(bbox[:, 3]) * s
        boxes += [[float(x - a / 2), float(y - b / 2), float(a), float(b)] for x, y, a, b in zip(cx, cy, bw, bh)]
        scores += [float(v) for v in score[keep]]
        grid = np.stack([col, row], axis=1)[:, None, :]
        marks += list((kps.reshape(-1, 5, 2) + grid) * s)
    kept = cv2.dnn.NMSBoxes(boxes, scores, SCORE, NMS_IOU) if boxes else []
    return [marks[i] for i in np.array(kept).reshape(-1)]


def embed(mfn: ort.InferenceSession, bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    matrix, _ = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), ARCFACE_112, method=cv2.LMEDS)
    crop = cv2.warpAffine(bgr, matrix, (112, 112), flags=cv2.INTER_LINEAR, borderValue=0)
    rgb = (crop[:, :, ::-1].astype(np.float32) - 127.0) / 128.0
    vector = mfn.run(None, {"input": rgb.transpose(2, 0, 1)[None]})[0][0]
    return vector / np.linalg.norm(vector)


def main() -> None:
    yunet_path, mfn_path, frame, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    cv2.setNumThreads(1)
    yunet, mfn = session(yunet_path), session(mfn_path)
    for _ in range(runs):
        bgr = cv2.imread(frame)
        faces = [embed(mfn, bgr, marks) for marks in detect(yunet, bgr)]
    print(f"{len(faces)} face(s), first embedding starts {faces[0][:3] if faces else None}")


if __name__ == "__main__":
    main()
