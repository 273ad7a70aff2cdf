"""Sample windows, mel offsets and labels of the training datasets, checked against the spec on a
corpus whose jpgs and mel columns encode their own index (acceptance 3), and bad-data handling."""
import os

import cv2
import numpy as np
import pytest
import soundfile
import torch

import audio
from conftest import MEDIA
from hparams import hparams
from training import data
from training.data import DataError, SyncNetDataset, Wav2LipDataset, load_mel, make_loader, mel_cache_path

FRAMES = 40  # jpgs 0..39 ...
GAP = 20  # ... except 20, as if no face was found there
MEL_COLUMNS = 110  # audio ends early: mel windows of frames after 29 run past the end


@pytest.fixture(autouse=True)
def restore_hparams():
    saved = hparams.values()
    yield
    hparams.__dict__.update(saved)


def frame_image(k, size=120):
    """A crop whose B, G, R levels spell its frame number (steps of 5 survive jpg and resizing)."""
    return np.full((size, size, 3), (5 * k, 255 - 5 * k, 128), dtype=np.uint8)


def decode_frame(bgr):
    """Frame number from a (3, H, W) float image in [0, 1]; asserts the three channels agree."""
    b, g, r = (float(c.mean()) * 255 for c in bgr)
    k = round(b / 5)
    assert abs(b - 5 * k) < 2 and abs(g - (255 - 5 * k)) < 2 and abs(r - 128) < 2, (b, g, r)
    return k


def mel_start(window):
    """First column index of a (80, 16) window cut from the index-encoded mel."""
    columns = window[0]
    assert np.array_equal(columns, columns[0] + np.arange(16)), "not 16 consecutive columns"
    assert (window == columns).all(), "rows differ"
    return int(columns[0])


def write_video(folder, frames, mel_columns=MEL_COLUMNS):
    os.makedirs(folder, exist_ok=True)
    for k in frames:
        cv2.imwrite(os.path.join(folder, "%d.jpg" % k), frame_image(k))
    soundfile.write(os.path.join(folder, "audio.wav"), np.zeros(200 * (mel_columns - 1), np.float32), 16000)
    # The dataset reads the mel from its cache: column j holds the value j.
    np.save(mel_cache_path(folder), np.tile(np.arange(mel_columns, dtype=np.float32), (80, 1)))


@pytest.fixture
def encoded_video(tmp_path):
    folder = str(tmp_path / "spk" / "00001")
    write_video(folder, [k for k in range(FRAMES) if k != GAP])
    return folder


def to_frame(column):
    """The frame whose mel window starts at `column` (int(80 * f / 25) is one-to-one)."""
    matches = [f for f in range(200) if int(80 * f / 25) == column]
    assert len(matches) == 1
    return matches[0]


def window_ok(start):
    return start + 4 < FRAMES and not start <= GAP <= start + 4


def test_syncnet_samples_follow_the_spec(encoded_video):
    dataset = SyncNetDataset([encoded_video])
    labels, chosen_frames = [], set()
    for i in range(300):
        face, mel, label = dataset[i]
        assert face.shape == (15, 48, 96) and face.dtype == torch.float32
        assert mel.shape == (1, 80, 16) and label.shape == (1,)
        face = face.numpy()
        start = decode_frame(face[0:3])
        # Five consecutive frames, lower halves only, stacked on channels (3 * t + c).
        assert [decode_frame(face[3 * t:3 * t + 3]) for t in range(5)] == list(range(start, start + 5))
        assert window_ok(start)
        chosen = to_frame(mel_start(mel[0].numpy()))
        assert int(80 * chosen / 25) + 16 <= MEL_COLUMNS  # windows past the audio's end are rejected
        assert chosen != GAP and chosen < FRAMES  # the audio belongs to an existing jpg
        if label.item() == 1:
            assert chosen == start  # in sync: the window starts at the chosen frame
        else:
            assert label.item() == 0 and chosen != start
        labels.append(label.item())
        chosen_frames.add(chosen)
    assert 0.35 < np.mean(labels) < 0.65  # label 1 with probability 1/2
    assert max(chosen_frames) == 29  # the last frame whose 16 columns fit in 110


def test_wav2lip_samples_follow_the_spec(encoded_video):
    dataset = Wav2LipDataset([encoded_video])
    starts = set()
    for i in range(400):
        x, indiv_mels, mel, gt = dataset[i]
        assert x.shape == (6, 5, 96, 96) and gt.shape == (3, 5, 96, 96)
        assert indiv_mels.shape == (5, 1, 80, 16) and mel.shape == (1, 80, 16)
        x, gt = x.numpy(), gt.numpy()
        start = decode_frame(gt[:, 0])
        assert [decode_frame(gt[:, t]) for t in range(5)] == list(range(start, start + 5))
        assert window_ok(start)
        # Input: the ground truth with its lower half zeroed, then a reference window elsewhere.
        assert np.array_equal(x[:3, :, :48], gt[:, :, :48]) and not x[:3, :, 48:].any()
        reference = decode_frame(x[3:, 0])
        assert reference != start and window_ok(reference)
        assert [decode_frame(x[3:, t]) for t in range(5)] == list(range(reference, reference + 5))
        # Sync window at the first frame; frame start+k hears the window of frame start+k-1
        # (the original's 1-based count minus 2; conformance README: int(80 * (k - 1) / 25)).
        assert mel_start(mel[0].numpy()) == int(80 * start / 25)
        assert [mel_start(m[0]) for m in indiv_mels.numpy()] == [int(80 * (start - 1 + k) / 25)
                                                                           for k in range(5)]
        starts.add(start)
    # Frame 0 is rejected (its first per-frame window would start before the audio); so is any
    # start whose last per-frame window, of frame start+3, runs past column 110.
    assert starts == {f for f in range(1, 27) if window_ok(f)}


