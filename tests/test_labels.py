"""Typed label spaces: construction checks, display names, and the JSON round trip prompt files use."""

from __future__ import annotations

import json

import pytest

from vlprompt.labels import ClassNames, LabelSpaceError, PairSpace, Task, TaskSpace, label_space_from_json

PAIRS = PairSpace(("red", "old"), ("car", "shoe"), (("red", "car"), ("old", "shoe")))
TASKS = TaskSpace((Task("colour", ("red", "blue")), Task("shape", ("circle", "square", "star"))))


@pytest.mark.parametrize("space", [ClassNames(("cat", "dog")), PAIRS, TASKS], ids=["classes", "pairs", "tasks"])
def test_json_round_trip(space):
    text = json.dumps(space.to_json())
    back = label_space_from_json(json.loads(text))
    assert back == space and type(back) is type(space) and len(back) == len(space)


def test_display_names_and_sizes():
    assert ClassNames(("cat", "dog")).display_names() == ["cat", "dog"]
    assert PAIRS.display_names() == ["red car", "old shoe"] and len(PAIRS) == 2
    assert TASKS.display_names()[2:] == ["shape: circle", "shape: square", "shape: star"] and len(TASKS) == 5
    assert TASKS.task("shape").classes == ("circle", "square", "star")
    with pytest.raises(LabelSpaceError, match="unknown task 'texture'"):
        TASKS.task("texture")


def test_pairs_keep_their_vocabulary():
    assert PAIRS.with_pairs([("old", "car")]).pairs == (("old", "car"),)
    assert PairSpace.coerce([["red", "shoe"]], PAIRS).pairs == (("red", "shoe"),)
    with pytest.raises(LabelSpaceError, match="'blue', which is not in the vocabulary"):
        PAIRS.with_pairs([("blue", "car")])
    other = PairSpace(("red",), ("car",), (("red", "car"),))
    with pytest.raises(LabelSpaceError, match="keeps its vocabulary"):
        PairSpace.coerce(other, PAIRS)


def test_format_1_label_spaces_and_bad_input():
    assert label_space_from_json(["cat", "dog"]) == ClassNames(("cat", "dog"))
    assert label_space_from_json({"attrs": ["red"], "objs": ["car"], "pairs": [["red", "car"]]}).pairs == (
        ("red", "car"),
    )
    with pytest.raises(LabelSpaceError, match="unknown label space kind 'colours'"):
        label_space_from_json({"kind": "colours"})
    with pytest.raises(LabelSpaceError, match="missing or has a malformed field"):
        label_space_from_json({"kind": "pairs", "attrs": ["red"]})
    with pytest.raises(LabelSpaceError, match="at least one class"):
        ClassNames(())
    with pytest.raises(LabelSpaceError, match="unique"):
        TaskSpace((Task("a", ("x",)), Task("a", ("y",))))
    with pytest.raises(LabelSpaceError, match="list of class names"):
        ClassNames.coerce("cat")
