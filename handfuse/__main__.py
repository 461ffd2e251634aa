"""Command line: ``python -m handfuse {synth,reproduce,train,train-all,check,locate,predict} ...``

``train`` also runs data-parallel: ``torchrun --nproc_per_node N -m handfuse train ...``."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import PRESETS, from_dict, get_preset
from .errors import ConfigError, DataError, check
from .train import TrainConfig


def _synth(args) -> None:
    from .reproduce import check_seed
    from .synth import generate

    if args.seed is not None:
        check_seed(args.seed)
    check(args.workers is None or args.workers >= 1, "--workers", args.workers, "an integer >= 1 (processes)")
    cfg = get_preset(args.preset).synth
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, seed=args.seed)
    generate(args.out, cfg, workers=args.workers)


def _reproduce(args) -> None:
    from .reproduce import reproduce

    reproduce(preset=args.preset, out=Path(args.out), data_root=args.data_root, seed=args.seed, device=args.device,
              seeds=args.seeds, only=args.notebooks, figures=None if args.figures is None else Path(args.figures))


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


def _check_types(cls: type, values: dict, prefix: str) -> None:
    """Refuse a KEY=VALUE whose type is not its field's (``batch_size=abc`` would otherwise fail
    deep inside training); unknown keys are left to ``from_dict``, which names them."""
    import typing

    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in hints:
            continue
        allowed = typing.get_args(hints[key]) or (hints[key],)
        allowed += (int,) if float in allowed else ()  # 1 is a fine learning rate
        names = " or ".join("None" if t is type(None) else t.__name__ for t in allowed)
        check(isinstance(value, allowed) and (bool in allowed or not isinstance(value, bool)), prefix + key, value,
              f"a value of type {names}")


def _train_config(args):
    """The preset and the fusion method's config of ``train``'s options, every option checked
    before any work starts (data generation, crop caching, training)."""
    from .methods import method_config
    from .methods.common import FusionConfig
    from .models.hpe import FILM_PLACEMENTS
    from .reproduce import check_data_root, check_device, check_seed

    preset = get_preset(args.preset)
    options = _pairs(args.set, "--set", "FusionConfig fields, e.g. --set p_eq=0.9")
    train = _pairs(args.train, "--train", "TrainConfig fields, e.g. --train epochs=3")
    if args.what != "fusion" and options:
        raise ConfigError("--set", args.set, "only with 'train fusion' (FusionConfig fields)")
    _check_types(FusionConfig, options, "fusion.")
    _check_types(TrainConfig, train, "train.")
    if train:  # the preset's training settings of this model, overridden
        field = {"hpe": "train_hpe", "har": "train_har", "fusion": "train_fuse"}[args.what]
        preset = dataclasses.replace(preset, **{field: from_dict(TrainConfig, {**dataclasses.asdict(getattr(preset, field)), **train}, prefix="train.")})
    # the method's config is used by fusion only, but --method is checked for all
    cfg = method_config(args.method, attention=args.attention,
                        **{"film": preset.film, "activation_checkpoint": preset.activation_checkpoint, **options})
    check(args.film in FILM_PLACEMENTS, "--film", args.film, f"one of {FILM_PLACEMENTS}")
    from .tasks import PRETRAIN_FEEDS

    check(args.feed in PRETRAIN_FEEDS, "--feed", args.feed, f"one of {PRETRAIN_FEEDS}")
    check(args.feed == "w_eq" or (args.what == "hpe" and args.film != "none"), "--feed", args.feed,
          "'w_eq' unless training a FiLM HPE (train hpe --film fc|blocks|both)")
    from .models.registry import HARS, HPES

    check(args.hpe_model in HPES, "--hpe-model", args.hpe_model, f"a registered pose estimator, one of {sorted(HPES)}")
    check(args.har_model in HARS, "--har-model", args.har_model, f"a registered action recogniser, one of {sorted(HARS)}")
    check_seed(args.seed)
    check_device(args.device)  # refuses cuda without CUDA
    if args.runs is not None:
        check(not Path(args.runs).exists() or Path(args.runs).is_dir(), "--runs", args.runs, "a folder (or a path to create)")
    if args.data_root is not None:
        check_data_root(args.data_root)
    return preset, cfg


def _train(args) -> None:
    import json

    from . import distributed
    from .cache import get_cache
    from .fpha import FPHA
    from .paths import ensure_synthetic

    preset, cfg = _train_config(args)  # every option is checked before any work starts
    if args.runs:
        import os

        os.environ["HANDFUSE_RUNS"] = str(Path(args.runs).resolve())
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

        _, result = pretrain_hpe(fpha, preset, args.film, args.seed, args.device, model=args.hpe_model, feed=args.feed)
        scores = {"error_mm": result.test["error_mm"]}
    elif args.what == "har":
        from .standalone import pretrain_har

        _, result = pretrain_har(fpha, preset, args.attention, args.seed, args.device, model=args.har_model)
        scores = {"accuracy": result.test["accuracy"]}
    else:
        from .finetune import finetune, pretrained

        models = pretrained(fpha, preset, args.seed, cfg.attention, cfg.film, args.device,
                            hpe_model=args.hpe_model, har_model=args.har_model, hpe_feed=cfg.hpe_feed)
        _, result = finetune(args.method, models, fpha, preset, cfg, args.seed, args.device)
        scores = {k: result.test[k] for k in ("error_mm", "accuracy", "loss")}
    if rank == 0:
        from .plots import data_source

        source = data_source(root)
        print(f"{args.what}: test scores on {source} data at {root}"
              + (" (not FPHA)" if source != "FPHA" else ""), file=sys.stderr)
        print(json.dumps({"what": args.what, "preset": args.preset, "seed": args.seed, "processes": world,
                          "data": source, "data_root": str(root), "run": result.run_dir,
                          "train_seconds": result.seconds, "test": scores}))


def _train_all(args) -> None:
    from .plan import NOTEBOOKS
    from .reproduce import check_data_root, check_device, check_seed
    from .train_all import train_all

    check(args.seeds is None or args.seeds >= 1, "--seeds", args.seeds, "an integer >= 1 (model seeds per method)")
    if args.seed is not None:
        check_seed(args.seed)
    check_device(args.device)  # refuses cuda without CUDA
    if args.data_root is not None:
        check_data_root(args.data_root)
    for n in args.notebooks or []:
        check(n in NOTEBOOKS, "--notebooks", n, f"a notebook whose runs train-all knows, one of {list(NOTEBOOKS)}")
    slurm = {"partition": args.slurm_partition, "time": args.slurm_time, "gpus_per_node": args.slurm_gpus_per_node,
             "logs": args.slurm_logs}
    for name, value in slurm.items():
        check(value is None or args.executor == "slurm", f"--slurm-{name.replace('_', '-')}", value,
              "only with --executor slurm")
    check(args.slurm_time is None or args.slurm_time >= 1, "--slurm-time", args.slurm_time, "minutes, an integer >= 1")
    check(args.slurm_gpus_per_node is None or args.slurm_gpus_per_node >= 0, "--slurm-gpus-per-node",
          args.slurm_gpus_per_node, "an integer >= 0")
    if args.executor == "slurm":
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise ConfigError("--executor", "slurm", "'local' here: submitit is not installed "
                              "(pip install -r requirements.txt)") from None
    if args.runs is not None:
        import os

        check(not Path(args.runs).exists() or Path(args.runs).is_dir(), "--runs", args.runs, "a folder (or a path to create)")
        os.environ["HANDFUSE_RUNS"] = str(Path(args.runs).resolve())
    for line in train_all(args.preset, args.executor, args.data_root, args.seeds, args.seed, args.device,
                          tuple(args.notebooks or NOTEBOOKS), slurm, args.slurm_logs, dry_run=args.dry_run):
        print(line)


def _check(args) -> int:
    """Report every problem of a data root, one per line; 1 if there are any."""
    from .fpha import check_root

    problems, sequences, frames = check_root(args.data_root, decode=args.decode)
    for problem in problems:
        print(problem)
    if problems:
        print(f"error: {len(problems)} problem(s) in {args.data_root}", file=sys.stderr)
        return 1
    print(f"ok: {sequences} sequences, {frames} frames")
    return 0


# commands whose options their own modules define: python -m handfuse COMMAND ... runs MODULE.main(...)
DELEGATED = {"locate": ("handfuse.localise", ["locate"], "the hand centre of every frame of a folder of FPHA depth "
                        "PNGs, as frame,u,v,z_mm,status (python -m handfuse locate DEPTH_DIR --out centres.csv)"),
             "predict": ("handfuse.predict", [], "apply a trained pipeline to a folder of FPHA depth PNGs: poses "
                         "(skeleton.txt), actions (CSV) and an animation (python -m handfuse predict DEPTH_DIR --out DIR)")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED:
        import importlib

        module, prefix, _ = DELEGATED[argv[0]]
        return importlib.import_module(module).main([*prefix, *argv[1:]])
    parser = argparse.ArgumentParser(prog="python -m handfuse", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module, _, text) in DELEGATED.items():
        sub.add_parser(name, help=f"{text}; options: python -m handfuse {name} --help", add_help=False)
    p = sub.add_parser("synth", help="write the synthetic FPHA-format benchmark")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="processes (default: min(4, cores))")
    p.set_defaults(func=_synth)
    p = sub.add_parser("reproduce", help="run the workbook headless with papermill")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--out", default=None, help="this run's folder: executed notebooks, results, summary, timings, run.json"
                                                " (default runs/PRESET; trained models stay in runs/PRESET/models)")
    p.add_argument("--figures", default=None, help="where the figures go (default: OUT/figures, or $HANDFUSE_FIGURES)")
    p.add_argument("--data-root", default=None, help="an FPHA root; default: the synthetic benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (bf16 autocast)")
    p.add_argument("--seeds", type=int, default=None, help="model seeds per method (default: each notebook's, 3)")
    p.add_argument("--notebooks", nargs="+", metavar="NN", default=None,
                   help="run only these numbered notebooks, e.g. --notebooks 00 01 (default: all, in order)")
    p.set_defaults(func=_reproduce)
    p = sub.add_parser("train", help="train one model or fine-tune one fusion method (torchrun for several processes)")
    p.add_argument("what", choices=["hpe", "har", "fusion"])
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--data-root", default=None, help="an FPHA root; default: the synthetic benchmark")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (bf16 autocast; cuda:LOCAL_RANK under torchrun)")
    p.add_argument("--film", default="none", help="hpe: FiLM placement (none, blocks, fc, both)")
    p.add_argument("--feed", default="w_eq", help="hpe: what a FiLM HPE is fed while pre-training (w_eq, true, mix, smooth)")
    p.add_argument("--attention", action="store_true", help="har / fusion: temporal attention")
    p.add_argument("--method", default="baseline", help="fusion: a registered method name")
    p.add_argument("--hpe-model", default="deepprior", help="hpe / fusion: a registered pose estimator (deepprior, resnet)")
    p.add_argument("--har-model", default="lstm", help="har / fusion: a registered action recogniser (lstm, transformer)")
    p.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE", help="fusion: FusionConfig fields, e.g. p_eq=0.9 eta=0.5")
    p.add_argument("--train", nargs="*", action="extend", metavar="KEY=VALUE", help="TrainConfig overrides, e.g. epochs=3 batch_size=8")
    p.add_argument("--runs", default=None, help="runs folder (default runs/ or $HANDFUSE_RUNS)")
    p.set_defaults(func=_train)
    p = sub.add_parser("train-all", help="train every run notebooks 01-04 and 06 need as independent jobs, pre-trainings "
                                         "first (local workers, or Slurm through submitit); the notebooks then load them")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--executor", default="local", choices=["local", "slurm"],
                   help="local: worker processes (one per core on CPU, several per GPU on CUDA); slurm: one job per run")
    p.add_argument("--data-root", default=None, help="an FPHA root; default: the synthetic benchmark")
    p.add_argument("--runs", default=None, help="runs folder (default runs/ or $HANDFUSE_RUNS)")
    p.add_argument("--seed", type=int, default=None, help="the notebooks' first seed (default: theirs, 0)")
    p.add_argument("--seeds", type=int, default=None, help="model seeds per method (default: the notebooks', 3)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda (every visible GPU)")
    p.add_argument("--notebooks", nargs="+", metavar="NN", default=None,
                   help="only these notebooks' runs, e.g. --notebooks 01 02 (default: 01 02 03 04 06)")
    p.add_argument("--dry-run", action="store_true", help="list the jobs still to run, and run none")
    p.add_argument("--slurm-partition", default=None, help="slurm: the partition")
    p.add_argument("--slurm-time", type=int, default=None, help="slurm: each job's time limit in minutes (default 240)")
    p.add_argument("--slurm-gpus-per-node", type=int, default=None, help="slurm: GPUs per job (default: 1 on cuda, 0 on cpu)")
    p.add_argument("--slurm-logs", default=None, help="slurm: the jobs' log folder (default RUNS/PRESET/train-all-logs)")
    p.set_defaults(func=_train_all)
    p = sub.add_parser("check", help="validate a data root, reporting every problem in one pass")
    p.add_argument("data_root", metavar="DATA_ROOT", help="an FPHA-shaped folder")
    p.add_argument("--decode", action="store_true", help="fully decode every PNG (default: check headers only)")
    p.set_defaults(func=_check)
    args = parser.parse_args(argv)
    if getattr(args, "out", "") is None:
        args.out = f"runs/{args.preset}"
    try:
        return args.func(args) or 0
    except (ConfigError, DataError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # a failing notebook: already names the notebook and the cell
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
