"""Scoring a set of videos: gathering the inputs, one row per score, the mean, and the report.

LSE-D and LSE-C of a set are plain means over its rows (one row per video, or per face
track in real-videos mode), as the original scripts averaged them.
"""
import json
import os

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".mpg", ".mpeg", ".webm", ".m4v")
LIST_EXTENSION = ".txt"


def collect_videos(inputs):
    """Expand files, folders (their videos, not recursive) and .txt lists into video paths.

    A list names one video per line, relative to the list's folder; blank lines and lines
    starting with # are ignored. A video named twice is scored once. Returns (paths, skipped)
    where skipped holds (input, reason).
    """
    videos, skipped = [], []
    for item in map(str, inputs):
        if os.path.isdir(item):
            found = sorted(os.path.join(item, n) for n in os.listdir(item) if n.lower().endswith(VIDEO_EXTENSIONS))
            videos += found
            if not found:
                skipped.append((item, "no video files (%s) in this folder" % " ".join(VIDEO_EXTENSIONS)))
        elif item.lower().endswith(LIST_EXTENSION) and os.path.isfile(item):
            with open(item) as f:
                names = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
            videos += [os.path.join(os.path.dirname(item), name) for name in names]
            if not names:
                skipped.append((item, "the list names no videos"))
        else:
            videos.append(item)  # a missing file is reported when it is scored
    unique = {}
    for path in videos:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values()), skipped


def score_all(videos, score_one, on_row=None, on_skip=None):
    """Run `score_one(path) -> list of result dicts` on every video; bad inputs become skips.

    Returns (rows, skipped); each row is a result dict plus "video". `on_row` / `on_skip`
    are called as they happen, so long runs report progress.
    """
    rows, skipped = [], []
    for path in videos:
        try:
            results = score_one(path)
        except ValueError as e:  # every input problem is a ValueError subclass with a one-line message
            skipped.append((path, str(e)))
            if on_skip:
                on_skip(path, str(e))
            continue
        for result in results:
            row = dict(result, video=path)
            rows.append(row)
            if on_row:
                on_row(row)
    return rows, skipped


def mean_scores(rows):
    """(LSE-D, LSE-C) of a set: the means of min_dist and confidence, or (None, None) when empty."""
    if not rows:
        return None, None
    return (sum(r["min_dist"] for r in rows) / len(rows), sum(r["confidence"] for r in rows) / len(rows))


def row_label(row):
    return row["video"] if row.get("track") is None else "%s#track%d" % (row["video"], row["track"])


HEADER = "%-48s %8s %8s %7s" % ("video", "LSE-D", "LSE-C", "offset")


def format_row(row):
    return "%-48s %8.3f %8.3f %7d" % (row_label(row), row["min_dist"], row["confidence"], row["offset"])


def format_summary(rows, skipped):
    lse_d, lse_c = mean_scores(rows)
    n_videos = len({r["video"] for r in rows})
    counts = "%d scored, %d skipped" % (n_videos, len(skipped))
    if len(rows) != n_videos:
        counts += ", %d face tracks" % len(rows)
    if lse_d is None:
        return "nothing scored (%s)" % counts
    return "%-48s %8.3f %8.3f         (%s)" % ("mean", lse_d, lse_c, counts)


def to_json(rows, skipped, mode):
    """Machine-readable report: every row with its curve, the skips and the means."""
    lse_d, lse_c = mean_scores(rows)
    report = {
        "mode": mode,
        "videos": [{"video": r["video"], "track": r.get("track"), "first_frame": r.get("first_frame"),
                    "last_frame": r.get("last_frame"), "lse_d": r["min_dist"], "lse_c": r["confidence"],
                    "offset": r["offset"], "n_windows": r["n_windows"], "n_frames": r["n_frames"],
                    "n_samples": r["n_samples"], "curve": r["curve"]} for r in rows],
        "skipped": [{"input": path, "reason": reason} for path, reason in skipped],
        "mean": {"lse_d": lse_d, "lse_c": lse_c},
        "n_scored": len({r["video"] for r in rows}),
        "n_skipped": len(skipped),
    }
    return json.dumps(report, indent=1)
