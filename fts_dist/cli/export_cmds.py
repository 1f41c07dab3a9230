"""``fts-dist export`` and ``fts-dist ckpt inspect``: from a checkpoint of any strategy to weights, or a summary."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fts_dist.errors import ExportError


def add_export_parsers(commands: Any) -> None:
    export = commands.add_parser(
        "export",
        help="write a checkpoint's model weights (a file, DCP or DeepSpeed directory) as safetensors or torch",
    )
    export.add_argument("checkpoint", help="the checkpoint: a .ckpt file, or a sharded or DeepSpeed directory")
    export.add_argument(
        "out", help="a directory of shards (with an index when several), or one file ending in .safetensors"
    )
    export.add_argument(
        "--format",
        choices=["safetensors", "hf", "torch"],
        default="safetensors",
        help="hf: a directory transformers' from_pretrained loads (needs --hf-config)",
    )
    export.add_argument("--hf-config", help="with --format hf: the model's config.json, or a directory holding it")
    export.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="cast floating tensors")
    export.add_argument("--max-shard-size", default="5GB", help="largest shard, e.g. 5GB or 512MiB (default 5GB)")
    export.add_argument("--strip-prefix", help="remove this prefix from the names that have it, e.g. model.")
    ckpt = commands.add_parser("ckpt", help="look into a checkpoint")
    actions = ckpt.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect", help="kind, strategy, world size, epoch and step, phase, trainable set, groups, size"
    )
    inspect.add_argument("checkpoint")


def run_export_command(args: argparse.Namespace) -> int:
    from fts_dist.export import export_checkpoint, inspect_checkpoint

    try:
        if args.command == "ckpt":
            print(inspect_checkpoint(args.checkpoint).describe())
            return 0
        done = export_checkpoint(
            args.checkpoint,
            args.out,
            format=args.format,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            strip_prefix=args.strip_prefix,
            hf_config=args.hf_config,
        )
    except (ExportError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    unchecked = " (the checkpoint recorded no names: coverage not checked)" if done.unchecked else ""
    print(
        f"wrote {done.tensors} tensors, {done.bytes} bytes, in {len(done.files)} file(s) under "
        f"{done.files[0].parent}; largest shard {done.largest_shard_bytes} bytes{unchecked}"
    )
    return 0
