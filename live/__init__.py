"""The live engine: avatars prepared once, sessions that lip-sync them to speech as it arrives.

    avatar = live.load_avatar(live.prepare_avatar("anna.mp4", "avatars/anna"))
    session = live.Session(inference.load_model("wav2lip.pth"), avatar)
    session.push(pcm_chunk); session.end_utterance()
    frame = session.read()        # .image .audio .pts .index .source_index .speaking
"""
from .avatar import Avatar, AvatarError, load_avatar, prepare_avatar
from .mel import StreamingMel
from .session import LOOKAHEAD_SECONDS, Frame, LiveError, Session, generator_for, pingpong

__all__ = ["Avatar", "AvatarError", "Frame", "LOOKAHEAD_SECONDS", "LiveError", "Session", "StreamingMel",
           "generator_for", "load_avatar", "pingpong", "prepare_avatar"]
