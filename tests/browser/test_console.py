"""The console in a real browser: sign in, upload, list, play, edit, delete; text stays text.

Each test drives Debian's headless chromium against a live gunicorn (tests/browser/conftest.py)
and checks the outcome through the API as well as on the page. Screenshots at desktop and phone
widths are written to the artefacts directory.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from realservers.gunicorn_server import GunicornServer
from tests.browser.conftest import PHONE, WAIT, Browser, BrowserFactory, wav_bytes
from tests.integration.conftest import (
    create_account,
    http_session,
    upload,
)

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.timeout(180)]

HOSTILE_TITLE = "<img src=x onerror=alert(1)>"
# Set to a folder (e.g. docs/) to refresh the README's screenshot from a run.
README_SCREENSHOT_DIR = "MEDIA_CONSOLE_SCREENSHOT_DIR"


def wait_for(browser: Browser, condition: Callable[[Any], Any], message: str) -> Any:
    return WebDriverWait(browser.driver, WAIT, poll_frequency=0.05).until(condition, message)


def by_id(browser: Browser, element_id: str) -> WebElement:
    return browser.driver.find_element(By.ID, element_id)


def item_card(browser: Browser, item_id: str) -> WebElement:
    return browser.driver.find_element(By.CSS_SELECTOR, f'#items li[data-id="{item_id}"]')


def listed_ids(browser: Browser) -> list[str]:
    """The ids on the page, read in one go (the list is re-rendered under the test's feet)."""
    ids: list[str] = browser.driver.execute_script(
        "return [...document.querySelectorAll('#items li.item')].map(li => li.dataset.id)"
    )
    return ids


def card_text(browser: Browser, item_id: str, selector: str) -> str | None:
    """The text of one part of an item's card, or None while it is not on the page."""
    text: str | None = browser.driver.execute_script(
        "const li = [...document.querySelectorAll('#items li.item')]"
        ".find(li => li.dataset.id === arguments[0]);"
        "const part = li && li.querySelector(arguments[1]);"
        "return part ? part.textContent : null;",
        item_id,
        selector,
    )
    return text


def sign_in_basic(
    browser: Browser, server: GunicornServer, key: str, secret: str, path: str = "/console"
) -> None:
    browser.driver.get(f"{server.url}{path}")
    wait_for(browser, lambda d: d.execute_script("return document.body.dataset.ready"), "ready")
    by_id(browser, "api-key").send_keys(key)
    by_id(browser, "api-secret").send_keys(secret)
    by_id(browser, "sign-in-submit").click()
    wait_for(browser, lambda d: by_id(browser, "workspace").is_displayed(), "signed in")
    wait_for_list(browser)


def wait_for_list(browser: Browser) -> None:
    wait_for(
        browser,
        lambda d: d.execute_script(
            "return !document.body.dataset.loading && document.getElementById('summary')"
            ".textContent !== ''"
        ),
        "the search answered",
    )


def api_item(server: GunicornServer, auth: tuple[str, str], item_id: str) -> tuple[int, Any]:
    with http_session() as http:
        response = http.get(f"{server.url}/v3/media/{item_id}/info", auth=auth, timeout=10)
    return response.status_code, response.json()


def assert_stayed_local(browser: Browser, server: GunicornServer) -> None:
    """Every resource the page loaded came from the service or a blob: URL; no cookie exists."""
    urls = browser.driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert urls, "the page loaded nothing?"
    for url in urls:
        assert url.startswith((server.url + "/", "blob:")), url
    assert browser.driver.get_cookies() == []
    assert browser.driver.execute_script("return document.cookie") == ""
    assert browser.driver.execute_script("return localStorage.length") == 0


def assert_no_script_errors(browser: Browser) -> None:
    errors = [
        message
        for message in browser.console_errors()
        # A refused sign-in logs its 401 as a failed resource; anything else is a bug.
        if "status of 401" not in message
    ]
    assert errors == []


def test_wrong_secret_is_refused_on_the_page(
    browser: BrowserFactory, console_server: GunicornServer, account: tuple[str, str]
) -> None:
    page = browser()
    page.driver.get(f"{console_server.url}/console")
    wait_for(page, lambda d: d.execute_script("return document.body.dataset.ready"), "ready")
    by_id(page, "api-key").send_keys(account[0])
    by_id(page, "api-secret").send_keys("not-the-secret-at-all")
    by_id(page, "sign-in-submit").click()
    error = by_id(page, "sign-in-error")
    wait_for(page, lambda d: error.is_displayed(), "an error")
    assert error.text == "These credentials were refused."
    assert not by_id(page, "workspace").is_displayed()
    # No native login prompt either: the fetch sent credentials "omit".
    with pytest.raises(NoAlertPresentException):
        page.driver.switch_to.alert.text  # noqa: B018
    assert_no_script_errors(page)


def test_a_rotated_secret_signs_the_console_out(
    browser: BrowserFactory, console_server: GunicornServer
) -> None:
    """A 401 mid-session (secret rotated, token expired) signs out and says why."""
    key, secret = create_account(console_server)
    page = browser()
    sign_in_basic(page, console_server, key, secret)
    console_server.cli("accounts", "rotate-secret", "--api-key", key)
    by_id(page, "search-submit").click()
    wait_for(page, lambda d: by_id(page, "sign-in").is_displayed(), "signed out")
    assert "credentials were refused" in by_id(page, "notice").text
    assert not by_id(page, "workspace").is_displayed()
    assert listed_ids(page) == []
    assert_no_script_errors(page)


def test_upload_play_edit_and_delete_a_wav(
    browser: BrowserFactory,
    console_server: GunicornServer,
    account: tuple[str, str],
    artefacts: Path,
    tmp_path: Path,
) -> None:
    with http_session() as http:  # a few neighbours, so the list looks like a real one
        for title, seconds in (("Voicemail greeting", 4.0), ("Hold music", 12.5)):
            made = upload(
                http,
                console_server,
                wav_bytes(seconds),
                auth=account,
                filename=title.lower().replace(" ", "-") + ".wav",
                content_type="audio/wav",
                title=title,
            )
            assert made.status_code == 201, made.text
    clip = tmp_path / "welcome.wav"
    clip.write_bytes(wav_bytes(1.5))

    page = browser()
    sign_in_basic(page, console_server, *account)
    before = set(listed_ids(page))

    # Upload through the file input, with a title and a progress bar.
    by_id(page, "file-input").send_keys(str(clip))
    assert "welcome.wav" in by_id(page, "drop-text").text
    by_id(page, "upload-title-input").send_keys("Welcome message")
    by_id(page, "upload-submit").click()
    wait_for(page, lambda d: len(set(listed_ids(page)) - before) == 1, "the new item listed")
    (item_id,) = set(listed_ids(page)) - before
    card = item_card(page, item_id)
    assert card.find_element(By.CSS_SELECTOR, ".item-title").text == "Welcome message"
    assert "welcome.wav" in card.find_element(By.CSS_SELECTOR, ".item-meta").text
    assert "1.5 s" in card.find_element(By.CSS_SELECTOR, ".badges").text
    assert "Uploaded Welcome message." in by_id(page, "notice").text
    status, stored = api_item(console_server, account, item_id)
    assert status == 200 and stored["title"] == "Welcome message"
    assert stored["public"] is False and stored["original_file_name"] == "welcome.wav"

    # Play: the audio element gets a blob: URL and reports the clip's duration.
    card.find_element(By.CSS_SELECTOR, "button.play").click()
    duration = wait_for(
        page,
        lambda d: d.execute_script(
            "const li = [...document.querySelectorAll('#items li.item')]"
            ".find(li => li.dataset.id === arguments[0]);"
            "const a = li && li.querySelector('audio');"
            "return a && a.readyState >= 1 && a.duration > 0 ? a.duration : null;",
            item_id,
        ),
        "the audio element loaded the clip",
    )
    assert duration == pytest.approx(1.5, abs=0.05)
    source = item_card(page, item_id).find_element(By.TAG_NAME, "audio").get_attribute("src")
    assert source and source.startswith("blob:")
    assert account[1] not in page.driver.page_source
    status, stored = api_item(console_server, account, item_id)
    assert stored["times_downloaded"] == 1  # the play was one authenticated download
    wait_for(
        page,
        lambda d: card_text(page, item_id, ".badges .downloads") == "1 download",
        "the count on the card",
    )
    desktop = page.screenshot("console-desktop")

    # Edit the title in the dialog.
    item_card(page, item_id).find_element(By.CSS_SELECTOR, "button.edit").click()
    dialog = by_id(page, "edit-dialog")
    wait_for(page, lambda d: dialog.is_displayed(), "the edit dialog")
    title_input = by_id(page, "edit-title-input")
    assert title_input.get_attribute("value") == "Welcome message"
    page.screenshot("console-edit-dialog")
    title_input.clear()
    title_input.send_keys("Welcome message (v2)")
    dialog.find_element(By.NAME, "description").send_keys("Played to every new caller")
    by_id(page, "edit-save").click()
    wait_for(page, lambda d: not dialog.is_displayed(), "the dialog closed")
    wait_for(
        page,
        lambda d: card_text(page, item_id, ".item-title") == "Welcome message (v2)",
        "the new title on the page",
    )
    status, stored = api_item(console_server, account, item_id)
    assert stored["title"] == "Welcome message (v2)"
    assert stored["description"] == "Played to every new caller"
    assert stored["etag"] and stored["public"] is False  # untouched fields stay

    # Delete, after a confirmation that can be declined.
    item_card(page, item_id).find_element(By.CSS_SELECTOR, "button.delete").click()
    confirm = by_id(page, "delete-dialog")
    wait_for(page, lambda d: confirm.is_displayed(), "the confirmation")
    assert by_id(page, "delete-subject").text == "Welcome message (v2)"
    by_id(page, "delete-cancel").click()
    wait_for(page, lambda d: not confirm.is_displayed(), "declined")
    assert api_item(console_server, account, item_id)[0] == 200
    item_card(page, item_id).find_element(By.CSS_SELECTOR, "button.delete").click()
    wait_for(page, lambda d: confirm.is_displayed(), "the confirmation again")
    by_id(page, "delete-confirm").click()
    wait_for(page, lambda d: item_id not in listed_ids(page), "the item gone from the list")
    assert api_item(console_server, account, item_id)[0] == 404

    # The time window: ending an hour ago, it holds nothing of this test's.
    page.driver.execute_script(
        "const hourAgo = new Date(Date.now() - 3600e3);"
        "hourAgo.setMinutes(hourAgo.getMinutes() - hourAgo.getTimezoneOffset());"
        "document.getElementById('search-end').value = hourAgo.toISOString().slice(0, 16);"
    )
    by_id(page, "search-submit").click()
    wait_for(page, lambda d: by_id(page, "empty").is_displayed(), "an empty window")
    assert listed_ids(page) == [] and by_id(page, "summary").text == "0 items · page 1 of 1"

    assert_stayed_local(page, console_server)
    assert_no_script_errors(page)
    target = _readme_screenshot_dir()
    if target is not None:
        shutil.copyfile(desktop, target / "console.png")


def search_count(server: GunicornServer, auth: tuple[str, str]) -> int:
    with http_session() as http:
        response = http.get(
            f"{server.url}/v3/media",
            params={"start_time": "2000-01-01T00:00:00.000Z", "page_size": 1},
            auth=auth,
            timeout=10,
        )
    assert response.status_code == 200, response.text
    count: int = response.json()["count"]
    return count


def test_upload_progress_and_cancel(
    browser: BrowserFactory,
    console_server: GunicornServer,
    account: tuple[str, str],
    tmp_path: Path,
) -> None:
    """A slow upload shows its progress; Cancel stops it and no item is left behind."""
    clip = tmp_path / "long.wav"
    clip.write_bytes(wav_bytes(60.0))  # 960 kB
    before = search_count(console_server, account)
    page = browser()
    sign_in_basic(page, console_server, *account)
    page.driver.execute_cdp_cmd("Network.enable", {})
    page.driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": 64_000},
    )
    by_id(page, "file-input").send_keys(str(clip))
    by_id(page, "upload-submit").click()
    progress = by_id(page, "upload-progress")
    wait_for(
        page,
        lambda d: 0 < int(progress.get_attribute("value") or 0) < 100,
        "the progress bar moving",
    )
    assert "% · " in by_id(page, "upload-progress-text").text
    page.screenshot("console-upload-progress")
    by_id(page, "upload-cancel").click()
    wait_for(page, lambda d: "Upload cancelled." in by_id(page, "notice").text, "cancelled")
    assert not by_id(page, "upload-progress-row").is_displayed()
    assert by_id(page, "upload-submit").is_enabled()  # the file is still chosen: try again
    page.driver.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
    )
    assert search_count(console_server, account) == before
    assert_no_script_errors(page)


