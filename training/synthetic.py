"""A synthetic preprocessed corpus whose mouths open with the loudness of the audio.

Each video is a cartoon face (per-speaker skin, eyes, face position) whose mouth height
follows the loudness envelope of a harmonic "voice" made of random syllables and pauses, so
lip sync is learnable, and quickly: it checks that the expert discriminator learns at all.

    python -m training.synthetic --out_dir synthetic_corpus --speakers 12 --videos_per_speaker 8
    python -m training.filelists --preprocessed_root synthetic_corpus --out_dir synthetic_corpus/filelists
"""
import argparse
import os

import cv2
import numpy as np
import soundfile

FPS = 25
SAMPLE_RATE = 16000


def loudness_envelope(rng, seconds):
    """Per-sample loudness in [0, 1]: syllables of 80-300 ms at random levels, separated by pauses."""
    n = int(seconds * SAMPLE_RATE)
    envelope = np.zeros(n, dtype=np.float64)
    position = int(rng.uniform(0, 0.2) * SAMPLE_RATE)
    while position < n:
        length = int(rng.uniform(0.08, 0.3) * SAMPLE_RATE)
        level = rng.uniform(0.3, 1.0)
        # A raised-cosine syllable, so loudness (and the mouth) rises and falls smoothly.
        envelope[position:position + length] = level * np.hanning(length)[:n - position]
        position += length + int(rng.uniform(0.04, 0.25) * SAMPLE_RATE)
    return envelope


def voice(rng, envelope):
    """A harmonic tone with a little noise at a per-video pitch, shaped by `envelope`."""
    t = np.arange(len(envelope)) / SAMPLE_RATE
    pitch = rng.uniform(90, 220) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    tone = sum(np.sin(k * phase) / k for k in range(1, 8)) + 0.1 * rng.standard_normal(len(t))
    return (0.3 * envelope * tone / np.abs(tone).max()).astype(np.float32)


def face_image(style, openness, size):
    """A size x size BGR face whose mouth (in the lower half) is `openness` (0..1) open."""
    skin, cx, cy = style["skin"], style["cx"] * size, style["cy"] * size
    image = np.full((size, size, 3), style["background"], dtype=np.uint8)
    cv2.ellipse(image, (int(cx), int(cy)), (int(0.38 * size), int(0.48 * size)), 0, 0, 360, skin, -1)
    for side in (-1, 1):
        cv2.circle(image, (int(cx + side * 0.15 * size), int(cy - 0.12 * size)), max(2, size // 24),
                   (40, 30, 30), -1)
    mouth_height = max(1, int((0.02 + 0.16 * openness) * size))
    cv2.ellipse(image, (int(cx), int(cy + 0.28 * size)), (int(0.14 * size), mouth_height), 0, 0, 360,
                style["lips"], -1)
    return image


def speaker_style(rng):
    return {"skin": tuple(int(v) for v in rng.integers([90, 120, 160], [170, 190, 240])),
            "lips": tuple(int(v) for v in rng.integers([20, 20, 60], [70, 60, 140])),
            "background": tuple(int(v) for v in rng.integers(0, 256, 3)),
            "cx": rng.uniform(0.46, 0.54), "cy": rng.uniform(0.44, 0.5)}


def write_video(folder, rng, style, seconds, size):
    """<folder>/<frame>.jpg and audio.wav of one synthetic talking face."""
    os.makedirs(folder, exist_ok=True)
    envelope = loudness_envelope(rng, seconds)
    soundfile.write(os.path.join(folder, "audio.wav"), voice(rng, envelope), SAMPLE_RATE, subtype="PCM_16")
    samples_per_frame = SAMPLE_RATE // FPS
    for frame in range(int(seconds * FPS)):
        openness = envelope[frame * samples_per_frame:(frame + 1) * samples_per_frame].mean()
        image = face_image(style, openness, size)
        noise = rng.normal(0, 3, image.shape)  # camera noise, so no two frames are identical
        cv2.imwrite(os.path.join(folder, "%d.jpg" % frame), np.clip(image + noise, 0, 255).astype(np.uint8))


def make_corpus(out_dir, speakers=12, videos_per_speaker=8, seconds=3.0, size=96, seed=0):
    """Write the corpus as <out_dir>/<speaker>/<id>/ folders; returns the "<speaker>/<id>" names."""
    rng = np.random.default_rng(seed)
    names = []
    for s in range(speakers):
        style = speaker_style(rng)
        for v in range(videos_per_speaker):
            name = "spk%03d/%05d" % (s, v)
            write_video(os.path.join(out_dir, name), rng, style, seconds, size)
            names.append(name)
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a synthetic preprocessed corpus (mouth follows loudness)")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--speakers", type=int, default=12)
    parser.add_argument("--videos_per_speaker", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of every video")
    parser.add_argument("--size", type=int, default=96, help="side of the face crops in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = make_corpus(args.out_dir, args.speakers, args.videos_per_speaker, args.seconds, args.size, args.seed)
    print("wrote %d videos of %d speakers to %s" % (len(names), args.speakers, args.out_dir))


if __name__ == "__main__":
    main()
