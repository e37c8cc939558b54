"""UserEncoder: raw request features -> tower inputs; each bad field named with what is allowed."""

from __future__ import annotations

import numpy as np
import pytest

from serving.bundle import Vocabulary
from serving.features import RequestError, UserEncoder


def vocab(name, raw, tokens=None):
    raw = np.asarray(raw, np.int64)
    order = np.argsort(raw)
    index = np.arange(1, raw.size + 1)
    tok = dict(zip(tokens, index.tolist())) if tokens else {}
    return Vocabulary(name, raw[order], index[order], np.concatenate([[-1], raw]), tok, {v: k for k, v in tok.items()})


FEATURES = [
        {"name": "user_id", "multi_valued": False, "max_length": 1, "vocab": True, "history_of": None},
        {"name": "history_item_id", "multi_valued": True, "max_length": 3, "vocab": True, "history_of": "item_id"},
        {"name": "device", "multi_valued": False, "max_length": 1, "vocab": False, "history_of": None},
        {"name": "segment", "multi_valued": False, "max_length": 1, "vocab": True, "history_of": None},
]


def vocabs():
    return {"user_id": vocab("user_id", [100, 7, 55], tokens=["u100", "u7", "u55"]), "history_item_id": vocab("history_item_id", [9, 8]),
            "segment": vocab("segment", [24, 3])}


@pytest.fixture
def encoder():
    return UserEncoder(FEATURES, vocabs(), "item_id")


def test_raw_ids_map_to_indices_and_unknown_ids_to_oov(encoder):
    u = encoder.parse({"user_id": 55, "history_item_id": [8, 1234, 9], "device": 123456789, "segment": 3})
    assert [x.tolist() for x in u.indices] == [[3], [2, 0, 1], [123456789], [2]]
    assert u.oov_features == ["history_item_id"] and u.num_oov == 1 and u.num_values == 6 and u.missing_features == []
    assert u.history_items.tolist() == [1, 2]  # the known history items, for exclude_history
    assert encoder.parse({"user_id": "u7", "device": 1}).indices[0].tolist() == [2]  # the source's string token
    assert encoder.parse({"user_id": "nobody", "device": 1}).oov_features == ["user_id"]
    assert encoder.parse({"user_id": [999], "device": 1}).oov_features == ["user_id"]  # a one-element list is fine


def test_ids_are_matched_by_the_type_of_the_source_ids(encoder):
    # integer-id features: a string of decimal digits is that integer (documented), never a silent OOV
    as_int = encoder.parse({"user_id": 55, "segment": 24, "history_item_id": [8], "device": 5})
    as_str = encoder.parse({"user_id": 55, "segment": "24", "history_item_id": ["8"], "device": "5"})
    assert [x.tolist() for x in as_str.indices] == [x.tolist() for x in as_int.indices] == [[3], [2], [5], [1]]
    assert as_str.oov_features == []
    # string-id features: strings are tokens, integers the raw ids ingest derived from them
    assert encoder.parse({"user_id": "u55"}).indices[0].tolist() == encoder.parse({"user_id": 55}).indices[0].tolist() == [3]
    assert encoder.parse({"user_id": "55"}).oov_features == ["user_id"]  # "55" is not one of the source's tokens
    for value, field in (("24x", "user.segment"), (" 24", "user.segment"), ("1e3", "user.segment"), ("", "user.segment")):
        with pytest.raises(RequestError) as info:
            encoder.parse({"segment": value})
        assert info.value.errors[0].field == field and "the ids of segment are integers in the source" in info.value.errors[0].message
    with pytest.raises(RequestError, match=r"user.history_item_id\[1\]: got the string 'abc'"):
        encoder.parse({"history_item_id": ["9", "abc"]})
    with pytest.raises(RequestError, match="ids are int64"):
        encoder.parse({"segment": str(1 << 63)})


