"""The `score` command: files, folders and lists, named columns, means, --json and exit codes."""
import json
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import torch

from conftest import MEDIA, REPO
from evaluation.score import main
from test_evaluation_weights import GOLDEN, LSE, rule_state_dict


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "syncnet_v2.model"
    torch.save({k: v for k, v in rule_state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return str(path)


def ffmpeg(*args):
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder with a short talking clip, the same clip without audio and a non-video file;
    a list naming a second short clip, the first one again and a missing video."""
    root = tmp_path_factory.mktemp("inputs")
    folder = root / "videos"
    folder.mkdir()
    ffmpeg("-i", LSE / "grid_bbaf2n.mp4", "-t", "1.2", "-c:v", "libx264", "-c:a", "aac", folder / "short.mp4")
    ffmpeg("-i", folder / "short.mp4", "-an", "-c:v", "copy", folder / "silent.mp4")
    (folder / "notes.txt").write_text("not a video")
    (root / "listed").mkdir()
    ffmpeg("-i", LSE / "synth.mp4", "-t", "1.2", "-c:v", "libx264", "-c:a", "aac", root / "listed" / "synth.mp4")
    (root / "list.txt").write_text("# benchmark outputs\nlisted/synth.mp4\n\nvideos/short.mp4\nvideos/missing.mp4\n")
    return root


def test_table_with_named_columns_mean_and_one_line_per_skip(weights, inputs, capsys):
    code = main(["--syncnet_model", weights, str(inputs / "videos"), str(inputs / "list.txt"), str(MEDIA / "jfk.wav")])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["video", "LSE-D", "LSE-C", "offset"]
    rows = [line.split() for line in lines[1:-1]]
    assert [r[0] for r in rows] == [str(inputs / "videos" / "short.mp4"), str(inputs / "listed/synth.mp4")]
    assert [int(r[3]) for r in rows] == [0, 0]
    lse_d, lse_c = (np.mean([float(r[column]) for r in rows]) for column in (1, 2))
    assert lines[-1].split()[0] == "mean"
    assert abs(float(lines[-1].split()[1]) - lse_d) <= 0.001 and abs(float(lines[-1].split()[2]) - lse_c) <= 0.001
    assert lines[-1].endswith("(2 scored, 3 skipped)")
    skips = err.strip().splitlines()
    assert len(skips) == 3
    assert any("silent.mp4" in s and "no audio track" in s for s in skips)
    assert any("missing.mp4" in s and "no such file" in s for s in skips)
    assert any("jfk.wav" in s and "no video stream" in s for s in skips)


def golden_for_this_ffmpeg():
    """Per clip (offset, n_frames, min_dist, conf, curve), the aggregate and the tolerance for the
    installed ffmpeg: the golden entry made with this very build is held to 1e-3, any other build
    to the cross-build tolerance (conformance/lse/README.md, "What depends on the ffmpeg build")."""
    version = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-version"], capture_output=True,
                             text=True).stdout.split(" Copyright")[0]
    other = GOLDEN["decoding_effects"]["other_ffmpeg_build"]
    if version == other["ffmpeg"].split(" Copyright")[0]:
        clips = {c: (v["offset"], v["n_frames"], v["min_dist"], v["conf"], v["mdist"])
                 for c, v in other["clips"].items()}
        return (clips, other["aggregate"], GOLDEN["tolerance"]["from_mp4_same_ffmpeg"],
                GOLDEN["tolerance"]["aggregate_abs"])
    clips = {c: (v["from_mp4"]["offset"], v["from_mp4"]["n_frames_read"], v["from_mp4"]["min_dist"],
                 v["from_mp4"]["conf"], v["from_mp4"]["mdist"]) for c, v in GOLDEN["clips"].items()}
    loose = GOLDEN["tolerance"]["from_mp4_other_ffmpeg"]
    same = version == GOLDEN["environment"]["ffmpeg"].split(" Copyright")[0]
    tolerance = GOLDEN["tolerance"]["from_mp4_same_ffmpeg"] if same else loose
    return clips, GOLDEN["aggregate"]["from_mp4"], tolerance, tolerance["min_dist_abs"]


def test_json_report_matches_golden_scores_of_a_folder(weights, capsys):
    clips, aggregate, tol, aggregate_tol = golden_for_this_ffmpeg()
    assert main(["--syncnet_model", weights, "--json", str(LSE)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [v["video"] for v in report["videos"]] == [str(LSE / "grid_bbaf2n.mp4"), str(LSE / "synth.mp4")]
    for row, clip in zip(report["videos"], ("grid_bbaf2n", "synth")):
        offset, n_frames, min_dist, conf, curve = clips[clip]
        # Builds decode different AAC padding (n_samples), never a different frame count here.
        assert (row["offset"], row["n_frames"]) == (offset, n_frames)
        assert abs(row["lse_d"] - min_dist) <= tol["min_dist_abs"]
        assert abs(row["lse_c"] - conf) <= tol["conf_abs"]
        assert np.abs(np.array(row["curve"]) - curve).max() <= tol["mdist_abs"]
    assert abs(report["mean"]["lse_d"] - aggregate["LSE-D"]) <= aggregate_tol
    assert abs(report["mean"]["lse_c"] - aggregate["LSE-C"]) <= aggregate_tol
    assert (report["n_scored"], report["n_skipped"], report["skipped"]) == (2, 0, [])


def test_nothing_scored_exits_non_zero(weights, inputs, capsys):
    assert main(["--syncnet_model", weights, str(inputs / "videos" / "silent.mp4"), str(inputs / "empty")]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "nothing scored (0 scored, 2 skipped)"
    assert len(err.strip().splitlines()) == 2


def test_missing_model_is_one_line_and_non_zero_as_a_script(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "evaluation" / "score.py"), "--syncnet_model",
                             str(tmp_path / "syncnet_v2.model"), str(LSE / "synth.mp4")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.strip() == "error: SyncNet weights not found: %s (get syncnet_v2.model with " \
                                    "syncnet_python's download_model.sh)" % (tmp_path / "syncnet_v2.model")


def test_frames_are_found_when_the_temporary_folder_has_brackets(tmp_path, monkeypatch):
    from evaluation import video

    clip = LSE / "synth.mp4"
    expected = len(video.read_frames(clip))
    (tmp_path / "tmp [1]").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp [1]"))
    assert expected > 0 and len(video.read_frames(clip)) == expected
