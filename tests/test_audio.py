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
