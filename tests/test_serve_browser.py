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
