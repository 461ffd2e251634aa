"""Command line: ``python -m handfuse {synth,reproduce,train} ...``

``train`` also runs data-parallel: ``torchrun --nproc_per_node N -m handfuse train ...``."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import PRESETS, from_dict, get_preset
from .errors import ConfigError, DataError
from .train import TrainConfig


def _synth(args) -> None:
    from .synth import generate

    cfg = get_preset(args.preset).synth
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    generate(args.out, cfg, workers=args.workers)


def _reproduce(args) -> None:
    from .reproduce import reproduce

    reproduce(preset=args.preset, out=Path(args.out), data_root=args.data_root, seed=args.seed, device=args.device,
              seeds=args.seeds)


def _value(text: str):
    """A --set value: a JSON literal (0.9, true, "fc") or, failing that, the bare string."""
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str] | None, flag: str, what: str) -> dict:
    """KEY=VALUE arguments -> a dict of JSON-literal values."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(flag, item, f"KEY=VALUE pairs of {what}")
        out[key] = _value(value)
    return out


def _train(args) -> None:
    import json

    from . import distributed
    from .cache import get_cache
    from .fpha import FPHA
    from .paths import ensure_synthetic

    preset = get_preset(args.preset)
    options = _pairs(args.set, "--set", "FusionConfig fields, e.g. --set p_eq=0.9")
    train = _pairs(args.train, "--train", "TrainConfig fields, e.g. --train epochs=3")
    if train:  # the preset's training settings of this model, overridden
        field = {"hpe": "train_hpe", "har": "train_har", "fusion": "train_fuse"}[args.what]
        preset = dataclasses.replace(preset, **{field: from_dict(TrainConfig, {**dataclasses.asdict(getattr(preset, field)), **train})})
    if args.what != "fusion" and options:
        raise ConfigError("--set", args.set, "only with 'train fusion' (FusionConfig fields)")
    if args.what == "fusion":  # every option is checked before any work starts
        from .methods import method_config

        cfg = method_config(args.method, attention=args.attention, **options)
    if args.runs:
        import os

        os.environ["HANDFUSE_RUNS"] = str(Path(args.runs).resolve())
    from .train import resolve_device

    resolve_device(args.device)  # refuse cuda without CUDA before any work
    rank, world = distributed.setup(args.device)
    if rank == 0:  # data and crop cache are built once, by rank 0, before the others read them
        root = Path(args.data_root) if args.data_root else ensure_synthetic(args.preset)
        fpha = FPHA(root)
        if args.what != "har":
            get_cache(fpha, preset.preprocess)
    distributed.barrier()
    root = Path(args.data_root) if args.data_root else ensure_synthetic(args.preset)
    fpha = FPHA(root)
    if args.what == "hpe":
        from .standalone import pretrain_hpe

        _, result = pretrain_hpe(fpha, preset, args.film, args.seed, args.device)
        scores = {"error_mm": result.test["error_mm"]}
    elif args.what == "har":
        from .standalone import pretrain_har

        _, result = pretrain_har(fpha, preset, args.attention, args.seed, args.device)
        scores = {"accuracy": result.test["accuracy"]}
    else:
        from . import fusion

        models = fusion.pretrained(fpha, preset, args.seed, cfg.attention, cfg.film, args.device)
        _, result = fusion.finetune(args.method, models, fpha, preset, cfg, args.seed, args.device)
        scores = {k: result.test[k] for k in ("error_mm", "accuracy", "loss")}
    if rank == 0:
        print(json.dumps({"what": args.what, "preset": args.preset, "seed": args.seed, "processes": world,
                          "train_seconds": result.seconds, "test": scores}))


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
    p.add_argument("--seeds", type=int, default=None, help="model seeds per method (default: each notebook's, 3)")
    p.set_defaults(func=_reproduce)
    p = sub.add_parser("train", help="train one model or fine-tune one fusion method (torchrun for several processes)")
    p.add_argument("what", choices=["hpe", "har", "fusion"])
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--data-root", default=None, help="an FPHA root; default: the synthetic benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (bf16 autocast; cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--film", default="none", help="hpe: FiLM placement (none, blocks, fc, both)")
    p.add_argument("--attention", action="store_true", help="har / fusion: temporal attention")
    p.add_argument("--method", default="baseline", help="fusion: a registered method name")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="fusion: FusionConfig fields, e.g. p_eq=0.9 eta=0.5")
    p.add_argument("--train", nargs="*", metavar="KEY=VALUE", help="TrainConfig overrides, e.g. epochs=3 batch_size=8")
    p.add_argument("--runs", default=None, help="runs folder (default runs/ or $HANDFUSE_RUNS)")
    p.set_defaults(func=_train)
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
