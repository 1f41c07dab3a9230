"""Import and build a user's LightningModule from ``package.module:Class`` and JSON init arguments."""

from __future__ import annotations

import importlib
import json
from typing import Any

from fts_dist.errors import FTSConfigError


def _load_object(spec: str) -> Any:
    """``package.module:Name`` (or ``package.module.Name``) -> the object."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise FTSConfigError(f"Give the model as package.module:Class, got {spec!r}.", key="model")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise FTSConfigError(f"Cannot import {module_name!r} for {spec!r}: {err}", key="model") from err
    try:
        return getattr(module, attr)
    except AttributeError as err:
        raise FTSConfigError(f"Module {module_name!r} has no {attr!r}.", key="model") from err


def _parse_init_args(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        args = json.loads(text)
    except json.JSONDecodeError as err:
        message = f"--init-args must be a JSON object, e.g. '{{\"hidden\": 64}}': {err}"
        raise FTSConfigError(message, key="init_args") from err
    if not isinstance(args, dict):
        raise FTSConfigError(f"--init-args must be a JSON object, got {text!r}.", key="init_args")
    return args


def build_model(spec: str, init_args: str | None = None) -> Any:
    cls = _load_object(spec)
    try:
        return cls(**_parse_init_args(init_args))
    except TypeError as err:
        raise FTSConfigError(f"Cannot build {spec} with {init_args or 'no arguments'}: {err}", key="init_args") from err
