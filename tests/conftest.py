"""Shared test fixtures: the ../shared folder beside the repository and its conformance kit."""
import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "conformance"
MEDIA = SHARED / "media"

if not (CONFORMANCE / "check.py").is_file():
    raise RuntimeError("tests need ../shared beside the repository root (missing %s)" % CONFORMANCE)

sys.path.insert(0, str(REPO))


def _load_check():
    spec = importlib.util.spec_from_file_location("conformance_check", CONFORMANCE / "check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def check():
    """The conformance kit's check.py as a module."""
    return _load_check()
