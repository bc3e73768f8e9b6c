"""Reading a JSON file a user named (any failure is one sentence naming the file and the fix), and writing
one whole or not at all. For example, config.py:

    values = read_json(path, "config", "fix or regenerate it", ConfigError)
    write_json(path, values, indent=2)
"""

from __future__ import annotations

import json
import os


def read_json(path: str, what: str, fix: str = "regenerate it", error: type[ValueError] | None = None):
    """The parsed content of `path`, named in messages as the `what` file ("config", "annotation", ...).

    A missing file raises FileNotFoundError; a folder, a binary file or invalid JSON ValueError (that ends
    with `fix`); every one of them `error` instead where given (the caller's ValueError, e.g. ConfigError).
    """
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        message, kind = f"{what} file {path} does not exist; check the path", FileNotFoundError
    except IsADirectoryError:
        message, kind = f"{what} file {path} is a folder; pass the JSON file", ValueError
    except UnicodeDecodeError:
        message, kind = f"{what} file {path} is not a text file; pass the JSON file", ValueError
    except json.JSONDecodeError as e:
        message, kind = f"{what} file {path} is not valid JSON ({e}); {fix}", ValueError
    raise (error or kind)(message)


def write_json(path: str, values, indent: int | None = None) -> None:
    """Writes `values` to `path` through a temporary file renamed over it: a reader (or a rerun after a kill)
    sees the old file or the new one, never half of one."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(values, f, indent=indent)
    os.replace(tmp, path)