def test_mel_is_computed_once_and_cached_beside_audio(tmp_path):
    folder = str(tmp_path / "spk" / "00002")
    os.makedirs(folder)
    wav, sr = soundfile.read(str(MEDIA / "jfk.wav"), dtype="float32", frames=16000)
    soundfile.write(os.path.join(folder, "audio.wav"), wav, sr)
    expected = audio.melspectrogram(audio.load_wav(os.path.join(folder, "audio.wav")))
    mel = load_mel(folder)
    assert mel.dtype == np.float32 and mel.shape == (80, 81)
    np.testing.assert_allclose(mel, expected, atol=1e-6)
    np.testing.assert_array_equal(np.load(mel_cache_path(folder)), mel)


def test_loader_shards_videos_over_ranks_and_fills_batches(tmp_path):
    folders = []
    for v in range(5):
        folders.append(str(tmp_path / "spk" / ("%05d" % v)))
        write_video(folders[-1], range(FRAMES))
    shards = []
    for rank in range(2):
        loader = make_loader(SyncNetDataset(folders), batch_size=2, rank=rank, world_size=2, seed=3)
        loader.sampler.set_epoch(0)
        shards.append({i % 5 for i in loader.sampler})
        batches = list(loader)
        assert len(batches) == 1 and batches[0][0].shape == (2, 15, 48, 96)  # full batches only
    assert shards[0] | shards[1] == set(range(5))  # every video is visited in an epoch


def test_unusable_videos_are_counted_and_skipped(tmp_path):
    good = str(tmp_path / "spk" / "good")
    write_video(good, range(FRAMES))
    short = str(tmp_path / "spk" / "short")
    write_video(short, range(15))  # 3 * 5 frames: too few, as in the original
    silent = str(tmp_path / "spk" / "silent")
    write_video(silent, range(FRAMES))
    os.remove(os.path.join(silent, "audio.wav"))
    dataset = Wav2LipDataset([good, short, silent, str(tmp_path / "spk" / "missing")], "train")
    assert [v.folder for v in dataset.videos] == [good]
    assert dataset.summary == ("train: 1 of 4 videos usable (skipped: 1 missing folder, 1 no audio.wav, "
                               "1 fewer than 16 face frames)")
    with pytest.raises(DataError, match="no usable video"):
        SyncNetDataset([short, silent])


def test_unreadable_jpgs_are_dropped_not_retried_forever(tmp_path, capfd):
    folder = str(tmp_path / "spk" / "00003")
    write_video(folder, range(FRAMES))
    with open(os.path.join(folder, "7.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    dataset = SyncNetDataset([folder])
    for i in range(200):
        start = decode_frame(dataset[i][0].numpy()[0:3])
        assert not start <= 7 <= start + 4
    assert "skipping unreadable %s" % os.path.join(folder, "7.jpg") in capfd.readouterr().err

    for k in range(FRAMES):  # now every jpg is garbage: a bounded search ends in an error
        with open(os.path.join(folder, "%d.jpg" % k), "wb") as f:
            f.write(b"garbage")
    with pytest.raises(DataError, match="no valid train sample in 1000 draws"):
        SyncNetDataset([folder])[0]


def test_no_valid_window_gives_an_error_instead_of_an_endless_loop(tmp_path):
    folder = str(tmp_path / "spk" / "00004")
    write_video(folder, range(0, 40, 2))  # 20 jpgs, but never 5 consecutive ones
    with pytest.raises(DataError, match="no valid train sample in 1000 draws"):
        Wav2LipDataset([folder])[0]


def test_read_filelist_errors(tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    with pytest.raises(DataError, match="not a folder"):
        data.read_filelist(str(tmp_path / "nowhere"), str(lists), "train")
    with pytest.raises(DataError, match="no filelist"):
        data.read_filelist(str(tmp_path), str(lists), "train")
    (lists / "train.txt").write_text("\n")
    with pytest.raises(DataError, match="is empty"):
        data.read_filelist(str(tmp_path), str(lists), "train")
    (lists / "train.txt").write_text("spk/00001 NF\nspk/00002\n")  # LRS2 lists carry a second column
    assert data.read_filelist(str(tmp_path), str(lists), "train") == [str(tmp_path / "spk" / "00001"),
                                                                      str(tmp_path / "spk" / "00002")]


def test_empty_audio_is_counted_and_skipped_not_a_crash(tmp_path, capfd):
    """A valid but empty audio.wav (and one too short for a mel window) is skipped like other
    unusable videos; an empty wav whose header the scan cannot read is skipped when first drawn."""
    good = str(tmp_path / "spk" / "good")
    write_video(good, range(FRAMES))
    empty, short, empty_float = (str(tmp_path / "spk" / name) for name in ("empty", "short", "float"))
    for folder, samples, subtype in ((empty, 0, "PCM_16"), (short, 2999, "PCM_16"), (empty_float, 0, "FLOAT")):
        write_video(folder, range(FRAMES))
        os.remove(mel_cache_path(folder))  # the mel must come from this audio.wav
        soundfile.write(os.path.join(folder, "audio.wav"), np.zeros(samples, np.float32), 16000, subtype=subtype)
    dataset = SyncNetDataset([good, empty, short, empty_float], "train")
    assert dataset.summary == "train: 2 of 4 videos usable (skipped: 2 audio.wav shorter than one mel window)"
    for i in range(20):  # index 1 starts at the float wav's video: it is dropped, and the draw moves on
        face, mel, label = dataset[i]
        assert mel.shape == (1, 80, 16)
    assert "skipping video %s: unreadable audio.wav" % empty_float in capfd.readouterr().err
    assert [v.folder for v in dataset.videos if not v.bad] == [good]
