#!/usr/bin/env python3
"""What each detection size costs in small-face recall. Every gallery photo's main face is shrunk to a
series of widths (in pixels of the camera frame) and pasted, alone, into a 1280x720 frame at a fixed
place; `face-edge detect --json --max-side N` then looks for it at each detection size. A face counts as
found when a detection overlaps the pasted face's box with IoU >= 0.5. Prints, per detection size, the
share found at every face width and the smallest width found in every photo.

    python3 bench/small_faces.py --face-edge target/release/face-edge --photos ../shared/data/photos/gallery

Needs numpy and opencv-python-headless (pip), and FACE_EDGE_MODELS_DIR pointing at the models.
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import cv2
import numpy as np

FRAME_W, FRAME_H = 1280, 720
WIDTHS = [12, 16, 20, 24, 32, 40, 48, 64, 80, 96]


def detect(face_edge: str, paths: list, max_side: int) -> dict:
    out = subprocess.run(
        [face_edge, "detect", "--json", "--max-side", str(max_side), *map(str, paths)],
        capture_output=True, text=True,
    )
    results = {}
    for line in out.stdout.splitlines():
        record = json.loads(line)
        results[record["path"]] = [f["box"] for f in record.get("faces") or []]
    return results


def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--face-edge", default="target/release/face-edge")
    parser.add_argument("--photos", required=True, type=pathlib.Path)
    parser.add_argument("--sizes", default="320,640,0", help="detection max sides (0 = native)")
    args = parser.parse_args()
    photos = sorted(p for p in args.photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    # The main face of every photo at native resolution, found the same way.
    boxes = detect(args.face_edge, photos, 0)
    with tempfile.TemporaryDirectory() as tmp:
        frames = []  # (photo, width, path, expected box)
        for photo in photos:
            found = boxes.get(str(photo)) or []
            if not found:
                print(f"{photo}: no face at native resolution; skipped", file=sys.stderr)
                continue
            x1, y1, x2, y2 = max(found, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
            image = cv2.imread(str(photo))
            for width in WIDTHS:
                scale = width / (x2 - x1)
                small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                frame = np.full((FRAME_H, FRAME_W, 3), 96, np.uint8)
                # The face's top-left corner lands at (400, 200); the rest of the photo is cropped.
                ox, oy = int(400 - x1 * scale), int(200 - y1 * scale)
                sx0, sy0 = max(0, -ox), max(0, -oy)
                dx0, dy0 = max(0, ox), max(0, oy)
                h = min(small.shape[0] - sy0, FRAME_H - dy0)
                w = min(small.shape[1] - sx0, FRAME_W - dx0)
                frame[dy0:dy0 + h, dx0:dx0 + w] = small[sy0:sy0 + h, sx0:sx0 + w]
                path = pathlib.Path(tmp) / f"{photo.stem}_{width}.png"
                cv2.imwrite(str(path), frame)
                box = [x1 * scale + ox, y1 * scale + oy, x2 * scale + ox, y2 * scale + oy]
                frames.append((photo.name, width, path, box))
        for max_side in [int(s) for s in args.sizes.split(",")]:
            found = detect(args.face_edge, [f[2] for f in frames], max_side)
            hits = {}
            for photo, width, path, box in frames:
                hit = any(iou(box, b) >= 0.5 for b in found.get(str(path), []))
                hits.setdefault(width, []).append(hit)
            label = "native 1280x720" if max_side == 0 else f"max side {max_side}"
            shares = "  ".join(f"{w}px {100 * sum(h) / len(h):3.0f}%" for w, h in sorted(hits.items()))
            print(f"detect at {label:<16} found: {shares}")


if __name__ == "__main__":
    main()
