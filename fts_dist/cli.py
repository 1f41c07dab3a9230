"""The ``fts-dist`` command line."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from fts_dist import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fts-dist", description="Distributed-first scheduled fine-tuning for PyTorch Lightning."
    )
    parser.add_argument("--version", action="version", version=f"fts-dist {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser("demo", help="run the built-in fine-tuning example on CPU")
    demo.add_argument("--max-epochs", type=int, default=8, help="epochs in all (default: 8)")
    demo.add_argument("--root-dir", default=None, help="where logs and checkpoints go (default: a temp dir)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fts-dist`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        logging.getLogger("pytorch_lightning").setLevel(logging.INFO)
        from fts_dist.examples.toy import run_toy_example

        metrics = run_toy_example(max_epochs=args.max_epochs, root_dir=args.root_dir)
        print(f"final val_loss={metrics['val_loss']:.4f} val_acc={metrics['val_acc']:.3f}")
        return 0
    parser.print_help()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
