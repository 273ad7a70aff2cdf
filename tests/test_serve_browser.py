"""The page in a real browser: headless Chromium (Debian's `chromium` package) driven by
Playwright. Live tab: connect to an avatar, the video plays, an uploaded speech file makes the
avatar speak; Dub tab: a downloadable mp4 with the input's size, fps and audio length."""
import os

import av
import pytest

import inference
from conftest import MEDIA
from serve_util import BOX, running_server, write_checkpoint

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
                 "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
                 # host ICE candidates as addresses, not mDNS names (aiortc resolves no mDNS here)
                 "--disable-features=WebRtcHideLocalIpsWithMdns"]
FACE_VIDEO = MEDIA / "bbaf2n.mpg"
SPEECH = MEDIA / "lwbsza.mpg"

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Chromium is absent; install it with: apt-get install -y chromium")


@pytest.fixture(scope="module")
def page_and_server(tmp_path_factory, check):
    from playwright.sync_api import sync_playwright

    folder = tmp_path_factory.mktemp("browser")
    checkpoint = write_checkpoint(check, folder)
    with running_server(folder, checkpoint, "--avatars", folder / "avatars") as server:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(accept_downloads=True)
                page.set_default_timeout(120_000)
                page.goto(server.url + "/")
                yield page, server, folder
            finally:
                browser.close()


def test_live_tab_prepares_connects_and_speaks(page_and_server):
    page, server, _ = page_and_server
    page.fill("#avatar-name", "grid")
    page.set_input_files("#avatar-face", str(FACE_VIDEO))
    page.click("#avatar-create")
    page.wait_for_selector("#avatar-list li:has-text('grid: 360x288, 25 fps, 75 frames')")
    page.select_option("#avatar", "grid")
    page.click("#connect")
    page.wait_for_function("document.getElementById('video').currentTime > 1.0")
    started = page.evaluate("document.getElementById('video').currentTime")
    page.set_input_files("#speech-file", str(SPEECH))
    page.click("#speak")
    page.wait_for_function("document.getElementById('fig-speaking').textContent === 'yes'")
    queued = float(page.text_content("#speech-state").split()[1])
    assert abs(queued - len(inference.load_speech(str(SPEECH))) / 16000) < 0.01
    assert page.text_content("#fig-latency").endswith(" ms")
    page.wait_for_function("document.getElementById('fig-speaking').textContent === 'no'")
    assert page.evaluate("document.getElementById('video').currentTime") > started + 2.0
    page.click("#disconnect")
    page.wait_for_function("document.getElementById('live-state').textContent === 'disconnected'")
    assert "session" in server.log() and "end (closed by client)" in server.log()


def test_dub_tab_downloads_the_mp4(page_and_server):
    page, server, folder = page_and_server
    page.click("#tab-dub")
    page.set_input_files("#dub-form input[name=face]", str(FACE_VIDEO))
    page.set_input_files("#dub-form input[name=audio]", str(SPEECH))
    for i, value in enumerate(BOX):
        page.locator("[data-four=box] input").nth(i).fill(str(value))
    page.check("#dub-form input[name=fast]")
    page.click("#dub-start")
    page.wait_for_selector("#dub-download", state="visible", timeout=240_000)
    assert page.eval_on_selector("#dub-progress", "bar => bar.value") == 1
    with page.expect_download() as download:
        page.click("#dub-download")
    path = folder / "downloaded.mp4"
    download.value.save_as(path)

    with av.open(str(path)) as container:
        video, sound = container.streams.video[0], container.streams.audio[0]
        assert (video.codec_context.width, video.codec_context.height) == (360, 288)
        assert float(video.average_rate) == 25.0
        audio_seconds = float(sound.duration * sound.time_base)
    speech_seconds = len(inference.load_speech(str(SPEECH))) / 16000
    assert abs(audio_seconds - speech_seconds) <= 1 / 25
