"""The read-only `audio` field over every backend pair: upload, info, search, backfill."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
from typing import Any

import pytest
from flask.testing import FlaskClient

from media_service.backends import open_backends
from media_service.cli import main
from media_service.service import audio
from media_service.settings import Settings
from media_service.storage.interfaces import AudioFacts, Backends, MediaItem
from tests.conftest import Credentials, Uploader
from tests.service.test_audio import DATA, SAMPLES, make_wav

WAV_FACTS = {
    "duration_ms": 1500,
    "sample_rate": 8000,
    "channels": 1,
    "codec": "pcm",
    "bit_rate": 128000,
}


def created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def info(client: FlaskClient, item_id: str, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get(f"/v3/media/{item_id}/info", headers=headers)
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    return body


def test_wav_upload_reports_its_facts_everywhere(
    client: FlaskClient, owner: Credentials, upload: Uploader
) -> None:
    item = created(upload(owner.basic, make_wav(), filename="tone.wav"))
    assert item["audio"] == WAV_FACTS
    assert info(client, item["id"], owner.basic)["audio"] == WAV_FACTS
    page = client.get("/v3/media", headers=owner.basic).get_json()
    assert [m["audio"] for m in page["_embedded"]["media"]] == [WAV_FACTS]


@pytest.mark.parametrize(("name", "codec", "rate", "channels", "ms", "tolerance"), SAMPLES)
def test_each_format(
    client: FlaskClient,
    owner: Credentials,
    upload: Uploader,
    name: str,
    codec: str,
    rate: int,
    channels: int | None,
    ms: int,
    tolerance: int,
) -> None:
    item = created(upload(owner.basic, (DATA / name).read_bytes(), filename=name))
    facts = item["audio"]
    assert facts is not None
    assert set(facts) == {"duration_ms", "sample_rate", "channels", "codec", "bit_rate"}
    assert (facts["codec"], facts["sample_rate"]) == (codec, rate)
    if channels is not None:
        assert facts["channels"] == channels
    assert abs(facts["duration_ms"] - ms) <= tolerance
    assert info(client, item["id"], owner.basic)["audio"] == facts


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"just some text\n" * 50, id="text"),
        pytest.param(b"", id="empty"),
        pytest.param(make_wav()[:30], id="truncated-wav"),
        pytest.param((DATA / "tone.flac").read_bytes()[:20], id="truncated-flac"),
        pytest.param((DATA / "moov_at_end.m4a").read_bytes()[:2000], id="m4a-without-moov"),
        pytest.param(b"RIFF\xff\xff\xff\xffWAVE" + os.urandom(4000), id="riff-random"),
        pytest.param(b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + os.urandom(4000), id="id3-random"),
        pytest.param(b"OggS" + os.urandom(4000), id="ogg-random"),
        pytest.param(b"fLaC" + os.urandom(4000), id="flac-random"),
        pytest.param(b"\x00\x00\x00\x20ftypM4A " + os.urandom(4000), id="ftyp-random"),
    ],
)
def test_not_audio_is_null_and_still_stored(
    client: FlaskClient, owner: Credentials, upload: Uploader, content: bytes
) -> None:
    item = created(upload(owner.basic, content, filename="x.wav", content_type="audio/wav"))
    assert item["audio"] is None
    assert item["media_size"] == len(content)
    assert info(client, item["id"], owner.basic)["audio"] is None
    download = client.get(f"/v3/media/{item['id']}", headers=owner.basic)
    assert download.status_code == 200 and download.data == content


def test_a_store_that_cannot_be_read_back_publishes_the_item_unexamined(
    client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    upload: Uploader,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A failed range read never fails the upload: audio is null, left for the backfill."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise OSError("store hiccup")

    monkeypatch.setattr(audio, "read_range", broken)
    item = created(upload(owner.basic, make_wav()))
    assert item["audio"] is None
    stored = backends.media.get(item["id"])
    assert stored is not None and not stored.audio_examined
    monkeypatch.undo()
    assert audio.backfill(backends.blobs, backends.media) == {
        "examined": 1,
        "filled": 1,
        "not_audio": 0,
        "failed": 0,
    }
    assert info(client, item["id"], owner.basic)["audio"] == WAV_FACTS


def test_put_info_refuses_audio(client: FlaskClient, owner: Credentials, upload: Uploader) -> None:
    item = created(upload(owner.basic, make_wav()))
    response = client.put(f"/v3/media/{item['id']}/info", json={"audio": None}, headers=owner.basic)
    assert response.status_code == 400
    assert info(client, item["id"], owner.basic)["audio"] == WAV_FACTS


# --------------------------------------------------------------------------- repositories


def old_item(backends: Backends, content: bytes, index: int) -> MediaItem:
    """A READY item as stored before audio facts existed: bytes, and never examined."""
    from io import BytesIO

    from media_service.service.media import utc_now
    from media_service.storage.interfaces import ItemState

    now = utc_now()
    item_id = f"00000000-0000-4000-8000-{index:012d}"
    backends.blobs.put(item_id, BytesIO(content))
    item = MediaItem(
        id=item_id,
        account_id="acct0001",
        application_id=None,
        original_file_name="old",
        mime_type="application/octet-stream",
        store_id=backends.blobs.store_id,
        store_meta_params={},
        max_downloads_allowed=0,
        times_downloaded=0,
        etag="",
        media_size=len(content),
        time_created=now,
        time_last_updated=now,
        time_content_modified=now,
        public=False,
        state=ItemState.READY,
    )
    backends.media.insert(item)
    return item


def test_repository_set_audio_and_unexamined(backends: Backends) -> None:
    items = [old_item(backends, b"x", i) for i in range(5)]
    assert [i.id for i in backends.media.unexamined_audio("", 3)] == [i.id for i in items[:3]]
    assert [i.id for i in backends.media.unexamined_audio(items[2].id, 10)] == [
        i.id for i in items[3:]
    ]
    facts = AudioFacts(duration_ms=1, sample_rate=2, channels=3, codec="flac", bit_rate=None)
    assert backends.media.set_audio(items[0].id, facts)
    assert backends.media.set_audio(items[1].id, None)
    assert not backends.media.set_audio("00000000-0000-4000-8000-999999999999", None)
    first = backends.media.get(items[0].id)
    second = backends.media.get(items[1].id)
    assert first is not None and second is not None
    assert (first.audio, first.audio_examined) == (facts, True)
    assert (second.audio, second.audio_examined) == (None, True)
    assert first.time_last_updated == items[0].time_last_updated  # not a metadata change
    assert [i.id for i in backends.media.unexamined_audio("", 10)] == [i.id for i in items[2:]]


def test_backfill_fills_audio_marks_the_rest_and_never_redoes_them(
    client: FlaskClient, backends: Backends, owner: Credentials
) -> None:
    wav = old_item(backends, make_wav(), 1)
    text = old_item(backends, b"plain text", 2)
    flac = old_item(backends, (DATA / "tone.flac").read_bytes(), 3)
    lost = old_item(backends, b"gone", 4)
    backends.blobs.delete(lost.id)
    assert info(client, wav.id, owner.basic)["audio"] is None  # not examined yet

    counts = audio.backfill(backends.blobs, backends.media, batch=2)
    assert counts == {"examined": 4, "filled": 2, "not_audio": 1, "failed": 1}
    assert info(client, wav.id, owner.basic)["audio"] == WAV_FACTS
    assert info(client, flac.id, owner.basic)["audio"]["codec"] == "flac"
    assert info(client, text.id, owner.basic)["audio"] is None
    # Only the item whose bytes could not be read is tried again.
    assert [i.id for i in backends.media.unexamined_audio("", 10)] == [lost.id]
    assert audio.backfill(backends.blobs, backends.media, limit=10)["examined"] == 1


# --------------------------------------------------------------------------- SQLite migration, CLI


def test_sqlite_database_from_before_audio_gains_the_columns(cli_env: Settings) -> None:
    backends = open_backends(cli_env)
    try:
        item = old_item(backends, make_wav(), 1)
        path = backends.media.db.path  # type: ignore[attr-defined]
    finally:
        backends.close()
    with sqlite3.connect(path) as conn:  # back to the schema before audio facts
        conn.execute("ALTER TABLE media_items DROP COLUMN audio")
        conn.execute("ALTER TABLE media_items DROP COLUMN audio_examined")
    conn.close()

    backends = open_backends(cli_env)  # prepare_database adds the columns back
    try:
        got = backends.media.get(item.id)
        assert got == dataclasses.replace(item, audio=None, audio_examined=False)
        assert [i.id for i in backends.media.unexamined_audio("", 10)] == [item.id]
    finally:
        backends.close()


def test_cli_backfill_audio_prints_counts(
    cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    backends = open_backends(cli_env)
    try:
        wav = old_item(backends, make_wav(), 1)
        old_item(backends, b"text", 2)
    finally:
        backends.close()

    assert main(["backfill-audio", "--batch", "1"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "examined": 2,
        "filled": 1,
        "not_audio": 1,
        "failed": 0,
    }
    assert main(["backfill-audio"]) == 0
    assert json.loads(capsys.readouterr().out)["examined"] == 0

    backends = open_backends(cli_env)
    try:
        got = backends.media.get(wav.id)
        assert got is not None and got.audio is not None and got.audio.codec == "pcm"
    finally:
        backends.close()
    assert main(["backfill-audio", "--batch", "0"]) == 2


def test_openapi_describes_audio_as_a_nullable_nested_object(client: FlaskClient) -> None:
    schemas = client.get("/v3/media/openapi.json").get_json()["components"]["schemas"]
    field = json.dumps(schemas["MediaItem"]["properties"]["audio"])
    assert "#/components/schemas/AudioFacts" in field and '"nullable": true' in field
    assert set(schemas["AudioFacts"]["properties"]) == set(WAV_FACTS)
    assert "audio" not in schemas.get("Update", {}).get("properties", {})
