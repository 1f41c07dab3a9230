"""Every method fts_dist marks ``@override`` still overrides something on the installed Lightning and torch.

mypy (``explicit-override``) makes every override carry the mark; this test makes the mark mean something at run
time: when Lightning renames a private method we override (``ModelCheckpoint._save_topk_checkpoint`` ...), our
override would silently stop being called, and this test fails instead.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import fts_dist

OPTIONAL = ("fts_dist.demo",)  # needs the demo extra's packages only when run, not when imported


def fts_dist_classes() -> list[type]:
    classes = []
    for info in pkgutil.walk_packages(fts_dist.__path__, "fts_dist."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        classes += [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == info.name]
    return classes


def marked_overrides(cls: type) -> list[str]:
    names = []
    for name, attr in vars(cls).items():
        function = attr.fget if isinstance(attr, property) else attr
        if getattr(function, "__override__", False):
            names.append(name)
    return names


def test_every_marked_override_overrides_a_base_method() -> None:
    missing = [
        f"{cls.__module__}.{cls.__qualname__}.{name}"
        for cls in fts_dist_classes()
        for name in marked_overrides(cls)
        if not any(hasattr(base, name) for base in cls.__mro__[1:])
    ]
    assert not missing, f"@override methods whose base method is gone: {missing}"


def test_the_private_lightning_methods_we_override_are_marked() -> None:
    from fts_dist.callbacks import FTSCheckpoint, FTSEarlyStopping

    private = {
        (cls.__name__, name)
        for cls in fts_dist_classes()
        for name in vars(cls)
        if name.startswith("_") and not name.startswith("__") and any(hasattr(b, name) for b in cls.__mro__[1:])
    }
    assert {("FTSCheckpoint", "_save_topk_checkpoint"), ("FTSCheckpoint", "_remove_checkpoint")} <= private
    assert ("FTSEarlyStopping", "_evaluate_stopping_criteria") in private
    for cls_name, name in private:
        cls = {"FTSCheckpoint": FTSCheckpoint, "FTSEarlyStopping": FTSEarlyStopping}.get(cls_name)
        if cls is not None:
            assert name in marked_overrides(cls), f"{cls_name}.{name} overrides Lightning without @override"
