"""Command line: ``python -m handfuse {synth,reproduce} ...``"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import PRESETS, get_preset
from .errors import ConfigError, DataError


def _synth(args) -> None:
    from .synth import generate

    cfg = get_preset(args.preset).synth
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    generate(args.out, cfg, workers=args.workers)


def _reproduce(args) -> None:
    from .reproduce import reproduce

    reproduce(preset=args.preset, out=Path(args.out), data_root=args.data_root, seed=args.seed, device=args.device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handfuse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synth", help="write the synthetic FPHA-format benchmark")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="processes (default: min(4, cores))")
    p.set_defaults(func=_synth)
    p = sub.add_parser("reproduce", help="run the workbook headless with papermill")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--out", default=None, help="output folder (default runs/PRESET)")
    p.add_argument("--data-root", default=None, help="an FPHA root; default: the synthetic benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (bf16 autocast)")
    p.set_defaults(func=_reproduce)
    args = parser.parse_args(argv)
    if getattr(args, "out", "") is None:
        args.out = f"runs/{args.preset}"
    try:
        args.func(args)
    except (ConfigError, DataError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a failing notebook: already names the notebook and the cell
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
