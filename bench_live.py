"""The live engine under speech arriving in real time: frames per second, late frames, processing
latency, speech-to-first-frame, CPU seconds per second of output, memory over time, and how
many sessions keep up at once.

    python bench_live.py --height 720 --fast --minutes 5
    python bench_live.py --height 480 --minutes 2 --sessions 2
    python bench_live.py --height 720 --fast --stages    # per-stage costs of a frame

Each session gets its own thread pushing 20 ms chunks of real speech on the wall clock
(utterances of --utterance seconds with --pause seconds between, each ended explicitly, as a
TTS voice does) and a reader thread that asks for frame i no earlier than its time on the
output clock, t0 + i / fps, as a server would. A frame is late when it is ready after
t0 + pts + --delay (the player's buffer: the 212.5 ms the model looks ahead plus the processing
budget). Processing latency: from the arrival of the last sample a frame's window needs (or of
the utterance's end, for its last frames) to the frame being ready. On a virtual machine the run
also reports CPU steal (the hypervisor running other guests on its CPUs, from /proc/stat, read
every quarter second), how many late frames fell in 10-second windows of 5% steal or more, and
how many in stretches of late frames that began within a second of a burst of steal. Without
--checkpoint_path the conformance kit's deterministic weights are used (the cost is the real
one); the avatar is the GRID clip bbaf2n (Cooke et al. 2006, CC BY 4.0) scaled to cover the
chosen height, with its face box given (no detection).
"""
import argparse
import bisect
import os
import tempfile
import threading
import time

import numpy as np
import torch

import benchmark
import inference
import live
from live.mel import column_count
from lipsync import MEL_STEP_SIZE, calibration_input, mel_chunk_start, mel_chunk_starts, on_compute_thread

SPEECH = ("jfk.wav", "fleurs-fr-001.ogg", "fleurs-de-009.ogg")
CHUNK = 320                                                   # 20 ms at 16 kHz
STEAL_SAMPLE = 0.25                                           # seconds between CPU steal readings
SIZES = {720: (1280, 720), 480: (854, 480), 288: (360, 288)}


def rss_mb(field="VmRSS"):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def cpu_seconds():
    t = os.times()
    return t.user + t.system


class Speaker(threading.Thread):
    """Pushes utterances in real time; records when each utterance's samples and end arrived."""

    def __init__(self, session, speech, args, stop):
        super().__init__(daemon=True)
        self.session, self.speech, self.args, self.stop = session, speech, args, stop
        self.utterances = []                                  # [(sample counts, arrival times, end time)]

    def run(self):
        length, pause = round(self.args.utterance * 16000), self.args.pause
        offset, start = 0, time.perf_counter()
        pushed = 0.0                                          # seconds of audio time sent
        while not self.stop.is_set():
            counts, times = [], []
            self.utterances.append((counts, times, [None]))
            for i in range(0, length, CHUNK):
                time.sleep(max(0.0, start + pushed + CHUNK / 16000 - time.perf_counter()))
                chunk = self.speech[(offset + i) % (len(self.speech) - CHUNK):][:CHUNK]
                self.session.push(chunk)
                counts.append(i + len(chunk))
                times.append(time.perf_counter())
                pushed += CHUNK / 16000
                if self.stop.is_set():
                    return
            self.session.end_utterance()
            self.utterances[-1][2][0] = time.perf_counter()
            offset += length
            pushed += pause
            time.sleep(max(0.0, start + pushed - time.perf_counter()))


class Reader(threading.Thread):
    """Reads frames on the output clock; records each frame's ready time."""

    def __init__(self, session, frames, stop):
        super().__init__(daemon=True)
        self.session, self.count, self.stop = session, frames, stop
        self.records = []                                     # (index, speaking, ready time)
        self.caught_up = 0                                    # speech frames sent without lip-sync (--max_lag)
        self.t0 = None

    def run(self):
        fps = self.session.fps
        self.t0 = time.perf_counter()
        for i in range(self.count):
            now = time.perf_counter()
            if now > self.t0 + self.count / fps + 10:          # fell behind real time: the rest counts as missing
                break
            time.sleep(max(0.0, self.t0 + i / fps - now))
            frame = self.session.read(timeout=10)
            if frame is None:
                break
            self.records.append((frame.index, frame.speaking, time.perf_counter()))
            self.caught_up += frame.caught_up
        self.stop.set()


