"""Join a LiveKit room as the Wav2Lip avatar of an agent, as LiveKit's local-avatar example does:
the agent streams its speech here (DataStreamAudioOutput), LiveKit's AvatarRunner publishes the
lip-synced video and the audio back to the room on the agent's behalf.

    python integrations/livekit_worker.py --checkpoint_path checkpoints/wav2lip_gan.pth \
        --avatar avatars/me --room my-room --agent_identity my-agent

The server and the credentials come from LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET
(or --url, --api_key, --api_secret), or a ready join token (--token, e.g. minted by the agent).
It stops when the agent leaves or the room closes.
"""
import argparse
import asyncio
import logging
import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a script, this folder would come first on the path and its livekit.py would shadow
    # the livekit package: put the repository root there instead.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from livekit import api, rtc  # noqa: E402

# livekit.agents and the model take seconds to import: they come after the settings are checked.


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_path", required=True, help="Wav2Lip checkpoint (wav2lip.pth or wav2lip_gan.pth)")
    parser.add_argument("--avatar", required=True, help="folder of an avatar made by live.prepare_avatar")
    parser.add_argument("--fast", action="store_true", help="the live engine's reduced-precision mode")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--room", default=None, help="room to join (needed unless --token names it)")
    parser.add_argument("--identity", default="wav2lip-avatar", help="the avatar participant's identity")
    parser.add_argument("--agent_identity", default=None,
                        help="the agent whose speech to lip-sync (default: the first agent in the room)")
    parser.add_argument("--url", default=os.environ.get("LIVEKIT_URL"), help="default: $LIVEKIT_URL")
    parser.add_argument("--api_key", default=os.environ.get("LIVEKIT_API_KEY"), help="default: $LIVEKIT_API_KEY")
    parser.add_argument("--api_secret", default=os.environ.get("LIVEKIT_API_SECRET"),
                        help="default: $LIVEKIT_API_SECRET")
    parser.add_argument("--token", default=None, help="a join token instead of the key and secret")
    return parser.parse_args(argv)


def join_token(args):
    """The avatar's join token, or a one-line error naming the missing setting."""
    if not args.url:
        raise SystemExit("error: no LiveKit server URL: set LIVEKIT_URL or pass --url")
    if args.token:
        return args.token
    for value, variable, flag in ((args.api_key, "LIVEKIT_API_KEY", "--api_key"),
                                  (args.api_secret, "LIVEKIT_API_SECRET", "--api_secret")):
        if not value:
            raise SystemExit(f"error: no LiveKit credentials: set {variable} or pass {flag} (or pass --token)")
    if not args.room:
        raise SystemExit("error: no room to join: pass --room")
    token = (api.AccessToken(args.api_key, args.api_secret).with_identity(args.identity)
             .with_name("Wav2Lip avatar").with_kind("agent")
             .with_grants(api.VideoGrants(room_join=True, room=args.room)))
    if args.agent_identity:
        from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
        token = token.with_attributes({ATTRIBUTE_PUBLISH_ON_BEHALF: args.agent_identity})
    return token.to_jwt()


async def serve(args, token, video_gen):
    from livekit.agents.voice.avatar import AvatarRunner, DataStreamAudioReceiver

    room = rtc.Room()
    try:
        await room.connect(args.url, token)
    except rtc.ConnectError as e:
        raise SystemExit("error: cannot join the room at %s (%s); check the URL and the credentials" % (args.url, e))
    logging.info("joined room %s as %s", room.name, room.local_participant.identity)
    try:
        runner = AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room, sender_identity=args.agent_identity),
                              video_gen=video_gen, options=video_gen.options)
        await runner.start()
        done = asyncio.Event()

        def on_left(participant):
            if participant.identity == args.agent_identity or (
                    args.agent_identity is None and participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT):
                done.set()

        room.on("participant_disconnected", on_left)
        room.on("disconnected", lambda *_: done.set())
        await done.wait()
        logging.info("the agent left: stopping")
        await runner.aclose()
    finally:
        await room.disconnect()


def main(argv=None):
    args = parse_args(argv)
    token = join_token(args)
    from integrations.livekit import Wav2LipVideoGenerator

    try:
        video_gen = Wav2LipVideoGenerator(checkpoint_path=args.checkpoint_path, avatar=args.avatar,
                                          fast=args.fast, device=args.device)
    except (OSError, ValueError) as e:
        raise SystemExit("error: %s" % e)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args, token, video_gen))


if __name__ == "__main__":
    main()
