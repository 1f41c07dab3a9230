"""Reading and writing schedule files in the original project's YAML format."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from typing_extensions import override

from fts_dist.errors import FTSConfigError
from fts_dist.schedule.model import Schedule


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a mapping key given twice (YAML would silently keep the last one)."""

    @override
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise FTSConfigError(
                    f"Key {key!r} appears twice (line {key_node.start_mark.line + 1}); keep one.", key=str(key)
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def schedule_file_name(module_class_name: str) -> str:
    """The file name the original project gives a module's schedule inside ``Trainer.log_dir``."""
    return f"{module_class_name}_ft_schedule.yaml"


def load_schedule_file(path: str | os.PathLike[str]) -> Any:
    """Read a schedule YAML file into plain data (structure is checked by :meth:`Schedule.from_dict`).

    Raises:
        FTSConfigError: the file is missing, unreadable, not YAML, or repeats a key; the message names the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise FTSConfigError(
            f"Cannot read fine-tuning schedule file '{path}': {err.strerror or err}. Check the `ft_schedule` path."
        ) from err
    except UnicodeDecodeError as err:
        raise FTSConfigError(
            f"Fine-tuning schedule file '{path}' is not UTF-8 text (byte {err.start}): is it the schedule YAML?"
        ) from err
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except FTSConfigError as err:
        raise FTSConfigError(f"Fine-tuning schedule file '{path}': {err}", key=err.key) from err
    except yaml.YAMLError as err:
        raise FTSConfigError(f"Fine-tuning schedule file '{path}' is not valid YAML: {err}") from err


def dump_schedule(schedule: Schedule, path: str | os.PathLike[str]) -> Path:
    """Write ``schedule`` as YAML, atomically (a reader never sees half a file), and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            yaml.safe_dump(schedule.to_dict(), out, sort_keys=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
