"""Data written by codec v1 (the json-module codec) stays readable: its bytes are in a fixture."""

import base64
import json
from datetime import date
from typing import Any

import pytest

from codec_v1_samples import FIXTURE, SAMPLES, DayHoldingDatetime
from statestream._codec import codec_for
from statestream.errors import InvalidObject

STORED: dict[str, bytes] = {
    name: base64.b64decode(sample["base64"]) if "base64" in sample else sample["json"].encode()
    for name, sample in json.loads(FIXTURE.read_text(encoding="utf-8"))["samples"].items()
}

#: what v1 wrote but later codecs read as something else, and what they read
READ_AS: dict[str, Any] = {
    # The field says date: the date of the datetime that v1 wrote in full.
    "day_holding_datetime": DayHoldingDatetime(date(2026, 1, 2)),
}

#: samples that the msgspec codec writes otherwise than v1 did, and why
WRITTEN_OTHERWISE = {
    "values": "timedelta in ISO 8601, not seconds; UTC as Z, not +00:00",
    "show": "timedelta in ISO 8601; UTC as Z",
    "ledger": "timedelta in ISO 8601 in the dataclass too, as v1 already did in the Struct",
    "old_zone": "msgspec writes UTC offsets in whole minutes (RFC 3339): +00:19:32 as +00:20",
    "cart": "sets in iteration order (the same bytes only by chance): v1 sorted them",
}
#: samples that the msgspec codec refuses to write, because they would not decode again
REFUSED = {
    "floats": "JSON has no NaN or Infinity: msgspec writes null, which a float field refuses",
    "day_holding_datetime": "written in full, it is not a date",
}


def test_the_fixture_has_every_sample() -> None:
    assert set(STORED) == set(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_bytes_written_by_codec_v1_decode_to_the_object(name: str) -> None:
    tp, obj = SAMPLES[name]
    expected = READ_AS.get(name, obj)
    decoded = codec_for(tp).decode(STORED[name])
    if name == "floats":  # NaN is not equal to itself
        assert repr(decoded) == repr(expected)
    else:
        assert decoded == expected
        assert type(decoded) is type(expected)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_what_is_written_now(name: str) -> None:
    tp, obj = SAMPLES[name]
    codec = codec_for(tp)
    if name in REFUSED:
        with pytest.raises(InvalidObject):
            codec.encode(obj)
        return
    data = codec.encode(obj)
    if name not in WRITTEN_OTHERWISE:
        assert data == STORED[name]
    if name != "old_zone":  # the offset rounded to the minute moves the time by 28 s
        assert codec.decode(data) == obj
