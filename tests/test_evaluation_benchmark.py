"""Benchmark video generation (gen_videos_from_filelist.py, real_videos_inference.py) on GRID clips."""
import os
import subprocess

import av
import imageio_ffmpeg
import numpy as np
import pytest
import torch

from conftest import MEDIA
from evaluation import benchmark
from evaluation.gen_videos_from_filelist import main as gen_main

SIZE = 96  # tiny face-centred clips keep Wav2Lip on CPU fast
WHOLE_FRAME_BOX = ["--box", "0", str(SIZE), "0", str(SIZE)]


def face_clip(source, target, seconds):
    """An LRS2-like face-centred clip of a GRID video: the face region, small, 16 kHz mono."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-i", str(source),
                    "-t", str(seconds), "-vf", "crop=150:150:80:90,scale=%d:%d" % (SIZE, SIZE), "-ac", "1",
                    "-ar", "16000", str(target)], check=True)


@pytest.fixture(scope="module")
def lrs2(tmp_path_factory, check):
    """data_root/<speaker>/<id>.mp4 from three GRID speakers, and an official-format checkpoint."""
    root = tmp_path_factory.mktemp("lrs2")
    for speaker, clip, seconds in (("5535415699068794046", "bbaf2n", 0.8), ("5536038039829982468", "lwbsza", 0.8),
                                   ("5537334262591010006", "swiz3n", 0.4)):
        face_clip(MEDIA / ("%s.mpg" % clip), root / "main" / speaker / "00001.mp4", seconds)
    checkpoint = root / "wav2lip.pth"
    torch.save({"state_dict": check.make_state_dict("wav2lip", 11)}, checkpoint)
    return root


def run(lrs2, lines, folder, *extra):
    """gen_videos_from_filelist on a list of `lines` in `folder`, writing to folder/out."""
    (folder / "list.txt").write_text("".join(line + "\n" for line in lines))
    return gen_main(["--filelist", str(folder / "list.txt"), "--data_root", str(lrs2 / "main"), "--results_dir",
                     str(folder / "out"), "--checkpoint_path", str(lrs2 / "wav2lip.pth"), "--device", "cpu", "--quiet",
                     *extra])


def streams(path):
    with av.open(str(path)) as container:
        frames = sum(1 for _ in container.decode(video=0))
        return frames, len(container.streams.audio)


def test_one_video_per_pair_then_a_rerun_skips_them_all(lrs2, tmp_path, capsys):
    lines = ["5535415699068794046/00001 5536038039829982468/00001",  # audio first, then video
             "5536038039829982468/00001 5535415699068794046/00001",
             "5535415699068794046/00001 5535415699068794046/00001"]
    assert run(lrs2, lines, tmp_path, *WHOLE_FRAME_BOX) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "3 generated, 0 already done, 0 failed (of 3 pairs)"
    expected = sorted("%s__%s.mp4" % tuple(part.replace("/", "_") for part in line.split()) for line in lines)
    assert sorted(os.listdir(tmp_path / "out")) == expected
    needed = benchmark.benchmark_frame_count(str(lrs2 / "main" / "5535415699068794046" / "00001.mp4"), 25.0)
    for name in expected:
        frames, audio_streams = streams(tmp_path / "out" / name)
        assert frames >= needed and audio_streams == 1
    stamps = {name: os.stat(tmp_path / "out" / name).st_mtime_ns for name in expected}
    assert run(lrs2, lines, tmp_path, *WHOLE_FRAME_BOX) == 0
    assert capsys.readouterr().out.strip() == "0 generated, 3 already done, 0 failed (of 3 pairs)"
    assert {name: os.stat(tmp_path / "out" / name).st_mtime_ns for name in expected} == stamps


def test_bad_pairs_are_reported_one_line_each_and_fail_only_when_nothing_is_made(lrs2, tmp_path, capsys):
    lines = ["5535415699068794046/00001 nobody/00001",  # video pointing nowhere
             "nobody/00002 5535415699068794046/00001",  # audio pointing nowhere
             "5535415699068794046/00001 5537334262591010006/00001"]  # 0.4 s video for 0.8 s of audio
    assert run(lrs2, lines, tmp_path, *WHOLE_FRAME_BOX) == 1
    out, err = capsys.readouterr()
    assert out.strip() == "0 generated, 0 already done, 3 failed (of 3 pairs)"
    messages = err.strip().splitlines()
    assert len(messages) == 3
    assert "video file not found" in messages[0] and "nobody/00001.mp4" in messages[0]
    assert "audio file not found" in messages[1] and "nobody/00002.mp4" in messages[1]
    assert "has 10 frames but the audio needs" in messages[2]
    assert os.listdir(tmp_path / "out") == []


def test_missing_filelist_or_checkpoint_is_one_line_and_non_zero(lrs2, tmp_path, capsys):
    code = gen_main(["--filelist", str(tmp_path / "none.txt"), "--data_root", str(lrs2), "--results_dir",
                     str(tmp_path / "out"), "--checkpoint_path", str(tmp_path / "missing.pth"), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: filelist not found")
    (tmp_path / "list.txt").write_text("a b\n")
    code = gen_main(["--filelist", str(tmp_path / "list.txt"), "--data_root", str(lrs2), "--results_dir",
                     str(tmp_path / "out"), "--checkpoint_path", str(tmp_path / "missing.pth"), "--quiet"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.pth" in err


def test_tts_stretch_repeats_frames_evenly():
    indices = benchmark.stretch_indices(10, 25)
    assert len(indices) == 25 and indices[0] == 0 and indices[-1] == 9
    assert set(indices) == set(range(10)) and np.all(np.diff(indices) >= 0)
    assert sorted(np.bincount(indices)) == [2] * 5 + [3] * 5  # 25 frames from 10: each shown 2 or 3 times
