"""The category list of a dataset, written beside its TFRecord shards.

The model predicts contiguous class indices 0..K-1 (K = the no-object class); datasets name
categories by their own ids (COCO: 1..90 with gaps). The contiguous index of a category is its
position in the list sorted by id, as in detectron2.

File format (`categories.json`):
    {"categories": [{"id": 1, "name": "person", "isthing": 1}, ...]}
"""

from __future__ import annotations

from dataclasses import dataclass

from jsonfile import read_json, write_json


@dataclass(frozen=True)
class Categories:
    """Ordered categories with the id <-> contiguous-index maps."""

    ids: tuple[int, ...]
    names: tuple[str, ...]
    isthing: tuple[bool, ...]

    @classmethod
    def from_coco(cls, categories: list[dict]) -> Categories:
        """From COCO `categories` entries (`isthing` defaults to 1, as in instance datasets)."""
        ordered = sorted(categories, key=lambda c: int(c["id"]))
        ids = tuple(int(c["id"]) for c in ordered)
        if len(set(ids)) != len(ids):
            raise ValueError(f"category ids are not unique: {sorted(ids)}")
        return cls(
            ids=ids,
            names=tuple(str(c.get("name", c["id"])) for c in ordered),
            isthing=tuple(bool(c.get("isthing", 1)) for c in ordered),
        )

    @property
    def num_classes(self) -> int:
        return len(self.ids)

    def index_of(self, category_id: int) -> int:
        """Contiguous index of a dataset category id; KeyError names the unknown id."""
        try:
            return self._index[int(category_id)]
        except KeyError:
            raise KeyError(f"unknown category id {category_id}; known ids: {list(self.ids)}") from None

    @property
    def _index(self) -> dict[int, int]:
        return {category_id: i for i, category_id in enumerate(self.ids)}

    def to_json(self) -> dict:
        return {
            "categories": [
                {"id": i, "name": n, "isthing": int(t)}
                for i, n, t in zip(self.ids, self.names, self.isthing, strict=True)
            ]
        }

    def save(self, path: str) -> None:
        write_json(path, self.to_json(), indent=1)

    @classmethod
    def load(cls, path: str) -> Categories:
        written_by = "it is written beside the shards by convert_coco_to_tfrecord.py"
        try:
            values = read_json(path, "category", f"regenerate it ({written_by})")
        except FileNotFoundError:
            raise FileNotFoundError(f"category file {path} does not exist; {written_by}") from None
        if not isinstance(values, dict) or not isinstance(values.get("categories"), list):
            raise ValueError(f"category file {path} must hold {{'categories': [{{'id', 'name', 'isthing'}}, ...]}}")
        return cls.from_coco(values["categories"])
