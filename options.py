"""The options that shape a lip-sync run, as one object shared by the CLI, avatars, live sessions
and server jobs: frame preparation, face boxes, batching, speed and the paste.

    opts = SyncOptions(pads=(0, 20, 0, 0), fast=True)
    opts = SyncOptions.from_args(parser.parse_args())      # after add_arguments(parser)

`validate()` checks every value and raises OptionsError with one line naming the fix.
"""
import dataclasses
import math
from dataclasses import dataclass

from hparams import parse_bool

MIN_FPS, MAX_FPS = 1.0, 240.0
MAX_BATCH = 1024  # a batch is held in memory: frames for detection, frames and faces for the generator
BLENDS = ("rect", "feather", "seamless")
MASK_SHAPES = ("ellipse", "box")
MAX_MASK_EDGE = 0.25
FACE_CHOICES = "best, largest, center, index:N or point:X,Y"


class OptionsError(ValueError):
    """A bad option value; the message is one line naming the fix."""


def _four(value):
    return tuple(int(v) for v in value)


def parse_face_select(spec):
    """(kind, value) of a --face_select value: ("best", None), ("largest", None), ("center", None),
    ("index", N) (the N-th face from the left, from 0) or ("point", (x, y)); OptionsError otherwise."""
    kind, _, arg = str(spec).partition(":")
    try:
        if kind in ("best", "largest", "center") and not arg:
            return kind, None
        if kind == "index" and int(arg) >= 0:
            return kind, int(arg)
        if kind == "point":
            x, y = (int(v) for v in arg.split(","))
            return kind, (x, y)
    except ValueError:
        pass
    raise OptionsError("--face_select %r: choose %s (N from 0, X,Y a pixel of the first frame)" % (spec, FACE_CHOICES))