def _readme_screenshot_dir() -> Path | None:
    configured = os.environ.get(README_SCREENSHOT_DIR)
    return Path(configured) if configured else None


def test_a_stored_title_of_markup_renders_as_text(
    browser: BrowserFactory, console_server: GunicornServer, account: tuple[str, str]
) -> None:
    with http_session() as http:
        made = upload(
            http,
            console_server,
            wav_bytes(0.5),
            auth=account,
            filename="x.wav",
            content_type="audio/wav",
            title=HOSTILE_TITLE,
            description='<script>alert("d")</script>',
            metadata_primary='{"note": "<b>bold</b>"}',
        )
    assert made.status_code == 201, made.text
    item_id = made.json()["id"]

    page = browser()
    sign_in_basic(page, console_server, *account)
    card = item_card(page, item_id)
    assert card.find_element(By.CSS_SELECTOR, ".item-title").text == HOSTILE_TITLE
    assert card.find_element(By.CSS_SELECTOR, ".item-description").text == (
        '<script>alert("d")</script>'
    )
    counts = page.driver.execute_script(
        "const list = document.getElementById('items');"
        "return [list.querySelectorAll('img').length, list.querySelectorAll('script').length,"
        " list.querySelectorAll('b').length];"
    )
    assert counts == [0, 0, 0]
    card.find_element(By.TAG_NAME, "summary").click()
    assert '{"note": "<b>bold</b>"}' in card.find_element(By.TAG_NAME, "dl").text
    page.driver.execute_script("arguments[0].scrollIntoView()", card)
    page.screenshot("console-markup-as-text")
    # And in the dialogs: the value of a field, the subject of a confirmation.
    card.find_element(By.CSS_SELECTOR, "button.edit").click()
    assert by_id(page, "edit-title-input").get_attribute("value") == HOSTILE_TITLE
    by_id(page, "edit-cancel").click()
    card.find_element(By.CSS_SELECTOR, "button.delete").click()
    assert by_id(page, "delete-subject").text == HOSTILE_TITLE
    by_id(page, "delete-cancel").click()
    with pytest.raises(NoAlertPresentException):
        page.driver.switch_to.alert.text  # noqa: B018
    assert_no_script_errors(page)


