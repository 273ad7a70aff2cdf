"""preprocess.py on a small LRS2-shaped corpus of real GRID clips (acceptance 1), and the filelists."""
import os
import subprocess
import sys

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
import soundfile

import audio
from conftest import MEDIA, REPO
from training import filelists
from preprocess import list_videos, main as preprocess_main

NO_FACE = (5, 6, 7)  # frames blacked out in the first video


def make_lrs2_corpus(root):
    """<root>/main/<speaker>/<id>.mp4: two short GRID clips (one with blacked-out frames) and a corrupt file."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    main = root / "main"
    clips = [("5535415699068794046", "00001", "bbaf2n.mpg", "1.0",
              "drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(n,%d,%d)'" % (NO_FACE[0], NO_FACE[-1])),
             ("6330311066473698535", "00002", "lwbsza.mpg", "0.8", "null")]
    for speaker, video_id, source, seconds, video_filter in clips:
        (main / speaker).mkdir(parents=True, exist_ok=True)
        subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-i", str(MEDIA / source), "-t", seconds,
                        "-vf", video_filter, "-c:v", "libx264", "-crf", "18", "-c:a", "aac",
                        str(main / speaker / (video_id + ".mp4"))], check=True)
    (main / "6330311066473698535" / "00003.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    return main


def preprocess(data_root, out, *extra):
    result = subprocess.run([sys.executable, str(REPO / "preprocess.py"), "--data_root", str(data_root),
                             "--preprocessed_root", str(out), "--batch_size", "8", *extra],
                            capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def jpg_numbers(folder):
    return sorted(int(name[:-4]) for name in os.listdir(folder) if name.endswith(".jpg"))


def test_preprocess_layout_resume_and_bad_video(tmp_path):
    data_root = make_lrs2_corpus(tmp_path / "lrs2")
    out = tmp_path / "preprocessed"
    log = preprocess(data_root, out, "--num_workers", "2")
    assert "3 videos (shard 0 of 1): 0 already complete, 3 to process on 2 worker(s) (cpu)" in log
    assert "done: 2 processed (45 frames, 42 with a face), 0 already complete, 1 failed" in log
    assert "failed %s: no audio extracted" % (data_root / "6330311066473698535" / "00003.mp4") in log

    first = out / "5535415699068794046" / "00001"
    second = out / "6330311066473698535" / "00002"
    # Frame numbers count every frame from 0; the blacked-out ones leave a gap.
    assert jpg_numbers(first) == [k for k in range(25) if k not in NO_FACE]
    assert jpg_numbers(second) == list(range(20))
    assert sorted(os.listdir(out / "6330311066473698535")) == ["00002"]  # nothing of the corrupt video
    crop = cv2.imread(str(first / "0.jpg"))
    assert 60 < crop.shape[0] < 288 and 60 < crop.shape[1] < 360  # a face, not the whole 360x288 frame
    for folder, video, seconds in ((first, "5535415699068794046/00001.mp4", 1.0),
                                   (second, "6330311066473698535/00002.mp4", 0.8)):
        info = soundfile.info(str(folder / "audio.wav"))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert abs(info.duration - seconds) < 0.05
        # The video's own track, as audio.load_wav decodes it from the mp4 (which also keeps the
        # AAC encoder's padding at the end, hence only the common start is compared).
        wav, _ = soundfile.read(str(folder / "audio.wav"), dtype="float32")
        reference = audio.load_wav(str(data_root / video))[:len(wav)]
        assert np.abs(reference).max() > 0.01 and np.abs(wav - reference).max() < 0.01

    # A second run skips the complete videos (and reports the corrupt one again).
    mtime = os.path.getmtime(first / "0.jpg")
    log = preprocess(data_root, out)
    assert "3 videos (shard 0 of 1): 2 already complete, 1 to process" in log
    assert "done: 0 processed (0 frames, 0 with a face), 2 already complete, 1 failed" in log
    assert os.path.getmtime(first / "0.jpg") == mtime

    # Half-written output (an interrupted run's .partial folder, a folder without audio.wav) is redone.
    (out / "6330311066473698535" / ".00002.partial").mkdir()
    (out / "6330311066473698535" / ".00002.partial" / "0.jpg").write_bytes(b"half")
    os.remove(second / "audio.wav")
    log = preprocess(data_root, out)
    assert "done: 1 processed (20 frames, 20 with a face), 1 already complete, 1 failed" in log
    assert jpg_numbers(second) == list(range(20)) and (second / "audio.wav").is_file()
    assert sorted(os.listdir(out / "6330311066473698535")) == ["00002"]


def test_shards_split_the_corpus(tmp_path):
    for speaker in ("a", "b"):
        (tmp_path / speaker).mkdir()
        for video_id in ("00001", "00002", "00003"):
            (tmp_path / speaker / (video_id + ".mp4")).write_bytes(b"")
    everything = list_videos(str(tmp_path))
    shards = [list_videos(str(tmp_path), i, 4) for i in range(4)]
    assert sorted(sum(shards, [])) == everything and len(everything) == 6
    assert all(set(a).isdisjoint(b) for i, a in enumerate(shards) for b in shards[i + 1:])


def test_missing_data_root_is_a_one_line_error(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "preprocess.py"), "--data_root", str(tmp_path / "x"),
                             "--preprocessed_root", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].endswith("x is not a folder")


def fake_preprocessed(root, speakers=6):
    for s in range(speakers):
        for v in range(2):
            folder = root / ("spk%d" % s) / ("%05d" % v)
            folder.mkdir(parents=True)
            frames = 10 if (s, v) == (0, 1) else 16  # one video too short to train on
            for k in range(frames):
                (folder / ("%d.jpg" % k)).write_bytes(b"")
            if (s, v) != (1, 1):  # one video without audio
                (folder / "audio.wav").write_bytes(b"")
    (root / "spk2" / ".00009.partial").mkdir()  # an unfinished preprocess.py folder


def read_lists(folder):
    return {split: (folder / (split + ".txt")).read_text().split() for split in ("train", "val", "test")}


def test_filelists_split_by_speaker_deterministically(tmp_path, capsys):
    root = tmp_path / "pre"
    fake_preprocessed(root)
    filelists.main(["--preprocessed_root", str(root), "--out_dir", str(tmp_path / "a"),
                    "--val_fraction", "0.2", "--test_fraction", "0.2", "--seed", "7"])
    assert "(2 videos left out: no audio.wav or fewer than 16 face frames)" in capsys.readouterr().out
    lists = read_lists(tmp_path / "a")
    speakers = {split: {name.split("/")[0] for name in names} for split, names in lists.items()}
    assert all(speakers[a].isdisjoint(speakers[b]) for a, b in (("train", "val"), ("train", "test"), ("val", "test")))
    assert len(speakers["val"]) == len(speakers["test"]) == 1 and len(speakers["train"]) == 4
    expected = {"spk%d/%05d" % (s, v) for s in range(6) for v in range(2)} - {"spk0/00001", "spk1/00001"}
    assert sorted(sum(lists.values(), [])) == sorted(expected)

    filelists.write_filelists(str(root), str(tmp_path / "b"), 0.2, 0.2, seed=7)
    assert read_lists(tmp_path / "b") == lists  # the same seed gives the same lists
    splits = {tuple(sorted(filelists.split_speakers(["spk%d" % s for s in range(6)], 0.2, 0.2, seed)["val"]))
              for seed in range(10)}
    assert len(splits) > 1  # ... and the seed matters
    with pytest.raises(SystemExit, match="at least 3 speaker folders"):
        filelists.main(["--preprocessed_root", str(root / "spk0"), "--out_dir", str(tmp_path / "c")])


def test_other_frame_rates_are_converted_to_25_fps(tmp_path, capsys):
    """Training reads frame k at mel column int(80 k / 25): a 30 fps video comes out at 25 fps."""
    main = tmp_path / "lrs2" / "main"
    (main / "spk").mkdir(parents=True)
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-i", str(MEDIA / "bbaf2n.mpg"),
                    "-t", "1.0", "-r", "30", "-c:v", "libx264", "-crf", "18", "-c:a", "aac",
                    str(main / "spk" / "00001.mp4")], check=True)
    out = tmp_path / "preprocessed"
    preprocess_main(["--data_root", str(main), "--preprocessed_root", str(out)])
    assert "done: 1 processed (25 frames, 25 with a face)" in capsys.readouterr().out
    assert jpg_numbers(out / "spk" / "00001") == list(range(25))
    assert abs(soundfile.info(str(out / "spk" / "00001" / "audio.wav")).duration - 1.0) < 0.05


def test_frame_rate_conversion_takes_the_frame_nearest_in_time():
    from preprocess import at_frame_rate

    for fps_in, count in ((30, 30), (29.97, 60), (50, 20), (20, 12)):
        got = list(at_frame_rate(range(count), fps_in, 25))
        times = np.arange(count) / fps_in
        expected = [int(np.argmin(np.abs(times - k / 25))) for k in range(len(got))]
        assert got == expected
        # As many frames as the input lasts at 25 fps (within one).
        assert abs(len(got) - count * 25 / fps_in) <= 1


def test_a_data_root_with_brackets_finds_its_videos(tmp_path):
    root = tmp_path / "corpus [2024]" / "main"
    (root / "spk").mkdir(parents=True)
    (root / "spk" / "00001.mp4").write_bytes(b"")
    assert list_videos(str(root)) == [str(root / "spk" / "00001.mp4")]


def test_nothing_processed_and_bad_detector_weights_exit_1(tmp_path, capsys):
    main = tmp_path / "main"
    (main / "spk").mkdir(parents=True)
    for name in ("00001.mp4", "00002.mp4"):
        (main / "spk" / name).write_bytes(np.random.default_rng(1).bytes(3000))
    args = ["--data_root", str(main), "--preprocessed_root", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"^error: none of the 2 videos could be preprocessed \(see the failures "
                                         r"above\)$"):
        preprocess_main(args)
    assert "done: 0 processed (0 frames, 0 with a face), 0 already complete, 2 failed" in capsys.readouterr().out

    # A detector that cannot load fails once, before any video, not once per video.
    with pytest.raises(SystemExit, match=r"^error: no checkpoint file at .*s3fd.pth; check the path$"):
        preprocess_main(args + ["--s3fd_path", str(tmp_path / "s3fd.pth")])
    assert "done:" not in capsys.readouterr().out
