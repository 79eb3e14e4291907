"""The console's resumable route: tus at /v3/media/uploads for files above a threshold.

The page is opened with `?tus_threshold=&tus_chunk=` lowered, so a 960 kB clip goes through tus
in 64 KiB slices; upload throughput is throttled through the DevTools protocol so the test can
watch the bar move, cut the connection mid-upload (offline fails the PATCH in flight) and see
the console ask the server for its offset and finish from there; with "Stay signed in" a reload
mid-upload and a re-drop of the file resume the same upload.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from realservers.gunicorn_server import GunicornServer
from tests.browser.conftest import Browser, BrowserFactory, wav_bytes
from tests.browser.test_console import (
    api_item,
    assert_no_script_errors,
    assert_stayed_local,
    by_id,
    card_text,
    listed_ids,
    search_count,
    sign_in_basic,
    wait_for,
)
from tests.integration.conftest import (
    http_session,
)

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(180)]

TUS_PAGE = "/console?tus_threshold=100000&tus_chunk=65536"
UPLOADS = "/v3/media/uploads/"


def network(page: Browser, *, offline: bool = False, upload: int = -1) -> None:
    """Emulated conditions for the page: offline, or uploads at `upload` bytes/s (-1: as is)."""
    page.driver.execute_cdp_cmd("Network.enable", {})
    page.driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": upload},
    )


def progress_percent(page: Browser) -> int:
    return int(by_id(page, "upload-progress").get_attribute("value") or 0)


def upload_urls(page: Browser) -> set[str]:
    """The tus upload URLs the page talked to (its PATCHes and HEADs show in resource timing)."""
    names: list[str] = page.driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    return {name for name in names if UPLOADS in name}


def start_tus_upload(page: Browser, clip: Path, title: str) -> None:
    by_id(page, "file-input").send_keys(str(clip))
    by_id(page, "upload-title-input").send_keys(title)
    by_id(page, "upload-submit").click()


def test_a_large_file_goes_through_tus_and_resumes_after_a_lost_connection(
    browser: BrowserFactory,
    console_server: GunicornServer,
    account: tuple[str, str],
    tmp_path: Path,
) -> None:
    content = wav_bytes(60.0)  # 960 kB: fifteen slices
    clip = tmp_path / "interview.wav"
    clip.write_bytes(content)
    page = browser()
    sign_in_basic(page, console_server, *account, path=TUS_PAGE)
    before = set(listed_ids(page))
    network(page, upload=150_000)
    start_tus_upload(page, clip, "Long interview")

    wait_for(page, lambda d: 20 <= progress_percent(page) < 70, "the bar moving")
    assert upload_urls(page), "not through tus?"
    page.screenshot("console-tus-progress")
    network(page, offline=True)
    wait_for(page, lambda d: "resuming" in by_id(page, "upload-progress-text").text, "a resume")
    page.screenshot("console-tus-resuming")
    time.sleep(1.0)  # at least one HEAD fails offline too: the backoff has to carry it
    network(page, upload=1_000_000)

    wait_for(page, lambda d: "Uploaded Long interview." in by_id(page, "notice").text, "done")
    wait_for(page, lambda d: len(set(listed_ids(page)) - before) == 1, "the new item listed")
    (item_id,) = set(listed_ids(page)) - before
    assert "960 KB" in (card_text(page, item_id, ".item-meta") or "")
    assert card_text(page, item_id, ".item-title") == "Long interview"
    page.screenshot("console-tus-done")
    status, stored = api_item(console_server, account, item_id)
    assert status == 200
    assert stored["media_size"] == len(content)
    assert stored["etag"] == hashlib.md5(content).hexdigest()
    assert stored["original_file_name"] == "interview.wav" and stored["public"] is False
    assert_stayed_local(page, console_server)
    assert_no_script_errors_but_the_cut(page)


def assert_no_script_errors_but_the_cut(page: Browser) -> None:
    """The cut logs its failed requests as ERR_INTERNET_DISCONNECTED; nothing else may."""
    remaining = [m for m in page.console_errors() if "ERR_INTERNET_DISCONNECTED" not in m]
    assert remaining == []


def test_cancel_during_a_tus_upload_removes_the_upload(
    browser: BrowserFactory,
    console_server: GunicornServer,
    account: tuple[str, str],
    tmp_path: Path,
) -> None:
    clip = tmp_path / "cancelled.wav"
    clip.write_bytes(wav_bytes(60.0))
    before = search_count(console_server, account)
    page = browser()
    sign_in_basic(page, console_server, *account, path=TUS_PAGE)
    network(page, upload=64_000)
    start_tus_upload(page, clip, "Never mind")
    # A request shows in resource timing once it is answered: wait for the first slice.
    wait_for(page, lambda d: upload_urls(page) and progress_percent(page) < 100, "a slice sent")
    (upload_url,) = upload_urls(page)
    by_id(page, "upload-cancel").click()
    wait_for(page, lambda d: "Upload cancelled." in by_id(page, "notice").text, "cancelled")
    assert not by_id(page, "upload-progress-row").is_displayed()
    assert by_id(page, "upload-submit").is_enabled()
    network(page)

    def upload_status() -> int:
        with http_session() as http:
            answer = http.head(
                upload_url, auth=account, headers={"Tus-Resumable": "1.0.0"}, timeout=10
            )
        return answer.status_code

    wait_for(page, lambda d: upload_status() == 404, "the upload terminated")
    assert search_count(console_server, account) == before
    assert_no_script_errors(page)


def test_with_stay_signed_in_a_reload_resumes_the_same_upload(
    browser: BrowserFactory,
    console_server: GunicornServer,
    account: tuple[str, str],
    tmp_path: Path,
) -> None:
    content = wav_bytes(60.0)
    clip = tmp_path / "reloaded.wav"
    clip.write_bytes(content)
    page = browser()
    page.driver.get(f"{console_server.url}{TUS_PAGE}")
    wait_for(page, lambda d: d.execute_script("return document.body.dataset.ready"), "ready")
    by_id(page, "api-key").send_keys(account[0])
    by_id(page, "api-secret").send_keys(account[1])
    by_id(page, "remember").click()
    by_id(page, "sign-in-submit").click()
    wait_for(page, lambda d: by_id(page, "workspace").is_displayed(), "signed in")
    network(page, upload=100_000)
    start_tus_upload(page, clip, "Survives a reload")
    wait_for(page, lambda d: progress_percent(page) >= 30, "a third sent")
    (upload_url,) = upload_urls(page)

    page.driver.refresh()  # the PATCH in flight is cut; the session and the upload's URL stay
    wait_for(page, lambda d: by_id(page, "workspace").is_displayed(), "signed in again")
    network(page)
    start_tus_upload(page, clip, "Survives a reload")
    wait_for(page, lambda d: "Uploaded Survives a reload." in by_id(page, "notice").text, "done")
    assert upload_urls(page) == {upload_url}  # the same upload, not a new one

    with http_session() as http:
        found = http.get(
            f"{console_server.url}/v3/media",
            params={"start_time": "2000-01-01T00:00:00.000Z", "page_size": 100},
            auth=account,
            timeout=10,
        ).json()["_embedded"]["media"]
    (stored,) = [item for item in found if item["original_file_name"] == "reloaded.wav"]
    assert stored["etag"] == hashlib.md5(content).hexdigest()
    assert stored["media_size"] == len(content)
    keys = page.driver.execute_script("return Object.keys(sessionStorage)")
    assert not [key for key in keys if key.startswith("media-console.upload:")]
    assert_no_script_errors(page)
