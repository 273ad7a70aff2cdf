"""The agent plugins are optional extras: the core imports without Pipecat or LiveKit, and the
LiveKit worker script refuses to start without a server and credentials, in one line."""
import os
import subprocess
import sys
import textwrap

from conftest import MEDIA, REPO

WORKER = REPO / "integrations" / "livekit_worker.py"

# Imported in a fresh interpreter where any import of the two frameworks fails.
BLOCKED_RUN = textwrap.dedent("""
    import importlib, sys

    class Blocked:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("pipecat", "livekit"):
                raise ImportError("blocked for this test: " + name)

    sys.meta_path.insert(0, Blocked())
    for name in sys.argv[1:]:
        importlib.import_module(name)
    for plugin in ("integrations.pipecat", "integrations.livekit"):
        try:
            importlib.import_module(plugin)
        except ImportError:
            continue
        raise SystemExit(plugin + " imported although its framework is blocked")
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("pipecat", "livekit"))
    print("imported", len(sys.argv) - 1, "modules; framework modules loaded:", leaked)
""")


def core_modules():
    names = ["inference", "live", "prepare_avatar", "integrations", "preprocess", "color_syncnet_train",
             "wav2lip_train", "hq_wav2lip_train", "training.expert", "training.generator"]
    return names + (["serve"] if (REPO / "serve.py").is_file() else [])


def test_core_imports_without_the_frameworks():
    result = subprocess.run([sys.executable, "-c", BLOCKED_RUN, *core_modules()], capture_output=True,
                            text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "framework modules loaded: []" in result.stdout, result.stdout


def run_worker(env_overrides, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env.update(env_overrides)
    return subprocess.run([sys.executable, str(WORKER), "--checkpoint_path", "missing.pth",
                           "--avatar", str(MEDIA), *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)


def test_worker_without_settings_names_the_missing_one():
    for env, args, missing in (({}, (), "LIVEKIT_URL"),
                               ({"LIVEKIT_URL": "ws://127.0.0.1:9"}, (), "LIVEKIT_API_KEY"),
                               ({"LIVEKIT_URL": "ws://127.0.0.1:9", "LIVEKIT_API_KEY": "key",
                                 "LIVEKIT_API_SECRET": "secret"}, (), "--room")):
        result = run_worker(env, *args)
        assert result.returncode == 1, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and missing in lines[0], result.stderr
