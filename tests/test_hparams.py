"""hparams: the spec's defaults, and overrides from the command line."""
import argparse

import pytest

from hparams import HParams, add_hparams_argument, apply_overrides, hparams


def test_defaults_are_the_spec():
    expected = dict(sample_rate=16000, num_mels=80, n_fft=800, hop_size=200, win_size=800, fmin=55, fmax=7600,
                    preemphasize=True, preemphasis=0.97, signal_normalization=True, symmetric_mels=True,
                    max_abs_value=4.0, allow_clipping_in_normalization=True, min_level_db=-100, ref_level_db=20,
                    rescale=True, rescaling_max=0.9, use_lws=False, frame_shift_ms=None, img_size=96, fps=25,
                    batch_size=16, initial_learning_rate=1e-4, checkpoint_interval=3000, eval_interval=3000,
                    save_optimizer_state=True, num_workers=16, syncnet_wt=0.0, syncnet_batch_size=64,
                    syncnet_lr=1e-4, syncnet_eval_interval=10000, syncnet_checkpoint_interval=10000,
                    disc_wt=0.07, disc_initial_learning_rate=1e-4)
    for name, value in expected.items():
        assert getattr(hparams, name) == value, name


def test_overrides_keep_types_and_reject_unknown_names():
    hp = HParams(fps=25, img_size=96, preemphasize=True, frame_shift_ms=None, syncnet_wt=0.0)
    hp.parse("fps=30, img_size=128,preemphasize=false,frame_shift_ms=12.5,syncnet_wt=1e-2")
    assert (hp.fps, hp.img_size, hp.preemphasize, hp.frame_shift_ms, hp.syncnet_wt) == (30, 128, False, 12.5, 0.01)
    assert isinstance(hp.fps, int)
    with pytest.raises(ValueError, match="unknown hparam 'fpss'"):
        hp.parse("fpss=30")
    with pytest.raises(ValueError, match="expects int"):
        hp.parse("img_size=large")
    with pytest.raises(ValueError, match="name=value"):
        hp.parse("fps")


def test_command_line_override_and_print(capsys):
    parser = argparse.ArgumentParser()
    add_hparams_argument(parser)
    before = hparams.fps
    try:
        apply_overrides(parser.parse_args(["--hparams", "fps=30"]), parser)
        assert hparams.fps == 30
    finally:
        hparams.fps = before
    with pytest.raises(SystemExit) as exit_info:
        apply_overrides(parser.parse_args(["--hparams", "nope=1"]), parser)
    assert exit_info.value.code == 2 and "unknown hparam" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        apply_overrides(parser.parse_args(["--print_hparams"]), parser)
    assert exit_info.value.code == 0 and "img_size: 96" in capsys.readouterr().out
