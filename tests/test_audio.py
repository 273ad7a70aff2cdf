"""Audio loading from real files of every kind the CLI accepts."""
import numpy as np
import pytest

import audio
from conftest import MEDIA


@pytest.mark.parametrize("name, seconds", [("jfk.wav", 11.0), ("jfk.mp3", 11.0), ("fleurs-fr-001.ogg", 23.4),
                                           ("bbaf2n.mpg", 3.0), ("video_01.mp4", 3.04)])
def test_load_wav_decodes_any_container_to_16k_mono(name, seconds):
    wav = audio.load_wav(str(MEDIA / name), 16000)
    assert wav.ndim == 1 and wav.dtype == np.float32
    assert abs(len(wav) / 16000 - seconds) < 0.15
    assert 0.01 < np.abs(wav).max() < 1.1  # resampling may overshoot full scale slightly


def test_mp3_matches_wav_of_the_same_speech():
    wav = audio.load_wav(str(MEDIA / "jfk.wav"))
    mp3 = audio.load_wav(str(MEDIA / "jfk.mp3"))
    # The decoder removes the MP3 encoder delay, so the samples line up.
    assert len(mp3) == len(wav)
    assert np.corrcoef(wav, mp3)[0, 1] > 0.99


def test_int16_detour_quantises_like_a_pcm_wav():
    # jfk.mp3 is already 16 kHz mono, so no resampling follows the rounding.
    wav = audio.load_wav(str(MEDIA / "jfk.mp3"), as_int16=True)
    np.testing.assert_array_equal(wav * 32768, np.round(wav * 32768))
    native = audio.load_wav(str(MEDIA / "jfk.mp3"))
    assert 0 < np.abs(wav - native).max() <= 0.5 / 32768 + 1e-9


def test_errors_name_the_file(tmp_path):
    with pytest.raises(audio.AudioError, match="not found"):
        audio.load_wav(str(tmp_path / "missing.wav"))
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(audio.AudioError, match="bad.wav"):
        audio.load_wav(str(bad))
    with pytest.raises(audio.AudioError, match="no audio stream"):
        audio.load_wav(str(MEDIA / "obama.jpg"))


def test_aac_padding_past_the_mp4_track_length_is_dropped():
    from conftest import CONFORMANCE

    # The LSE set's source holds the exact 16 kHz samples this mp4 was encoded from.
    source = np.load(CONFORMANCE / "lse" / "grid_bbaf2n_source.npz")["audio_int16"]
    wav = audio.load_wav(str(CONFORMANCE / "lse" / "grid_bbaf2n.mp4"), 16000)
    assert len(wav) == len(source)
    assert np.corrcoef(wav, source.astype(np.float32))[0, 1] > 0.95


# --------------------------------------------------------------------------- hparams reach the mel
# One changed value per audio hparam (frame_shift_ms counts only when hop_size is none).
AUDIO_OVERRIDES = ["num_mels=40", "n_fft=1024", "hop_size=160", "win_size=640", "sample_rate=22050", "fmin=0",
                   "fmax=6000", "preemphasize=false", "preemphasis=0.5", "min_level_db=-80", "ref_level_db=10",
                   "signal_normalization=false", "allow_clipping_in_normalization=false", "symmetric_mels=false",
                   "max_abs_value=1", "hop_size=none,frame_shift_ms=10"]


def as_text(values, names):
    """hparams values as --hparams text, the way a user restores them."""
    return ",".join("%s=%s" % (name, "none" if values[name] is None else values[name]) for name in names)


@pytest.fixture
def hp():
    from hparams import hparams

    saved = hparams.values()
    yield hparams
    hparams.__dict__.update(saved)


@pytest.mark.parametrize("override", AUDIO_OVERRIDES)
def test_every_audio_hparam_changes_the_mel_and_restoring_it_gives_the_golden(override, hp, check, tmp_path):
    from conftest import CONFORMANCE
    from training.data import mel_cache_path

    z = np.load(CONFORMANCE / "audio_16k.npz")
    wav, golden = z["wav16k"].astype(np.float32), z["mel_padreflect"]
    key = mel_cache_path(str(tmp_path))
    saved = hp.values()
    hp.parse(override)
    changed = audio.melspectrogram(wav)
    assert changed.shape != golden.shape or np.abs(changed - golden).max() > 0.01, override
    assert mel_cache_path(str(tmp_path)) != key, "a training mel computed otherwise would be reused"

    hp.parse(as_text(saved, [item.split("=")[0] for item in override.split(",")]))
    check.check_mel_from_samples(audio.melspectrogram)
    assert mel_cache_path(str(tmp_path)) == key


def test_frame_shift_gives_the_hop_when_hop_size_is_none(hp, check):
    hp.parse("hop_size=none,frame_shift_ms=12.5")  # 12.5 ms at 16 kHz: the default hop of 200
    check.check_mel_from_samples(audio.melspectrogram)
    assert audio.mel_columns_per_second() == 80.0


def test_load_wav_resamples_to_the_sample_rate_in_force(hp):
    hp.parse("sample_rate=8000")
    assert len(audio.load_wav(str(MEDIA / "jfk.wav"))) == 88000  # 11.0 s


def test_hparams_the_original_never_applied_cannot_be_changed(hp):
    for override in ("rescale=false", "rescaling_max=0.5", "use_lws=true"):
        with pytest.raises(ValueError, match="never used it"):
            hp.parse(override)
    hp.parse("rescale=true,use_lws=false")  # their values as they are: accepted
