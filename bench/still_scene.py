#!/usr/bin/env python3
"""CPU cost of a scripted minute of hallway video: empty for 5 s, one person walks in (2 s), stands for
20 s, walks out (2 s), empty for the rest of the minute. Frames are 640x480 JPEGs at 10 fps with
+-2 grey levels of sensor noise (so no two frames are byte-identical, as with a real camera). Runs
`face-edge run` on them three times: with the default tracking settings, without the still-scene gate
(still_threshold = 0), and embedding every detected face in every frame (embed_every = recheck_every = 1,
still_threshold = 0). Prints CPU seconds (user + system)
per minute of video for each, measured by the kernel for the face-edge process.

    python3 bench/still_scene.py --face-edge target/release/face-edge \\
        --photo ../shared/data/photos/probes/obama1.jpg --gallery ../shared/data/photos/gallery

Needs numpy and opencv-python-headless (pip), and FACE_EDGE_MODELS_DIR pointing at the models.
"""
import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile

import cv2
import numpy as np

FPS = 10
W, H = 640, 480


def render(photo: np.ndarray, x_centre: float, rng: np.random.Generator) -> np.ndarray:
    frame = np.full((H, W, 3), 40, np.uint8)
    frame[:, :, 1] = 45  # a dim, slightly green hallway wall
    if photo is not None:
        ph, pw = photo.shape[:2]
        x0 = int(round(x_centre - pw / 2))
        y0 = (H - ph) // 2
        sx0, sx1 = max(0, -x0), min(pw, W - x0)
        if sx1 > sx0:
            frame[y0:y0 + ph, x0 + sx0:x0 + sx1] = photo[:, sx0:sx1]
    noise = rng.integers(-2, 3, frame.shape, dtype=np.int16)
    return np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def scene(photo_path: str, out: pathlib.Path) -> int:
    img = cv2.imread(photo_path)
    scale = min(360 / img.shape[0], 280 / img.shape[1])
    photo = cv2.resize(img, (int(img.shape[1] * scale), int(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(7)
    outside = -photo.shape[1]  # centre position with the person fully out of view
    plan = [(None, 5 * FPS)]
    plan += [((outside + (W / 2 - outside) * i / (2 * FPS)), 1) for i in range(2 * FPS)]  # walk in
    plan += [(W / 2, 20 * FPS)]  # stand
    plan += [((W / 2 + (W - outside - W / 2) * i / (2 * FPS)), 1) for i in range(2 * FPS)]  # walk out
    plan += [(None, 60 * FPS - sum(n for _, n in plan))]
    n = 0
    for x, count in plan:
        for _ in range(count):
            frame = render(None if x is None else photo, x or 0, rng)
            cv2.imwrite(str(out / f"{n:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
            n += 1
    return n


def run(face_edge: str, frames: pathlib.Path, gallery: str, state: pathlib.Path, tracking: str) -> dict:
    config = state / "face-edge.toml"
    config.write_text(
        f'state_dir = "{state}"\n[models]\nembedder = "mobilefacenet"\n[gallery]\ndir = "{gallery}"\n'
        f"[tracking]\n{tracking}\n"
        f'[[camera]]\nname = "hall"\nkind = "files"\npath = "{frames}"\nfps = {FPS}\ndetect_fps = {FPS}\n'
    )
    # Enrol first, so that only the minute of video is measured.
    subprocess.run([face_edge, "gallery", "sync", "--config", str(config)], check=True, capture_output=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([face_edge, "run", "--config", str(config)], check=True, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    kinds = [e.get("payload", e).get("type") for e in events if "events" in e.get("topic", "")]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"cpu_s_per_min": cpu, "events": [k for k in kinds if k]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--face-edge", default="target/release/face-edge")
    parser.add_argument("--photo", required=True, help="the person who walks in (enrolled or not)")
    parser.add_argument("--gallery", required=True, help="gallery folder (one folder per person)")
    args = parser.parse_args()
    if "FACE_EDGE_MODELS_DIR" not in os.environ:
        print("set FACE_EDGE_MODELS_DIR", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        frames = tmp / "frames"
        frames.mkdir()
        count = scene(args.photo, frames)
        results = {}
        for name, tracking in [
            ("default (tracking, still-scene gate)", ""),
            ("tracking without the still-scene gate", "still_threshold = 0"),
            ("every face, every frame", "embed_every = 1\nrecheck_every = 1\nstill_threshold = 0"),
        ]:
            state = tmp / f"state-{len(results)}"
            state.mkdir()
            results[name] = run(args.face_edge, frames, os.path.abspath(args.gallery), state, tracking)
    print(f"{count} frames (60 s at {FPS} fps, 640x480), MobileFaceNet")
    for name, r in results.items():
        print(f"{name:<40} {r['cpu_s_per_min']:6.2f} CPU s per minute of video; events {r['events']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
