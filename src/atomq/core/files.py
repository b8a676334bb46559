"""Reading definition files (recurring jobs, workflows): YAML or JSON, by the file's suffix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_data_file(path: str | Path) -> Any:
    """The parsed content of a ``.yaml``/``.yml`` (YAML) or any other (JSON) file.

    Raises :class:`ValueError` with a message naming the file and what is wrong with it (it
    cannot be read, or is not valid YAML/JSON, with the line where JSON broke); callers turn
    it into their own error type.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        # Deferred: PyYAML loads only in processes that read a YAML file.
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
