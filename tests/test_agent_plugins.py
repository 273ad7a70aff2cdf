"""The Pipecat video service in a real in-process pipeline and the LiveKit video generator driven
with LiveKit's own frames, both on the real live engine (conformance weights, a GRID avatar,
the first seconds of a real speech file)."""
import asyncio
import math

import cv2
import numpy as np
import pytest
import soxr
import torch
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd
from pipecat.frames.frames import (EndWorkerFrame, InterruptionFrame, InterruptionWorkerFrame, OutputImageRawFrame,
                                   TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.tests.utils import run_test

import audio
import inference
import live
from conftest import MEDIA
from integrations.livekit import Wav2LipVideoGenerator
from integrations.pipecat import Wav2LipVideoService

GRID = MEDIA / "bbaf2n.mpg"                # 360x288, 25 fps, 75 frames
BOX = (60, 220, 110, 250)                  # top bottom left right around the speaker's face
SECONDS = 1.9                              # of jfk.wav (not a whole number of frames)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, check):
    path = tmp_path_factory.mktemp("ckpt") / "wav2lip.pth"
    torch.save({"state_dict": check.make_state_dict("wav2lip", 11)}, path)
    return path


@pytest.fixture(scope="module")
def avatar_path(tmp_path_factory):
    return live.prepare_avatar(str(GRID), str(tmp_path_factory.mktemp("avatar") / "grid"), box=BOX,
                               no_cache=True, progress=False)


@pytest.fixture(scope="module")
def speech():
    """int16 samples at 16 kHz, as a TTS service gives them."""
    wav = audio.load_wav(str(MEDIA / "jfk.wav"), 16000)[:round(SECONDS * 16000)]
    return np.clip(np.rint(wav * 32768), -32768, 32767).astype(np.int16)


def reference(checkpoint, avatar_path, speech, first_index):
    """The live session's speaking frames for `speech` as one utterance from output frame `first_index`."""
    session = live.Session(inference.load_model(str(checkpoint)), live.load_avatar(avatar_path))
    for _ in range(first_index):
        assert not session.read().speaking
    session.push(speech)
    session.end_utterance()
    frames = []
    while (frame := session.read()).speaking:
        frames.append(frame)
    return frames


def assert_close(image, expected, box=BOX):
    """Within the end-to-end goldens' tolerance (max 3 levels, mean 0.05 in the face box)."""
    top, bottom, left, right = box
    diff = np.abs(image.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 3 and diff[top:bottom, left:right].mean() <= 0.05, (diff.max(), diff.mean())


def idle_image(avatar, index):
    return avatar.frame(live.pingpong(index, len(avatar)))


def per_frame(fps):
    return round(16000 / fps)


# --------------------------------------------------------------------------- Pipecat
def tts_frames(speech, rate=16000):
    """20 ms TTSAudioRawFrames at `rate`, as a streaming TTS service pushes them."""
    if rate != 16000:
        speech = soxr.resample(speech, 16000, rate)
    chunk = rate // 50
    return [TTSAudioRawFrame(audio=speech[i:i + chunk].tobytes(), sample_rate=rate, num_channels=1)
            for i in range(0, len(speech), chunk)]


def bgr(image_frame):
    width, height = image_frame.size
    return np.frombuffer(image_frame.image, np.uint8).reshape(height, width, 3)[:, :, ::-1]


def pipeline_output(service, frames):
    down, _ = asyncio.run(run_test(service, frames_to_send=frames, start_timeout=60))
    return down, [(f.pts, bgr(f)) for f in down if isinstance(f, OutputImageRawFrame)]


def test_pipecat_pipeline_lip_syncs_tts_audio_on_the_engine_clock(checkpoint, avatar_path, speech):
    service = Wav2LipVideoService(checkpoint_path=checkpoint, avatar=avatar_path)
    fps = service.fps
    down, images = pipeline_output(service, [TTSStartedFrame(), *tts_frames(speech), TTSStoppedFrame()])

    # One image per frame of the engine's clock: pts i / fps (nanoseconds), none missing.
    assert [pts for pts, _ in images] == [round(i / fps * 1e9) for i in range(len(images))]
    assert all(image.shape == (288, 360, 3) for _, image in images)
    sound = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    speaking = [i for i, (pts, _) in enumerate(images) if pts in {f.pts for f in sound}]
    first = speaking[0]
    # The speech's frames are consecutive, as many as its duration at the avatar's fps, and
    # carry exactly its audio (the last one padded with silence).
    assert speaking == list(range(first, first + math.ceil(len(speech) / 16000 * fps)))
    played = np.concatenate([np.frombuffer(f.audio, np.int16) for f in sound])
    np.testing.assert_array_equal(played, np.pad(speech, (0, len(speaking) * per_frame(fps) - len(speech))))
    assert all(f.sample_rate == 16000 and f.num_channels == 1 for f in sound)

    expected = reference(checkpoint, avatar_path, speech, first)
    assert len(expected) == len(speaking)
    for i, frame in zip(speaking, expected):
        assert_close(images[i][1], frame.image)
    avatar = live.load_avatar(avatar_path)
    for i in set(range(len(images))) - set(speaking):
        np.testing.assert_array_equal(images[i][1], idle_image(avatar, i))
    # The end of the TTS response leaves after the last frame of its speech.
    assert down.index(next(f for f in down if isinstance(f, TTSStoppedFrame))) > down.index(sound[-1])


class UserBargesIn(FrameProcessor):
    """After the bot's `after`-th frame of speech, interrupts the pipeline as a user who starts
    speaking does (the interruption enters at the pipeline's start), and ends the pipeline
    `then` images after the interruption came through."""

    def __init__(self, after, then):
        super().__init__(enable_direct_mode=True)
        self.after, self.then = after, then
        self.spoken, self.images_since = 0, None

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame):
            self.spoken += 1
            if self.spoken == self.after:
                await self.push_frame(InterruptionWorkerFrame(), FrameDirection.UPSTREAM)
        elif isinstance(frame, InterruptionFrame):
            self.images_since = 0
        elif isinstance(frame, OutputImageRawFrame) and self.images_since is not None:
            self.images_since += 1
            if self.images_since == self.then:
                await self.push_frame(EndWorkerFrame())


def test_pipecat_interruption_stops_the_speech_at_once(checkpoint, avatar_path, speech):
    # TTS at 24 kHz, as most services send it (the session resamples).
    service = Wav2LipVideoService(checkpoint_path=checkpoint, avatar=avatar_path)
    down, _ = asyncio.run(run_test(Pipeline([service, UserBargesIn(after=5, then=4)]), send_end_frame=False,
                                   frames_to_send=[TTSStartedFrame(), *tts_frames(speech, 24000)],
                                   start_timeout=60))
    cut = down.index(next(f for f in down if isinstance(f, InterruptionFrame)))
    assert sum(isinstance(f, TTSAudioRawFrame) for f in down[:cut]) >= 5
    assert not [f for f in down[cut:] if isinstance(f, TTSAudioRawFrame)]
    # Images after it: the avatar's own idle frames, also those read ahead before it.
    after = [f for f in down[cut:] if isinstance(f, OutputImageRawFrame)]
    assert len(after) >= 4
    avatar = live.load_avatar(avatar_path)
    for frame in after:
        np.testing.assert_array_equal(bgr(frame), idle_image(avatar, round(frame.pts * service.fps / 1e9)))


# --------------------------------------------------------------------------- LiveKit
def audio_frames(speech, chunk=1600):
    """100 ms rtc.AudioFrames, as LiveKit's DataStreamAudioReceiver gives them."""
    return [rtc.AudioFrame(speech[i:i + chunk].tobytes(), 16000, 1, len(speech[i:i + chunk]))
            for i in range(0, len(speech), chunk)]


async def take(frames, until, limit=400):
    """Items of the generator up to the first for which until(items) holds (at most `limit`)."""
    items = []
    async for item in frames:
        items.append(item)
        if until(items) or len(items) >= limit:
            return items
    return items


def video_image(frame):
    rgba = np.frombuffer(bytes(frame.data), np.uint8).reshape(frame.height, frame.width, 4)
    return cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR)