def test_jwt_sign_in_drop_upload_and_paging_on_a_phone(
    browser: BrowserFactory, console_server: GunicornServer, tenant: Any
) -> None:
    page = browser()
    page.resize(PHONE, mobile=True)
    page.driver.get(f"{console_server.url}/console")
    wait_for(page, lambda d: d.execute_script("return document.body.dataset.ready"), "ready")
    page.screenshot("console-phone-sign-in")
    page.driver.find_element(By.CSS_SELECTOR, 'input[name="mode"][value="jwt"]').click()
    by_id(page, "jwt").send_keys(tenant.token)
    by_id(page, "remember").click()
    by_id(page, "sign-in-submit").click()
    wait_for(page, lambda d: by_id(page, "workspace").is_displayed(), "signed in")
    wait_for_list(page)
    assert f"Application {tenant.application_id}" in by_id(page, "who").text

    # Drop three files on the zone, one at a time (a synthetic drop with a real DataTransfer).
    for n in range(3):
        page.driver.execute_script(
            "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
            "const transfer = new DataTransfer();"
            "transfer.items.add(new File([bytes], arguments[1], {type: 'audio/wav'}));"
            "const zone = document.getElementById('drop-zone');"
            "zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: transfer, bubbles: true,"
            " cancelable: true}));"
            "zone.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true,"
            " cancelable: true}));",
            base64.b64encode(wav_bytes(0.25 * (n + 1))).decode(),
            f"dropped-{n}.wav",
        )
        assert f"dropped-{n}.wav" in by_id(page, "drop-text").text
        by_id(page, "upload-submit").click()
        wait_for(page, lambda d, n=n: f"dropped-{n}.wav" in by_id(page, "items").text, "listed")
        wait_for(page, lambda d: by_id(page, "upload-submit").is_enabled() is False, "idle")

    # Two to a page (a size the menu does not offer, added here): the pager walks the three.
    page.driver.execute_script(
        "const s = document.getElementById('search-page-size');"
        "s.append(new Option('2', '2')); s.value = '2';"
    )
    by_id(page, "search-submit").click()
    wait_for(page, lambda d: len(listed_ids(page)) == 2, "a page of two")
    assert by_id(page, "summary").text == "3 items · page 1 of 2"
    first_page = listed_ids(page)
    phone = page.screenshot("console-phone-list")
    width = page.driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= PHONE[0], "the phone layout scrolls sideways"
    by_id(page, "next-page").click()
    wait_for(page, lambda d: by_id(page, "summary").text == "3 items · page 2 of 2", "page 2")
    assert len(listed_ids(page)) == 1 and listed_ids(page)[0] not in first_page
    assert not by_id(page, "next-page").is_enabled()

    # "Stay signed in": the session survives a reload of the tab (sessionStorage, not cookies).
    saved = page.driver.execute_script("return sessionStorage.getItem('media-console.session')")
    assert json.loads(saved)["authorization"] == f"Bearer {tenant.token}"
    page.driver.refresh()
    wait_for(page, lambda d: by_id(page, "workspace").is_displayed(), "still signed in")
    by_id(page, "sign-out").click()
    assert page.driver.execute_script("return sessionStorage.length") == 0
    assert by_id(page, "sign-in").is_displayed()

    assert_stayed_local(page, console_server)
    assert_no_script_errors(page)
    target = _readme_screenshot_dir()
    if target is not None:
        shutil.copyfile(phone, target / "console-phone.png")
