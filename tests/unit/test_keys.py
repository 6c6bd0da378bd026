from __future__ import annotations

from urllib.parse import quote_plus

import pytest

from tests.support.hostile import AWKWARD_KEYS
from trashsorter.errors import Rejection
from trashsorter.keys import decode_event_key, label_for_key, parse_key

LABELS = ("Compost", "Landfill", "Recycling")


@pytest.mark.parametrize("key", AWKWARD_KEYS)
def test_awkward_keys_round_trip_through_s3_url_encoding(key: str) -> None:
    assert decode_event_key(quote_plus(key)) == key


def test_plus_in_an_event_key_is_a_space_and_encoded_plus_is_a_plus() -> None:
    assert (
        decode_event_key("images/Recycling/can+lid%2B2+%281%29.jpg") == "images/Recycling/can lid+2 (1).jpg"
    )
    assert decode_event_key("images/Compost/100%25+caf%C3%A9.jpg") == "images/Compost/100% café.jpg"


@pytest.mark.parametrize(
    ("key", "label"),
    [
        ("images/Compost/a.jpg", "Compost"),
        ("images/compost/a.jpg", "Compost"),
        ("images/RECYCLING/a.jpg", "Recycling"),
        ("images/Compost/2024/05/a.jpg", "Compost"),
    ],
)
def test_label_is_the_first_folder_in_the_configured_spelling(key: str, label: str) -> None:
    assert label_for_key(key, LABELS) == label


@pytest.mark.parametrize(
    "key", ["datasets/x/manifest.jsonl", "images/Compost/", "images/", "Images/Compost/a.jpg"]
)
def test_keys_outside_images_and_folder_placeholders_are_not_ingested(key: str) -> None:
    assert parse_key(key, LABELS) is None


def test_unknown_label_is_refused_with_the_allowed_labels() -> None:
    with pytest.raises(Rejection) as info:
        label_for_key("images/Glass/bottle.jpg", LABELS)
    assert info.value.code == "unknown_label"
    assert info.value.message == "folder 'Glass' is not a label; the labels are: Compost, Landfill, Recycling"
    parsed = parse_key("images/Glass/bottle.jpg", LABELS)
    assert parsed is not None and parsed.label is None and parsed.folder == "Glass"


def test_an_object_directly_under_images_has_no_label() -> None:
    with pytest.raises(Rejection) as info:
        label_for_key("images/loose.jpg", LABELS)
    assert info.value.code == "unknown_label"


def test_index_sort_key_fits_dynamodb_for_every_legal_s3_key() -> None:
    from trashsorter.schema import MAX_SORT_KEY_BYTES, image_gsi

    short = image_gsi("accepted", "Compost", "images/Compost/a.jpg")
    assert short == {"gsi1pk": "STATUS#accepted", "gsi1sk": "Compost#images/Compost/a.jpg"}
    a = "images/Compost/" + "日" * 336 + "a.jpg"  # 1,028 bytes: more than S3 allows, still handled
    b = "images/Compost/" + "日" * 336 + "b.jpg"
    sa, sb = image_gsi("accepted", "Compost", a)["gsi1sk"], image_gsi("accepted", "Compost", b)["gsi1sk"]
    assert len(sa.encode()) <= MAX_SORT_KEY_BYTES and len(sb.encode()) <= MAX_SORT_KEY_BYTES
    assert sa != sb and sa.startswith("Compost#images/Compost/日")
