"""The single source of configuration: every default of the Wav2Lip pipeline.

Scripts read `hparams` and let users override any value from the command line with
`--hparams name=value,name=value` (see `add_hparams_argument` / `apply_overrides`).
"""
import argparse

# Declared by the original's hparams.py but never applied by its code (lws was not even called
# correctly); they keep their values so that a changed value is refused instead of ignored.
DECLARED_ONLY = ("rescale", "rescaling_max", "use_lws")


class HParams:
    """A flat namespace of named values that keeps the type of each default."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def values(self):
        return dict(self.__dict__)

    def set(self, name, text):
        """Set `name` from its string form, cast to the type of the current value."""
        if name not in self.__dict__:
            raise ValueError("unknown hparam %r (known: %s)" % (name, ", ".join(sorted(self.__dict__))))
        value = _cast(text, self.__dict__[name], name)
        if name in DECLARED_ONLY and value != self.__dict__[name]:
            raise ValueError("hparam %s cannot be changed: the original declared it but never used it, and so "
                             "does this code (keep %r)" % (name, self.__dict__[name]))
        self.__dict__[name] = value

    def parse(self, overrides):
        """Apply "a=1,b=2" overrides; an empty string changes nothing."""
        for item in filter(None, (s.strip() for s in (overrides or "").split(","))):
            name, sep, text = item.partition("=")
            if not sep:
                raise ValueError("hparams override %r is not of the form name=value" % item)
            self.set(name.strip(), text.strip())
        return self

    def __str__(self):
        return "\n".join("  %s: %r" % kv for kv in sorted(self.__dict__.items()))


def parse_bool(text):
    """true/false, yes/no or 1/0 (any case) as a bool."""
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise ValueError("expected true or false, got %r" % text)


def _cast(text, default, name):
    if default is None or text.lower() == "none":
        if text.lower() == "none":
            return None
        try:
            return float(text)
        except ValueError:
            raise ValueError("hparam %s expects a number or none, got %r" % (name, text))
    if isinstance(default, bool):
        try:
            return parse_bool(text)
        except ValueError:
            raise ValueError("hparam %s expects true or false, got %r" % (name, text))
    try:
        return type(default)(text)
    except ValueError:
        raise ValueError("hparam %s expects %s, got %r" % (name, type(default).__name__, text))


hparams = HParams(
    # Audio (mel spectrogram)
    num_mels=80,
    rescale=True,
    rescaling_max=0.9,
    use_lws=False,
    n_fft=800,
    hop_size=200,
    win_size=800,
    sample_rate=16000,
    frame_shift_ms=None,
    signal_normalization=True,
    allow_clipping_in_normalization=True,
    symmetric_mels=True,
    max_abs_value=4.0,
    preemphasize=True,
    preemphasis=0.97,
    min_level_db=-100,
    ref_level_db=20,
    fmin=55,
    fmax=7600,
    # Video and training
    img_size=96,
    fps=25,
    batch_size=16,
    initial_learning_rate=1e-4,
    nepochs=200000000000000000,
    num_workers=16,
    checkpoint_interval=3000,
    eval_interval=3000,
    save_optimizer_state=True,
    syncnet_wt=0.0,
    syncnet_batch_size=64,
    syncnet_lr=1e-4,
    syncnet_eval_interval=10000,
    syncnet_checkpoint_interval=10000,
    disc_wt=0.07,
    disc_initial_learning_rate=1e-4,
)


def add_hparams_argument(parser):
    parser.add_argument("--hparams", default="", metavar="NAME=VALUE,...",
                        help="override hparams.py defaults, e.g. fps=30,img_size=96")
    parser.add_argument("--print_hparams", action="store_true", help="print the hparams in force and exit")


def apply_overrides(args, parser=None):
    """Apply `args.hparams` to the global hparams; report a bad override as a usage error."""
    try:
        hparams.parse(args.hparams)
    except ValueError as e:
        if parser is None:
            raise
        parser.error(str(e))
    if getattr(args, "print_hparams", False):
        print("hparams:\n%s" % hparams)
        raise SystemExit(0)
    return hparams


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="print the hparams (with overrides applied)")
    add_hparams_argument(p)
    apply_overrides(p.parse_args(), p)
    print(hparams)