def test_missing_features_get_their_policy_and_are_reported(encoder):
    u = encoder.parse({"history_item_id": [9]})
    assert u.missing_features == ["user_id", "device", "segment"] and u.oov_features == [] and u.num_values == 1
    # user_id, segment: the OOV row 0; device (raw ids, no OOV row): an empty bag; history given
    assert [x.tolist() for x in u.indices] == [[0], [1], [], [0]]
    assert encoder.parse({}).missing_features == ["user_id", "history_item_id", "device", "segment"]
    values, lengths = encoder.encode([u])
    assert lengths.tolist() == [[1, 1], [1, 1], [0, 0], [1, 1]]
    strict = UserEncoder(FEATURES, vocabs(), "item_id", require_all_features=True)
    with pytest.raises(RequestError) as info:
        strict.parse({"user_id": 7})
    assert [e.field for e in info.value.errors] == ["user.device", "user.segment"]  # the multi-valued history stays optional
    assert "missing; this single-valued feature is required" in info.value.errors[0].message
    declared = [dict(f, missing="required") if f["name"] == "segment" else f for f in FEATURES]
    with pytest.raises(RequestError, match="user.segment: missing"):
        UserEncoder(declared, vocabs(), "item_id").parse({"user_id": 7})
    with pytest.raises(ValueError, match="missing policy 'oov'; one of"):
        UserEncoder([dict(f, missing="oov") if f["name"] == "device" else f for f in FEATURES], vocabs(), "item_id")


def test_encode_lays_users_out_feature_major_and_pads_one_user(encoder):
    a = encoder.parse({"user_id": 100, "history_item_id": [9], "device": 5, "segment": 3})
    b = encoder.parse({"user_id": 7, "history_item_id": [8, 9, 8], "device": 6, "segment": 24})
    values, lengths = encoder.encode([a, b])
    #               b = 0   b = 1
    # user_id       [1]     [2]
    # history       [1]     [2, 1, 2]
    # device        [5]     [6]
    # segment       [2]     [1]
    assert values.tolist() == [1, 2, 1, 2, 1, 2, 5, 6, 2, 1]
    assert lengths.tolist() == [[1, 1], [1, 3], [1, 1], [1, 1]]
    values, lengths = encoder.encode([b])
    assert lengths.shape == (4, 2) and values.tolist() == [2, 2, 2, 1, 2, 2, 1, 2, 6, 6, 1, 1]


@pytest.mark.parametrize("user,field,message", [
    ({"user_id": 1, "device": 1, "age": 3}, "user.age", r"unknown feature; the user tower takes \['user_id', 'history_item_id', 'device', 'segment'\]"),
    ({"user_id": 1.5, "device": 1}, "user.user_id", "got float 1.5; give a string token or an integer id of user_id"),
    ({"user_id": True, "device": 1}, "user.user_id", "got bool True"),
    ({"user_id": [1, 2], "device": 1}, "user.user_id", "got a list of 2; user_id is single-valued"),
    ({"user_id": 1, "device": 1, "history_item_id": 8}, "user.history_item_id", "got int; history_item_id is multi-valued"),
    ({"user_id": 1, "device": 1, "history_item_id": [1, 2, 3, 4]}, "user.history_item_id", r"got 4 values; history_item_id takes at most 3 \(max_length\)"),
    ({"user_id": 1, "device": 1, "history_item_id": [1, None]}, r"user.history_item_id\[1\]", "got NoneType None"),
    ({"user_id": 1, "device": "phone"}, "user.device", "the ids of device are integers in the source"),
    ({"user_id": [[[[[[[[1]]]]]]]]}, "user.user_id", r"got list \[\[\[\.\.\.\]\]\]"),  # a bounded repr
    ({"user_id": 1 << 64, "device": 1}, "user.user_id", "ids are int64"),
    ([1, 2], "user", "got list; give an object"),
])
def test_bad_users_name_the_field_and_what_is_allowed(encoder, user, field, message):
    with pytest.raises(RequestError) as info:
        encoder.parse(user)
    assert any(__import__("re").fullmatch(field, e.field) and __import__("re").search(message, e.message) for e in info.value.errors), info.value.errors
