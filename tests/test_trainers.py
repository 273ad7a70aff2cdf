"""Each trainer runs a few steps on CPU on a tiny corpus, checkpoints in the original format,
resumes (step, epoch, optimizer and syncnet_wt schedule) and hands inference.py a generator it
can load (acceptance 2); bad input ends in a one-line error (acceptance 6)."""
import json
import os
import re
import subprocess
import sys

import cv2
import pytest
import torch

import color_syncnet_train
import hq_wav2lip_train
import wav2lip_train
from conftest import CONFORMANCE, REPO
from hparams import hparams
from training.filelists import write_filelists
from training.synthetic import make_corpus

TINY = ("num_workers=0,batch_size=2,syncnet_batch_size=2,checkpoint_interval=1000,eval_interval=1000,"
        "syncnet_checkpoint_interval=1000,syncnet_eval_interval=1000")
CHECKPOINT_KEYS = {"state_dict", "optimizer", "global_step", "global_epoch"}


@pytest.fixture(autouse=True)
def restore_hparams():
    saved = hparams.values()
    yield
    hparams.__dict__.update(saved)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 speakers x 2 videos of 1.2 s: train 4 videos (2 batches of 2), val 2, test 2."""
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(str(root), speakers=4, videos_per_speaker=2, seconds=1.2)
    write_filelists(str(root), str(root / "filelists"), val_fraction=0.25, test_fraction=0.25)
    return root


@pytest.fixture(scope="module")
def expert_path(tmp_path_factory, check):
    """An expert checkpoint as the original wrote it from nn.DataParallel ("module." keys)."""
    path = tmp_path_factory.mktemp("expert") / "lipsync_expert.pth"
    state_dict = {"module." + k: v for k, v in check.make_state_dict("syncnet_color", 11).items()}
    torch.save({"state_dict": state_dict, "optimizer": None, "global_step": 250000, "global_epoch": 120}, path)
    return str(path)


def common_args(corpus, checkpoint_dir, max_steps, hparams_overrides=TINY):
    return ["--data_root", str(corpus), "--filelists_dir", str(corpus / "filelists"),
            "--checkpoint_dir", str(checkpoint_dir), "--max_steps", str(max_steps), "--eval_batches", "1",
            "--hparams", hparams_overrides]


def load(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert set(checkpoint) == CHECKPOINT_KEYS  # exactly the original's four keys
    return checkpoint


def manifest_keys(name):
    with open(CONFORMANCE / ("manifest_%s.json" % name)) as f:
        return [key for key, _, _ in json.load(f)["state_dict"]]


def adam_steps(checkpoint):
    return {int(state["step"]) for state in checkpoint["optimizer"]["state"].values()}


def test_expert_trains_checkpoints_and_resumes(corpus, tmp_path):
    out = tmp_path / "expert"
    run = color_syncnet_train.main(common_args(corpus, out, 2, TINY + ",syncnet_eval_interval=2"))
    assert run.global_step == 2 and run.global_epoch == 1  # 4 train videos = 2 batches per epoch
    assert sorted(os.listdir(out)) == ["checkpoint_step000000001.pth", "checkpoint_step000000002.pth",
                                       "tensorboard"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out / "tensorboard"))
    first = load(out / "checkpoint_step000000002.pth")
    assert list(first["state_dict"]) == manifest_keys("syncnet_color")
    assert (first["global_step"], first["global_epoch"]) == (2, 1) and adam_steps(first) == {2}
    assert len(first["optimizer"]["state"]) == 124  # one Adam state per parameter tensor

    run = color_syncnet_train.main(common_args(corpus, out, 3) + [
        "--checkpoint_path", str(out / "checkpoint_step000000002.pth")])
    assert (run.global_step, run.global_epoch) == (3, 1)
    resumed = load(out / "checkpoint_step000000003.pth")
    assert (resumed["global_step"], resumed["global_epoch"]) == (3, 1)
    assert adam_steps(resumed) == {3}  # Adam continued from the restored state, not from scratch
    assert resumed["optimizer"]["param_groups"][0]["lr"] == 1e-4


def test_wav2lip_trains_resumes_and_inference_loads_it(corpus, tmp_path, expert_path, capsys):
    from inference import load_model

    out = tmp_path / "wav2lip"
    args = ["--syncnet_checkpoint_path", expert_path]
    run = wav2lip_train.main(common_args(corpus, out, 1) + args)
    log = capsys.readouterr().out
    sync = float(re.search(r"eval at step 1: l1 [\d.]+, sync ([\d.]+)", log).group(1))  # evaluated at step 1
    assert run.syncnet_wt == (0.01 if sync < 0.75 else 0.0)
    # Sample images at the first step: reference | masked input | generated | ground truth.
    samples = out / "samples_step000000000"
    assert sorted(os.listdir(samples)) == ["%d_%d.jpg" % (b, t) for b in range(2) for t in range(5)]
    assert cv2.imread(str(samples / "0_0.jpg")).shape == (96, 4 * 96, 3)
    first = load(out / "checkpoint_step000000001.pth")
    assert list(first["state_dict"]) == manifest_keys("wav2lip") and adam_steps(first) == {1}
    assert first["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)

    run = wav2lip_train.main(common_args(corpus, out, 2) + args + [
        "--checkpoint_path", str(out / "checkpoint_step000000001.pth")])
    log = capsys.readouterr().out
    # The schedule is re-derived on resume by the same rule that set it: an evaluation.
    sync = float(re.search(r"eval at step 1: l1 [\d.]+, sync ([\d.]+)", log).group(1))
    assert run.global_step == 2 and run.syncnet_wt == (0.01 if sync < 0.75 else 0.0)
    resumed = load(out / "checkpoint_step000000002.pth")
    # Stopped mid-epoch, resumed into the same epoch (the original restarts it), stopped again.
    assert (resumed["global_step"], resumed["global_epoch"]) == (2, 0) and adam_steps(resumed) == {2}

    model = load_model(str(out / "checkpoint_step000000002.pth"))
    with torch.no_grad():
        face = model(torch.zeros(1, 1, 80, 16), torch.rand(1, 6, 96, 96))
    assert face.shape == (1, 3, 96, 96)


def test_hq_wav2lip_trains_both_networks_and_resumes(corpus, tmp_path, expert_path):
    out = tmp_path / "hq"
    args = ["--syncnet_checkpoint_path", expert_path]
    run = hq_wav2lip_train.main(common_args(corpus, out, 1) + args)
    assert run.syncnet_wt == 0.0  # HQ training does not evaluate at step 1
    assert {"checkpoint_step000000001.pth", "disc_checkpoint_step000000001.pth"} <= set(os.listdir(out))
    disc = load(out / "disc_checkpoint_step000000001.pth")
    assert list(disc["state_dict"]) == manifest_keys("wav2lip_disc_qual") and adam_steps(disc) == {1}
    assert disc["optimizer"]["param_groups"][0]["betas"] == (0.5, 0.999)

    run = hq_wav2lip_train.main(common_args(corpus, out, 2) + args + [
        "--checkpoint_path", str(out / "checkpoint_step000000001.pth"),
        "--disc_checkpoint_path", str(out / "disc_checkpoint_step000000001.pth")])
    assert run.global_step == 2
    for name in ("checkpoint_step000000002.pth", "disc_checkpoint_step000000002.pth"):
        resumed = load(out / name)
        assert (resumed["global_step"], resumed["global_epoch"]) == (2, 0) and adam_steps(resumed) == {2}


def test_bad_input_gives_one_line_errors(corpus, tmp_path, check):
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit, match=r"^error: --data_root .*nowhere is not a folder"):
        color_syncnet_train.main(["--data_root", str(tmp_path / "nowhere"), "--checkpoint_dir", out,
                                  "--filelists_dir", str(corpus / "filelists")])
    empty = tmp_path / "empty_lists"
    empty.mkdir()
    (empty / "train.txt").write_text("")
    with pytest.raises(SystemExit, match=r"^error: filelist .*train.txt is empty"):
        color_syncnet_train.main(["--data_root", str(corpus), "--checkpoint_dir", out,
                                  "--filelists_dir", str(empty)])
    disc_path = tmp_path / "disc_checkpoint_step000010000.pth"  # a disc checkpoint passed as the expert
    torch.save({"state_dict": check.make_state_dict("wav2lip_disc_qual", 11), "optimizer": None,
                "global_step": 10000, "global_epoch": 3}, disc_path)
    with pytest.raises(SystemExit, match=r"^error: .*disc_checkpoint_step000010000.pth does not fit "
                                         r"SyncNet_color: it looks like a checkpoint of Wav2Lip_disc_qual"):
        wav2lip_train.main(common_args(corpus, tmp_path / "w", 1) + ["--syncnet_checkpoint_path", str(disc_path)])

    # Frames with gaps everywhere: no window of 5 consecutive jpgs. The DataLoader worker's bounded
    # search fails, and the error reaches the user as one line, not a hang.
    gapped = tmp_path / "gapped"
    make_corpus(str(gapped), speakers=3, videos_per_speaker=1, seconds=1.6)
    for jpg in gapped.glob("*/*/*.jpg"):
        if int(jpg.stem) % 4 == 3:
            jpg.unlink()
    write_filelists(str(gapped), str(gapped / "filelists"), val_fraction=0.3, test_fraction=0.3)
    with pytest.raises(SystemExit, match=r"^error: no valid train sample in 1000 draws: videos need 5 "
                                         r"consecutive face frames"):
        color_syncnet_train.main(common_args(gapped, tmp_path / "g", 1, TINY.replace("num_workers=0",
                                                                                     "num_workers=1")))


def test_command_line_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "wav2lip_train.py"), "--data_root", str(tmp_path),
                             "--checkpoint_dir", str(tmp_path / "out"), "--syncnet_checkpoint_path", "x.pth",
                             "--filelists_dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: no filelist %s; write one with `python -m training.filelists` or pass --filelists_dir"
        % os.path.join(str(tmp_path), "train.txt")]
