"""Real-videos mode (face tracks cropped as syncnet_python's run_pipeline) and ReSyncED generation."""
import json
import os
import subprocess

import av
import imageio_ffmpeg
import numpy as np
import pytest
import torch

from conftest import MEDIA
from evaluation import benchmark, real_videos, video
from evaluation.real_videos_inference import main as resynced_main
from evaluation.score import main as score_main
from test_evaluation_weights import rule_state_dict


def ffmpeg(*args):
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "syncnet_v2.model"
    torch.save(rule_state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def two_shots(tmp_path_factory):
    """Two GRID speakers one after the other, 40 + 40 frames.

    GRID has one backdrop for everyone, so the second shot is hue-shifted to make the cut
    visible to the content detector (mean HSV change 45 instead of 28, threshold 30).
    """
    path = tmp_path_factory.mktemp("real") / "two_shots.mp4"
    ffmpeg("-t", "1.6", "-i", MEDIA / "bbaf2n.mpg", "-t", "1.6", "-i", MEDIA / "lwbsza.mpg", "-filter_complex",
           "[1:v]hue=h=90[second];[0:v][0:a][second][1:a]concat=n=2:v=1:a=1[v][a]", "-map", "[v]", "-map", "[a]",
           "-ac", "1", path)
    return path


def test_crop_is_the_original_square_below_the_box_centre_padded_with_110():
    rows, cols = np.mgrid[0:200, 0:200]
    frame = np.stack([rows, cols, np.zeros_like(rows)], axis=2).astype(np.uint8)
    crop = real_videos.crop_face(frame, s=20.0, cx=100.0, cy=100.0)
    assert crop.shape == (224, 224, 3)
    assert tuple(crop[0, 0, :2]) == (80, 72)  # rows cy - s .. cy + 1.8 s, columns cx - 1.4 s .. cx + 1.4 s
    assert tuple(crop[-1, -1, :2]) == (135, 127)
    corner = real_videos.crop_face(frame, s=20.0, cx=10.0, cy=10.0)
    assert tuple(corner[0, 0]) == (110, 110, 110)  # outside the frame: padding value 110


def test_tracks_follow_overlapping_boxes_across_short_gaps_and_fill_them():
    box = (100, 100, 220, 220)
    detections = [[box] if f % 10 else [] for f in range(130)]  # every 10th frame missed
    detections[60] = [(0, 0, 50, 50)]  # a far-away box does not join the track
    (frames, boxes), = real_videos.track_faces(detections, 0, 130, min_track=100, min_face_size=100)
    assert frames[0] == 1 and frames[-1] == 129 and len(frames) == 129
    assert np.allclose(boxes, box)  # interpolated over the gaps
    assert real_videos.track_faces(detections, 0, 130, min_track=120, min_face_size=100) == []
    assert real_videos.track_faces(detections, 0, 130, min_track=100, min_face_size=120) == []


def test_shot_cut_is_found_between_two_speakers(two_shots):
    frames = video.read_frames(two_shots)
    changes = [real_videos.hsv_change(a, b) for a, b in zip(frames, frames[1:])]
    assert len(frames) == 80
    assert real_videos.shot_boundaries(changes, len(frames)) == [(0, 40), (40, 80)]


def test_real_videos_mode_scores_each_face_track(weights, two_shots, capsys):
    code = score_main(["--syncnet_model", weights, "--real_videos", "--min_track", "35", "--json", str(two_shots)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    first, second = ((r["track"], r["first_frame"], r["last_frame"]) for r in report["videos"])
    assert first[:2] == (0, 0) and second[:2] == (1, first[2] + 1)  # split at the cut
    assert 40 <= first[2] + 1 <= 41 and 40 <= second[2] - second[1] + 1 <= 41  # -r 25 may repeat a frame
    assert all(r["n_frames"] == r["last_frame"] - r["first_frame"] + 1 for r in report["videos"])
    assert report["n_scored"] == 1 and len(report["videos"]) == 2


def test_real_video_without_a_long_enough_track_is_skipped_with_the_reason(weights, capsys):
    code = score_main(["--syncnet_model", weights, "--real_videos", str(MEDIA / "bbaf2n.mpg")])
    out, err = capsys.readouterr()
    assert code == 1
    assert out.splitlines()[-1] == "nothing scored (0 scored, 1 skipped)"
    assert "no face track" in err and "more than 100 frames" in err


@pytest.fixture(scope="module")
def resynced(tmp_path_factory, check):
    """A ReSyncED-like folder: a 0.8 s GRID talking head, a 0.4 s one, a speech file; a checkpoint."""
    root = tmp_path_factory.mktemp("resynced")
    ffmpeg("-i", MEDIA / "bbaf2n.mpg", "-t", "0.8", root / "speaker.mp4")
    ffmpeg("-i", MEDIA / "swiz3n.mpg", "-t", "0.4", root / "short.mp4")
    ffmpeg("-i", MEDIA / "lwbsza.mpg", "-t", "0.8", "-vn", "-ac", "1", root / "speech.wav")
    torch.save({"state_dict": check.make_state_dict("wav2lip", 11)}, root.parent / "wav2lip.pth")
    return root


def frame_count(path):
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_resynced_tts_mode_stretches_short_videos_and_random_mode_skips_them(resynced, tmp_path, capsys):
    (tmp_path / "pairs.txt").write_text("short.mp4 speech.wav\n")
    common = ["--filelist", str(tmp_path / "pairs.txt"), "--data_root", str(resynced),
              "--checkpoint_path", str(resynced.parent / "wav2lip.pth"), "--device", "cpu", "--quiet"]
    assert resynced_main(["--mode", "random", "--results_dir", str(tmp_path / "random"), *common]) == 1
    out, err = capsys.readouterr()
    needed = benchmark.benchmark_frame_count(str(resynced / "speech.wav"), 25.0)
    assert out.strip() == "0 generated, 0 already done, 1 failed (of 1 pairs)"
    assert "has 10 frames but the audio needs %d" % needed in err
    assert resynced_main(["--mode", "tts", "--results_dir", str(tmp_path / "tts"), *common]) == 0
    assert capsys.readouterr().out.strip() == "1 generated, 0 already done, 0 failed (of 1 pairs)"
    assert frame_count(tmp_path / "tts" / "speech__short.mp4") >= needed


def test_resynced_dubbed_mode_pairs_every_file_with_its_own_audio(resynced, tmp_path, capsys):
    dubbed = tmp_path / "dubbed"
    dubbed.mkdir()
    os.symlink(resynced / "speaker.mp4", dubbed / "speaker.mp4")
    args = ["--mode", "dubbed", "--data_root", str(dubbed), "--results_dir", str(tmp_path / "out"),
            "--checkpoint_path", str(resynced.parent / "wav2lip.pth"), "--device", "cpu", "--quiet"]
    assert resynced_main(args) == 0
    assert capsys.readouterr().out.strip() == "1 generated, 0 already done, 0 failed (of 1 pairs)"
    assert os.listdir(tmp_path / "out") == ["speaker__speaker.mp4"]
