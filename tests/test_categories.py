"""Category list: contiguous indices follow sorted dataset ids; the file round-trips."""

import pytest

from data.categories import Categories


def test_contiguous_indices_follow_sorted_ids(tmp_path):
    cats = Categories.from_coco(
        [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 92, "name": "sky", "isthing": 0}]
    )
    assert cats.ids == (1, 90, 92) and cats.num_classes == 3
    assert [cats.index_of(i) for i in (1, 90, 92)] == [0, 1, 2]
    assert cats.isthing == (True, True, False)
    with pytest.raises(KeyError, match="unknown category id 5"):
        cats.index_of(5)
    cats.save(str(tmp_path / "categories.json"))
    assert Categories.load(str(tmp_path / "categories.json")) == cats


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="convert_coco_to_tfrecord"):
        Categories.load(str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json"):
        Categories.load(str(tmp_path / "bad.json"))
    (tmp_path / "cut.json").write_text('{"categories": [')  # before, json's own message, no file named
    with pytest.raises(ValueError, match=r"category file .*cut\.json is not valid JSON .*; regenerate it"):
        Categories.load(str(tmp_path / "cut.json"))