@dataclass(frozen=True)
class SyncOptions:
    static: bool = False
    fps: float = 25.0                      # frame rate of an image --face
    pads: tuple = (0, 10, 0, 0)            # top, bottom, left, right padding of detected boxes
    face_det_batch_size: int = 16
    wav2lip_batch_size: int = 128
    resize_factor: int = 1
    crop: tuple = (0, -1, 0, -1)           # top, bottom, left, right; -1: to the edge
    box: tuple = (-1, -1, -1, -1)          # top, bottom, left, right fixed box; -1: detect
    rotate: bool = False
    nosmooth: bool = False
    on_no_face: str = "pass"               # pass | error
    fast: bool = False
    blend: str = "rect"                    # rect (the original's paste) | feather | seamless
    mask_shape: str = "ellipse"            # feather/seamless: shape of the lower-face region
    mask_edge: float = 0.1                 # feather/seamless: soft edge width, fraction of the box width
    color_match: bool = False              # feather/seamless: match the generated colours to the input's face
    face_select: str = "best"              # best | largest | center | index:N | point:X,Y

    def __post_init__(self):
        for name in ("pads", "crop", "box"):
            object.__setattr__(self, name, _four(getattr(self, name)))

    @property
    def detect(self):
        """Whether boxes come from the detector (no fixed --box)."""
        return self.box[0] == -1

    @property
    def prepare(self):
        """Keyword arguments of videoio.prepare_frame."""
        return dict(resize_factor=self.resize_factor, rotate=self.rotate, crop=self.crop)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        values = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, values):
        """Options from a mapping of option names (unknown names are an error)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise OptionsError("unknown option(s) %s (known: %s)" % (", ".join(unknown), ", ".join(sorted(known))))
        return cls(**values)

    @classmethod
    def from_args(cls, args):
        """Options from an argparse namespace built with add_arguments."""
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})

    def validate(self):
        """Raise OptionsError for a value no run can use; return self."""
        if not (isinstance(self.fps, (int, float)) and math.isfinite(self.fps) and MIN_FPS <= self.fps <= MAX_FPS):
            raise OptionsError("--fps %r is not a usable frame rate; pass a number from %g to %g (25 is usual)"
                               % (self.fps, MIN_FPS, MAX_FPS))
        for name in ("face_det_batch_size", "wav2lip_batch_size"):
            if not 1 <= getattr(self, name) <= MAX_BATCH:
                raise OptionsError("--%s %d must be from 1 to %d" % (name, getattr(self, name), MAX_BATCH))
        if self.resize_factor < 1:
            raise OptionsError("--resize_factor %d must be at least 1 (1 keeps the size)" % self.resize_factor)
        if any(p < 0 for p in self.pads):
            raise OptionsError("--pads %s must not be negative" % " ".join(map(str, self.pads)))
        if self.on_no_face not in ("pass", "error"):
            raise OptionsError("--on_no_face %r: choose pass or error" % self.on_no_face)
        if self.blend not in BLENDS:
            raise OptionsError("--blend %r: choose %s" % (self.blend, ", ".join(BLENDS)))
        if self.mask_shape not in MASK_SHAPES:
            raise OptionsError("--mask_shape %r: choose %s" % (self.mask_shape, ", ".join(MASK_SHAPES)))
        if not (isinstance(self.mask_edge, (int, float)) and 0 <= self.mask_edge <= MAX_MASK_EDGE):
            raise OptionsError("--mask_edge %r: give a fraction of the box width from 0 to %g"
                               % (self.mask_edge, MAX_MASK_EDGE))
        if self.color_match and self.blend == "rect":
            raise OptionsError("--color_match needs --blend feather or seamless")
        parse_face_select(self.face_select)
        top, bottom, left, right = self.crop
        if min(top, left) < 0 or min(bottom, right) < -1 or -1 < bottom <= top or -1 < right <= left:
            raise OptionsError("--crop %s is not a crop: give top bottom left right with top < bottom and left < "
                               "right, all at least 0 (-1 for bottom or right: to the edge)"
                               % " ".join(map(str, self.crop)))
        if self.box != (-1, -1, -1, -1):
            top, bottom, left, right = self.box
            if min(self.box) < 0 or bottom <= top or right <= left:
                raise OptionsError("--box %s is not a box: give top bottom left right with top < bottom and "
                                   "left < right, all at least 0 (or -1 -1 -1 -1 to detect)"
                                   % " ".join(map(str, self.box)))
        return self


def add_arguments(parser):
    """The command-line flags of SyncOptions, with the original's names and defaults."""
    d = SyncOptions()
    # The original declared --static with type=bool: accept `--static`, `--static True`, `--static 0`.
    parser.add_argument("--static", type=parse_bool, nargs="?", const=True, default=d.static,
                        help="use only the first frame of the video")
    parser.add_argument("--fps", type=float, default=d.fps, help="output fps for an image --face")
    parser.add_argument("--pads", nargs=4, type=int, default=list(d.pads), metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                        help="padding of the detected face box (include the chin: bottom at least 10)")
    parser.add_argument("--face_det_batch_size", type=int, default=d.face_det_batch_size)
    parser.add_argument("--wav2lip_batch_size", type=int, default=d.wav2lip_batch_size)
    parser.add_argument("--resize_factor", type=int, default=d.resize_factor, help="divide the frame size by this first")
    parser.add_argument("--crop", nargs=4, type=int, default=list(d.crop), metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                        help="crop the frames (after resize and rotate); -1 means to the edge")
    parser.add_argument("--box", nargs=4, type=int, default=list(d.box), metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
                        help="fixed face box for every frame instead of detection")
    parser.add_argument("--rotate", action="store_true", help="rotate frames 90 degrees clockwise")
    parser.add_argument("--nosmooth", action="store_true", help="do not smooth face boxes over 5 frames")
    parser.add_argument("--on_no_face", choices=("pass", "error"), default=d.on_no_face,
                        help="frames without a face: pass them through unchanged, or stop with an error")
    parser.add_argument("--fast", action="store_true",
                        help="faster, not exact: detection on small keyframes, reduced-precision generator")
    parser.add_argument("--blend", default=d.blend, metavar="|".join(BLENDS),
                        help="rect: paste the whole box (the original); feather: only the lower face, through a "
                             "soft mask; seamless: the same region blended in the gradient domain")
    parser.add_argument("--mask_shape", default=d.mask_shape, metavar="|".join(MASK_SHAPES),
                        help="shape of the blended lower-face region (default %s)" % d.mask_shape)
    parser.add_argument("--mask_edge", type=float, default=d.mask_edge,
                        help="width of the mask's soft edge as a fraction of the box width (default %g)" % d.mask_edge)
    parser.add_argument("--color_match", action="store_true",
                        help="match the generated region's colours to the input face's (Lab mean and spread)")
    parser.add_argument("--face_select", default=d.face_select, metavar="CHOICE",
                        help="which face when there are several: %s (default best: the highest score of "
                             "each frame; the others follow the chosen face from frame to frame)" % FACE_CHOICES)
    return parser