def latencies(reader, speaker, fps):
    """Processing latency of every speech frame and speech-to-first-frame of every utterance."""
    processing, first = [], []
    # Speaking frames in order, split by utterance: an utterance has as many frames as carry its
    # samples (or its mel windows, if more); back-to-back utterances leave no idle frame between.
    spoken = [ready for _, speaking, ready in reader.records if speaking]
    runs = []
    for counts, _, end in speaker.utterances:
        if not counts or end[0] is None:
            break
        samples = counts[-1]
        frames = max(-(-samples * round(fps) // 16000),
                     len(mel_chunk_starts(column_count(samples), fps)))
        runs.append(spoken[:frames])
        spoken = spoken[frames:]
    for (counts, times, end), ready_times in zip(speaker.utterances, runs):
        if not ready_times:
            continue
        first.append(ready_times[0] - times[0])
        for j, ready in enumerate(ready_times):
            # Window j is final once samples up to its last column's centre + n_fft / 2 arrived.
            needed = mel_chunk_start(j, fps) * 200 + (MEL_STEP_SIZE - 1) * 200 + 400
            arrived = times[bisect.bisect_left(counts, needed)] if needed <= counts[-1] else end[0]
            processing.append(ready - arrived)
    return np.array(processing), np.array(first)


def run(args, model, avatar_path, speech):
    avatar = live.load_avatar(avatar_path)
    frames = round(args.minutes * 60 * avatar.fps)
    sessions = [live.Session(model, avatar, fast=args.fast, max_lag=args.max_lag) for _ in range(args.sessions)]
    stops = [threading.Event() for _ in sessions]
    speakers = [Speaker(s, speech, args, stop) for s, stop in zip(sessions, stops)]
    readers = [Reader(s, frames, stop) for s, stop in zip(sessions, stops)]
    memory, steal, cpu0, wall0 = [], [], cpu_seconds(), time.perf_counter()
    for thread in speakers + readers:
        thread.start()
    last, ticks = benchmark.cpu_ticks(), 0
    while any(r.is_alive() for r in readers):
        time.sleep(STEAL_SAMPLE)
        now = benchmark.cpu_ticks()
        steal.append((time.perf_counter(), benchmark.steal_between(last, now)))
        last, ticks = now, ticks + 1
        if ticks % round(1 / STEAL_SAMPLE) == 0:
            memory.append((time.perf_counter() - wall0, rss_mb()))
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    for stop in stops:
        stop.set()
    for speaker in speakers:
        speaker.join(5)
    report(args, avatar, sessions, speakers, readers, memory, wall, cpu)
    report_steal(args, readers, steal, avatar.fps)
    avatar.close()


def percentile(values, q):
    return float(np.percentile(values, q)) * 1000 if len(values) else float("nan")


def report(args, avatar, sessions, speakers, readers, memory, wall, cpu):
    fps = avatar.fps
    produced = sum(len(r.records) for r in readers)
    late = sum(sum(ready > r.t0 + index / fps + args.delay for index, _, ready in r.records) for r in readers)
    speech_frames = sum(sum(s for _, s, _ in r.records) for r in readers)
    pairs = [latencies(r, s, fps) for r, s in zip(readers, speakers)]
    processing = np.concatenate([p for p, _ in pairs])
    first = np.concatenate([f for _, f in pairs])
    stage = {k: sum(s.clock.seconds[k] for s in sessions) / max(1, speech_frames) * 1000 for k in ("generate", "paste")}
    at_minute = next((m for t, m in memory if t >= 60), memory[-1][1] if memory else float("nan"))
    width, height = avatar.size
    print("avatar %dx%d, %s, %d session(s), %.1f min: %d frames (%d speaking) in %.1f s = %.1f fps per session"
          % (width, height, "fast" if args.fast else "faithful", args.sessions, args.minutes, produced,
             speech_frames, wall, produced / wall / args.sessions))
    print("late frames (ready after pts + %.0f ms): %d; frames missing: %d" % (args.delay * 1000, late,
          args.sessions * round(args.minutes * 60 * fps) - produced))
    if args.max_lag is not None:
        print("speech frames caught up (sent with the avatar's own face, over --max_lag %.2f s): %d of %d"
              % (args.max_lag, sum(r.caught_up for r in readers), speech_frames))
    print("processing latency ms p50 %.1f p95 %.1f max %.1f; speech-to-first-frame ms p50 %.0f max %.0f "
          "(look-ahead %.1f ms)" % (percentile(processing, 50), percentile(processing, 95),
                                    percentile(processing, 100), percentile(first, 50), percentile(first, 100),
                                    live.LOOKAHEAD_SECONDS * 1000))
    print("per speaking frame ms: generate %.1f, paste %.1f; CPU s per s of output %.2f"
          % (stage["generate"], stage["paste"], cpu / wall / args.sessions))
    print("RSS MB at 1 min %.0f, at end %.0f, peak %.0f" % (at_minute, memory[-1][1] if memory else float("nan"),
                                                            rss_mb("VmHWM")))


def report_steal(args, readers, steal, fps, window=10, high=0.05, burst=0.10):
    """CPU steal over the run (a shared VM's neighbours taking its CPUs), and where the late
    frames fell: in its 10-second windows of 5% or more, and in stretches of late frames that
    began within a second of a burst (a quarter second of 10% or more: one of two CPUs taken
    for 50 ms, which stalls both of the generator's threads)."""
    if not steal or not any(s for _, s in steal):
        return
    start = steal[0][0] - STEAL_SAMPLE
    windows = {}
    for t, s in steal:
        windows.setdefault(int((t - start) // window), []).append(s)
    stolen = {w for w, values in windows.items() if np.mean(values) >= high}
    late = [[(index, ready) for index, _, ready in r.records if ready > r.t0 + index / fps + args.delay]
            for r in readers]
    in_windows = sum(int((ready - start) // window) in stolen for frames in late for _, ready in frames)
    bursts = [t for t, s in steal if s >= burst]
    stretches = [stretch for frames in late for stretch in late_stretches(frames)]
    after_burst = [len(stretch) for stretch in stretches
                   if any(stretch[0][1] - 1.0 <= t <= stretch[0][1] + STEAL_SAMPLE for t in bursts)]
    total = sum(len(frames) for frames in late)
    print("CPU steal: mean %.1f%%, max %.1f%% in a quarter second; %d of %d %d-s windows at %.0f%% or more, "
          "holding %d of the %d late frames" % (100 * np.mean([s for _, s in steal]), 100 * max(s for _, s in steal),
                                        len(stolen), len(windows), window, 100 * high, in_windows, total))
    print("late frames in stretches that began within a second of a steal burst (a quarter second at %.0f%% or "
          "more; %d bursts): %d of the %d, in %d of the %d stretches"
          % (100 * burst, len(bursts), sum(after_burst), total, len(after_burst), len(stretches)))


def late_stretches(frames):
    """Runs of consecutive output indices in [(index, ready time)] of late frames."""
    stretches = []
    for index, ready in frames:
        if stretches and index == stretches[-1][-1][0] + 1:
            stretches[-1].append((index, ready))
        else:
            stretches.append([(index, ready)])
    return stretches


def stages(args, model, avatar_path, speech, calls=100):
    """Per-stage costs of a speech frame: the generator alone (one face a call, in a loop), then
    the engine with speech queued ahead (a simulated clock: read as fast as frames come)."""
    avatar = live.load_avatar(avatar_path)
    session = live.Session(model, avatar, fast=args.fast)
    mel, face = calibration_input(1, seed=1)

    def loop():
        with torch.inference_mode():
            for _ in range(10):
                session.generator(mel, face)
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                session.generator(mel, face)
                times.append(time.perf_counter() - start)
        return times

    alone = np.array(on_compute_thread(loop)) * 1000
    session.push(speech[:6 * 16000])
    session.end_utterance()
    frames, start = 0, time.perf_counter()
    while session.read().speaking:
        frames += 1
    wall = (time.perf_counter() - start) / frames * 1000
    generate, paste = (session.clock.seconds[k] / frames * 1000 for k in ("generate", "paste"))
    width, height = avatar.size
    print("avatar %dx%d, %s: generator alone ms per face median %.1f p90 %.1f (%d calls)"
          % (width, height, "fast" if args.fast else "faithful", np.median(alone), np.percentile(alone, 90), calls))
    print("engine, speech queued ahead (%d frames): %.1f ms a frame = generate %.1f (crop, input, model) "
          "+ paste %.1f + the rest %.1f (avatar read, planning, mel window, frame)"
          % (frames, wall, generate, paste, wall - generate - paste))
    avatar.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint_path", default=None, help="Wav2Lip checkpoint (default: deterministic weights)")
    p.add_argument("--avatar", default=None, help="a prepared avatar folder (default: GRID scaled to --height)")
    p.add_argument("--height", type=int, default=720, choices=sorted(SIZES))
    p.add_argument("--fast", action="store_true", help="reduced-precision generator")
    p.add_argument("--minutes", type=float, default=2.0, help="output length per session")
    p.add_argument("--sessions", type=int, default=1, help="sessions running at once on one model")
    p.add_argument("--utterance", type=float, default=8.0, help="seconds of speech per utterance")
    p.add_argument("--pause", type=float, default=1.0, help="seconds of silence between utterances")
    p.add_argument("--delay", type=float, default=0.3, help="player buffer in seconds for the late-frame count")
    p.add_argument("--max_lag", type=float, default=None,
                   help="live.Session's max_lag: speech frames further behind go out with the avatar's face")
    p.add_argument("--stages", action="store_true",
                   help="per-stage costs instead: the generator alone, and the engine with speech queued ahead")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "wav2lip-bench-live"),
                   help="folder for the generated avatar, speech and weights (kept between runs)")
    args = p.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    checkpoint = args.checkpoint_path or benchmark.deterministic_weights(args.work)[0]
    model = inference.load_model(checkpoint, args.device)
    avatar_path = args.avatar or make_avatar(args.work, args.height)
    speech_path = os.path.join(args.work, "speech_60s.wav")
    if not os.path.isfile(speech_path):
        benchmark.make_speech(speech_path, 60, SPEECH)
    import audio

    (stages if args.stages else run)(args, model, avatar_path, audio.load_wav(speech_path))


def make_avatar(work, height):
    folder = os.path.join(work, "avatar_%dp" % height)
    if not os.path.isdir(folder):
        clip = os.path.join(work, "grid_%dp.mp4" % height)
        box = benchmark.make_clip(clip, 3, SIZES[height])
        top, bottom, left, right = box
        live.prepare_avatar(clip, folder, box=(top, bottom, left, right), progress=False)
    return folder


if __name__ == "__main__":
    main()