def timeline(items):
    """(video frames, {video frame number: its audio frame}, video frames before each
    AudioSegmentEnd) of the generator's items; each audio frame must follow its own video frame."""
    videos, sound, ends = [], {}, []
    for item in items:
        if isinstance(item, rtc.VideoFrame):
            videos.append(item)
        elif isinstance(item, rtc.AudioFrame):
            assert videos and len(videos) - 1 not in sound
            sound[len(videos) - 1] = item
        else:
            assert isinstance(item, AudioSegmentEnd)
            ends.append(len(videos))
    return videos, sound, ends


def test_livekit_generator_frames_interruption_and_segment_ends(checkpoint, avatar_path, speech):
    short = speech[:8000]                      # a second utterance right after the first

    async def drive():
        generator = Wav2LipVideoGenerator(checkpoint_path=checkpoint, avatar=avatar_path)
        frames = generator.__aiter__()
        for utterance in (speech, short):
            for frame in audio_frames(utterance):
                await generator.push_audio(frame)
            await generator.push_audio(AudioSegmentEnd())
        items = await take(frames, lambda items: sum(isinstance(i, AudioSegmentEnd) for i in items) == 2)
        # A third, interrupted after ten frames; the receiver then ends the segment, as it does.
        for frame in audio_frames(speech):
            await generator.push_audio(frame)
        items += await take(frames, lambda items: sum(isinstance(i, rtc.AudioFrame) for i in items) == 10)
        cleared = len(items)
        generator.clear_buffer()
        await generator.push_audio(AudioSegmentEnd())
        items += await take(frames, lambda items: sum(isinstance(i, rtc.VideoFrame) for i in items) == 6)
        return generator.options, items, cleared

    options, items, cleared = asyncio.run(drive())
    avatar = live.load_avatar(avatar_path)
    fps = avatar.fps
    assert (options.video_width, options.video_height, options.video_fps) == (*avatar.size, fps)
    assert (options.audio_sample_rate, options.audio_channels) == (16000, 1)
    videos, sound, ends = timeline(items)
    assert all((v.width, v.height, v.type) == (*avatar.size, rtc.VideoBufferType.RGBA) for v in videos)
    assert all((a.sample_rate, a.num_channels, a.samples_per_channel) == (16000, 1, per_frame(fps))
               for a in sound.values())

    # The two utterances: consecutive frames, as many as each lasts at the avatar's fps, each
    # frame's audio the speech's, its end reported right after its last frame.
    first = min(sound)
    lengths = [math.ceil(len(u) / 16000 * fps) for u in (speech, short)]
    bounds = [first, first + lengths[0], first + sum(lengths)]
    assert ends[:2] == bounds[1:]
    assert sorted(k for k in sound if k < bounds[2]) == list(range(first, bounds[2]))
    for utterance, begin, end in zip((speech, short), bounds, bounds[1:]):
        played = np.concatenate([np.frombuffer(bytes(sound[k].data), np.int16) for k in range(begin, end)])
        np.testing.assert_array_equal(played, np.pad(utterance, (0, len(played) - len(utterance))))
    # Audio time (the speech's start, then the audio played) and video time within one frame.
    audio_time = first / fps
    for k in range(first, bounds[2]):
        assert abs(audio_time - k / fps) <= 1 / fps
        audio_time += sound[k].duration
    # Frames in order: the first utterance's are the live session's, idle ones the avatar's own.
    for k, frame in zip(range(first, bounds[1]), reference(checkpoint, avatar_path, speech, first)):
        assert_close(video_image(videos[k]), frame.image)
    for k in range(first):
        np.testing.assert_array_equal(video_image(videos[k]), idle_image(avatar, k))

    # clear_buffer: no audio after it, only idle frames (also those read ahead before it); the
    # interrupted utterance's end is reported once.
    cut = len(timeline(items[:cleared])[0])
    assert max(sound) < cut and len(ends) == 3 and ends[2] > cut
    for k in range(cut, len(videos)):
        np.testing.assert_array_equal(video_image(videos[k]), idle_image(avatar, k))


@pytest.mark.parametrize("plugin", [Wav2LipVideoService, Wav2LipVideoGenerator])
def test_plugins_name_a_bad_avatar_or_checkpoint_in_one_line(plugin, checkpoint, avatar_path, tmp_path):
    with pytest.raises(live.AvatarError, match="prepare_avatar.py") as error:
        plugin(checkpoint_path=checkpoint, avatar=tmp_path / "no_avatar")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="missing.pth") as error:
        plugin(checkpoint_path=tmp_path / "missing.pth", avatar=avatar_path)
    assert "\n" not in str(error.value)
