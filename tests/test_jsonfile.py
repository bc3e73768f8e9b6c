"""jsonfile.read_json: every unreadable JSON file is one sentence naming the file and the fix, raised as the
caller's error where it gives one."""

import pytest

from config import ConfigError
from jsonfile import read_json


def test_reads_json(tmp_path):
    (tmp_path / "a.json").write_text('{"x": [1, 2]}')
    assert read_json(str(tmp_path / "a.json"), "config") == {"x": [1, 2]}


def test_each_failure_is_one_sentence_naming_the_file_and_the_fix(tmp_path):
    (tmp_path / "bad.json").write_text('{"x": ')
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00\x81")
    cases = [
        (tmp_path / "missing.json", FileNotFoundError, "does not exist; check the path"),
        (tmp_path, ValueError, "is a folder; pass the JSON file"),
        (tmp_path / "binary.json", ValueError, "is not a text file; pass the JSON file"),
        (tmp_path / "bad.json", ValueError, "is not valid JSON (Expecting value: line 1 column 7 (char 6)); re-export"),
    ]
    for path, error, words in cases:
        with pytest.raises(error) as raised:
            read_json(str(path), "annotation", "re-export it")
        message = str(raised.value)
        assert message.startswith(f"annotation file {path} ") and words in message and "\n" not in message
        with pytest.raises(ConfigError, match="^config file "):  # the caller's error class, for every failure
            read_json(str(path), "config", error=ConfigError)
