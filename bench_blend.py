"""Measure the paste modes (--blend rect / feather / seamless, with and without --color_match) on
the real media of ../shared/media, and draw one frame per mode side by side.

    python bench_blend.py                       # table on stdout, picture in docs/blend_modes.png
    python bench_blend.py --frames 8 --picture modes.png

Per clip and mode: the seam score (mean absolute step across the face box border, divided by
the same step in the input: 1.0 is no visible seam), the fraction of pixels changed outside the
face box (must be 0), and the paste's cost per frame (median, ms). Faces come from the embedded
detector (the largest face, followed), the mouths from the conformance kit's deterministic
Wav2Lip weights: they make the paste visible, not a real mouth.
"""
import argparse
import importlib.util
import os
import statistics
import time

import cv2
import numpy as np

import inference
import lipsync
from options import SyncOptions

SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared")
MEDIA = os.path.join(SHARED, "media")
CLIPS = ["bbaf2n.mpg", "lwbsza.mpg", "swiz3n.mpg", "pwij3p.mpg", "obama.jpg", "obama-240p.jpg", "astronaut.png",
         "two_people.jpg", "video_01.mp4"]
MODES = {"rect": SyncOptions(), "feather": SyncOptions(blend="feather"), "seamless": SyncOptions(blend="seamless"),
         "feather+color": SyncOptions(blend="feather", color_match=True),
         "seamless+color": SyncOptions(blend="seamless", color_match=True)}
PICTURE_CLIP, PICTURE_TILE = "obama.jpg", 200


def conformance_generator():
    spec = importlib.util.spec_from_file_location("check", os.path.join(SHARED, "conformance", "check.py"))
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    from models import Wav2Lip

    model = Wav2Lip()
    model.load_state_dict(check.make_state_dict("wav2lip", 11))
    return inference.inference_model(model.eval())


def seam_steps(frame, box):
    """Absolute steps between the pixel rows/columns on either side of the box border (inside the frame)."""
    y1, y2, x1, x2 = box
    image = frame.astype(np.float32)
    steps = []
    if y1 > 0:
        steps.append(np.abs(image[y1, x1:x2] - image[y1 - 1, x1:x2]))
    if y2 < frame.shape[0]:
        steps.append(np.abs(image[y2, x1:x2] - image[y2 - 1, x1:x2]))
    if x1 > 0:
        steps.append(np.abs(image[y1:y2, x1] - image[y1:y2, x1 - 1]))
    if x2 < frame.shape[1]:
        steps.append(np.abs(image[y1:y2, x2] - image[y1:y2, x2 - 1]))
    return np.concatenate([s.reshape(-1) for s in steps])


def clip_items(name, frames, windows, detector):
    source = inference.FaceSource(os.path.join(MEDIA, name))
    boxes, _ = inference.input_boxes(source, detector, frames, SyncOptions(face_select="largest"), progress=False)
    items = []
    for index, frame in source.cycle(frames):
        box = boxes[index % len(boxes)]
        if lipsync.usable(box):
            items.append((frame, windows[len(items) % len(windows)], box))
    return items


def measure(generator, items):
    """{mode: (seam score, fraction changed outside the box, median ms per frame)}."""
    patches = lipsync.generate(generator, [lipsync.face_crop(f, b) for f, _, b in items], [m for _, m, _ in items])
    results = {}
    for mode, options in MODES.items():
        seams, outside, costs = [], [], []
        for (frame, _, box), patch in zip(items, patches):
            out = frame.copy()
            start = time.perf_counter()
            lipsync.paste(out, patch, box, options)
            costs.append(time.perf_counter() - start)
            seams.append(seam_steps(out, box).mean() / max(seam_steps(frame, box).mean(), 1e-6))
            y1, y2, x1, x2 = box
            changed = (out != frame).any(2)
            changed[y1:y2, x1:x2] = False
            outside.append(changed.sum() / (changed.size - (y2 - y1) * (x2 - x1)))
        results[mode] = (float(np.mean(seams)), float(np.max(outside)), 1000 * statistics.median(costs))
    return results


def picture(generator, items, path):
    """Input and each mode on one frame, cropped around the face, side by side with labels."""
    frame, mel, box = items[0]
    patch = lipsync.generate(generator, [lipsync.face_crop(frame, box)], [mel])[0]
    y1, y2, x1, x2 = box
    margin = (y2 - y1) // 4
    crop = (max(0, y1 - margin), min(frame.shape[0], y2 + margin), max(0, x1 - margin), min(frame.shape[1], x2 + margin))
    tiles = []
    for label, options in [("input", None)] + list(MODES.items()):
        out = frame.copy() if options is None else lipsync.paste(frame.copy(), patch, box, options)
        tile = out[crop[0]:crop[1], crop[2]:crop[3]]
        tile = cv2.resize(tile, (PICTURE_TILE, round(PICTURE_TILE * tile.shape[0] / tile.shape[1])),
                          interpolation=cv2.INTER_AREA)
        cv2.putText(tile, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 2, cv2.LINE_AA)
        tiles.append(tile)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cv2.imwrite(path, np.concatenate(tiles, axis=1), [cv2.IMWRITE_PNG_COMPRESSION, 9])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=16, help="frames per video clip (images: one)")
    parser.add_argument("--picture", default="docs/blend_modes.png")
    args = parser.parse_args()
    from face_detection.embedded import EmbeddedDetector

    detector = EmbeddedDetector()
    generator = conformance_generator()
    mel = inference.audio.melspectrogram(inference.load_speech(os.path.join(MEDIA, "swiz3n.mpg")))
    windows = inference.mel_chunks(mel, 25.0)
    print("| clip | mode | seam score (1 = none) | changed outside the box | ms per frame |")
    print("| --- | --- | --- | --- | --- |")
    for name in CLIPS:
        items = clip_items(name, args.frames, windows, detector)
        for mode, (seam, outside, ms) in measure(generator, items).items():
            print("| %s (%d frames) | %s | %.2f | %.4f | %.2f |" % (name, len(items), mode, seam, outside, ms))
        if name == PICTURE_CLIP and args.picture:
            picture(generator, items, args.picture)
    print("picture: %s" % args.picture)


if __name__ == "__main__":
    main()
