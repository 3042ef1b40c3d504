"""Command line of planx_core: `python -m planx_core info` and `python -m planx_core inspect FILE`.

`info` lists the DiT presets and the attention backends this machine can use. `inspect` reads a
checkpoint's header and shapes (safetensors only; nothing is unpickled) and says what it is:
layout, the preset it matches, storage dtypes and parameter count.
"""
from __future__ import annotations

import argparse
import collections
import math
import sys

from .attention import available_backends
from .checkpoint import CheckpointError, describe_shapes, detect_layout, read_safetensors, to_official
from .configs import PRESETS


def cmd_info(_args) -> int:
    print("DiT presets:")
    for name, cfg in PRESETS.items():
        print(f"  {name:<16} dim {cfg.dim:>5}  layers {cfg.num_layers:>2}  heads {cfg.num_heads:>2}  "
              f"ffn {cfg.ffn_dim:>5}  channels {cfg.in_dim}")
    print(f"attention backends importable here: {', '.join(available_backends())}")
    return 0


def cmd_inspect(args) -> int:
    try:
        sd = read_safetensors(args.path)
        layout = detect_layout(sd.keys(), args.path)
        official = to_official(sd, args.path)
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    dtypes = collections.Counter(str(t.dtype).replace("torch.", "") for t in official.values())
    params = sum(math.prod(t.shape) for t in official.values())
    print(f"file:       {args.path}")
    print(f"layout:     {layout}")
    print(f"tensors:    {len(official)}, {params / 1e9:.3f} B parameters")
    print(f"dtypes:     {', '.join(f'{d} x{n}' for d, n in dtypes.most_common())}")
    print(f"shapes:     {describe_shapes(official)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m planx_core", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="presets and attention backends").set_defaults(fn=cmd_info)
    inspect = sub.add_parser("inspect", help="what a DiT checkpoint file is")
    inspect.add_argument("path", help="a .safetensors file, a folder of shards or an index json")
    inspect.set_defaults(fn=cmd_inspect)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
