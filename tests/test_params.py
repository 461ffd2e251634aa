"""Parameter validation (issue 8): every option of ``python -m handfuse`` is refused, naming the
parameter and what is allowed, before any work starts.

``main([...])`` runs in-process with every first step of real work replaced by a tripwire
(data generation, the process group, crop caching, notebook execution): a refusal must
come back as exit status 2 with its message, never as a tripwire.  The controls show
that valid options do reach the tripwire, so the tripwires are on the real path.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import handfuse.cache
import handfuse.distributed
import handfuse.paths
import handfuse.reproduce
import handfuse.synth
from conftest import make_tiny_fpha
from handfuse.__main__ import main
from handfuse.fpha import SPLIT_FILE


class WorkStarted(Exception):
    """Raised by a tripwire: the command got past validation into real work."""


def tripwire(name: str):
    def trip(*args, **kwargs):
        raise WorkStarted(name)
    return trip


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """No test here generates data, caches crops, trains or runs a notebook; and none leaves
    HANDFUSE_RUNS changed (``train --runs`` sets it)."""
    import papermill

    monkeypatch.setattr(handfuse.synth, "generate", tripwire("synth.generate"))
    monkeypatch.setattr(handfuse.paths, "ensure_synthetic", tripwire("paths.ensure_synthetic"))
    monkeypatch.setattr(handfuse.reproduce, "ensure_synthetic", tripwire("reproduce.ensure_synthetic"))
    monkeypatch.setattr(handfuse.distributed, "setup", tripwire("distributed.setup"))
    monkeypatch.setattr(handfuse.cache, "get_cache", tripwire("cache.get_cache"))
    monkeypatch.setattr(papermill, "execute_notebook", tripwire("papermill.execute_notebook"))
    monkeypatch.delenv("HANDFUSE_RUNS", raising=False)


@pytest.fixture(autouse=True)
def no_cuda(monkeypatch):
    """As on the project's machines: no CUDA (whatever this machine has)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A valid FPHA-shaped root (conftest's tiny tree)."""
    return make_tiny_fpha(tmp_path_factory.mktemp("tiny") / "fpha")


def argv(args: list[str], tiny: Path, tmp: Path) -> list[str]:
    """Fill in {tiny} (a valid root), {tmp} (a fresh folder) and {out} (a path that does not exist)."""
    return [a.format(tiny=tiny, tmp=tmp, out=tmp / "out") for a in args]


# ----------------------------------------------------------------------------- refused by handfuse

# (command line, the parameter named, a piece of what is allowed)
REFUSED = [
    # methods, devices
    (["train", "fusion", "--method", "bogus"], "method", "one of ['baseline', 'ensemble', 'feedback', 'noisy_feedback']"),
    (["train", "hpe", "--method", "feedbak"], "method", "one of ['baseline'"),
    (["train", "hpe", "--device", "tpu"], "--device", "'cpu', 'cuda' or 'cuda:N'"),
    (["train", "har", "--device", "cuda:x"], "--device", "'cpu', 'cuda' or 'cuda:N'"),
    (["train", "hpe", "--device", "cuda"], "--device", "'cpu': CUDA is not available on this machine"),
    (["train", "fusion", "--device", "cuda:0"], "--device", "CUDA is not available"),
    (["reproduce", "--out", "{out}", "--device", "gpu"], "--device", "'cpu', 'cuda' or 'cuda:N'"),
    (["reproduce", "--out", "{out}", "--device", "cuda"], "--device", "CUDA is not available"),
    (["train", "hpe", "--film", "everywhere"], "--film", "one of ('none', 'blocks', 'fc', 'both')"),
    # probabilities and mixing weights
    (["train", "fusion", "--set", "p_eq=1.5"], "fusion.p_eq", "a number in [0, 1]"),
    (["train", "fusion", "--set", "p_eq=-0.1"], "fusion.p_eq", "a number in [0, 1]"),
    (["train", "fusion", "--method", "ensemble", "--set", "eta=2"], "fusion.eta", "a number in [0, 1]"),
    (["train", "fusion", "--set", "eta=-1e-9"], "fusion.eta", "a number in [0, 1]"),
    (["train", "fusion", "--set", "zeta=1.01"], "fusion.zeta", "a number in [0, 1]"),
    (["train", "fusion", "--set", "eta=0.5", "--set", "zeta=-0.5"], "fusion.zeta", "a number in [0, 1]"),
    (["train", "fusion", "--set", "eta=true"], "fusion.eta", "float"),
    (["train", "fusion", "--set", "bogus=1"], "fusion.bogus", "known keys of FusionConfig"),
    (["train", "fusion", "--set", "p_eq"], "--set", "KEY=VALUE"),
    (["train", "hpe", "--set", "p_eq=0.5"], "--set", "only with 'train fusion'"),
    # sizes and counts
    (["train", "hpe", "--train", "batch_size=0"], "train.batch_size", "an integer >= 1"),
    (["train", "har", "--train", "epochs=0"], "train.epochs", "an integer >= 1"),
    (["train", "fusion", "--train", "patience=-3"], "train.patience", "an integer >= 1"),
    (["train", "hpe", "--train", "max_batches=0"], "train.max_batches", ">= 1"),
    (["train", "hpe", "--train", "lr=0"], "train.lr", "a positive learning rate"),
    (["train", "hpe", "--train", "val_fraction=1"], "train.val_fraction", "a fraction in (0, 1)"),
    (["train", "hpe", "--train", "batch_size=abc"], "train.batch_size", "a value of type int"),
    (["train", "hpe", "--train", "batch_size=2.5"], "train.batch_size", "a value of type int"),
    (["train", "hpe", "--train", "max_batches=\"4\""], "train.max_batches", "a value of type int or None"),
    (["train", "hpe", "--train", "bogus=1"], "train.bogus", "known keys of TrainConfig"),
    (["reproduce", "--out", "{out}", "--seeds", "0"], "--seeds", "an integer >= 1"),
    (["reproduce", "--out", "{out}", "--seeds", "-2"], "--seeds", "an integer >= 1"),
    (["synth", "--out", "{out}", "--workers", "0"], "--workers", "an integer >= 1"),
    (["synth", "--out", "{out}", "--seed", "-1"], "--seed", "an integer >= 0"),
    (["train", "hpe", "--seed", "-1"], "--seed", "an integer >= 0"),
    (["reproduce", "--out", "{out}", "--seed", "-5"], "--seed", "an integer >= 0"),
    (["reproduce", "--out", "{out}", "--notebooks", "00", "09"], "--notebooks", "the number of a notebook"),
    # paths
    (["train", "hpe", "--data-root", "{tmp}"], "--data-root", "an FPHA-shaped folder holding data_split_action_recognition.txt"),
    (["train", "har", "--data-root", "{tmp}/absent"], "--data-root", "an FPHA-shaped folder"),
    (["reproduce", "--out", "{out}", "--data-root", "{tmp}"], "--data-root", "an FPHA-shaped folder"),
    (["train", "hpe", "--data-root", "{tiny}", "--runs", "{tiny}/" + SPLIT_FILE], "--runs", "a folder"),
]


@pytest.mark.parametrize("args,name,allowed", REFUSED, ids=[" ".join(a) for a, _, _ in REFUSED])
def test_refused_before_any_work(args, name, allowed, tiny, tmp_path, capsys):
    code = main(argv(args, tiny, tmp_path))  # a tripwire would raise WorkStarted instead
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: parameter {name!r} = ") and err.count("\n") == 1, err
    assert allowed in err, err
    assert not (tmp_path / "out").exists()  # not even the output folder was made


def test_cuda_index_beyond_the_devices_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["train", "hpe", "--device", "cuda:1"]) == 2
    assert "parameter '--device' = 'cuda:1' is not allowed: 'cpu' or a CUDA device 'cuda:0'..'cuda:0'" in capsys.readouterr().err
    with pytest.raises(WorkStarted):  # while cuda:0 is fine there
        main(["train", "hpe", "--device", "cuda:0"])


def test_a_broken_fpha_root_names_the_file_and_line(tiny, tmp_path, capsys):
    """An FPHA-shaped root with a bad split entry: the DataError, before any caching."""
    root = Path(shutil.copytree(tiny, tmp_path / "fpha"))
    split = root / SPLIT_FILE
    split.write_text(split.read_text().replace(" 44\n", " 45\n"))
    for command in (["train", "hpe"], ["reproduce", "--out", str(tmp_path / "out")]):
        assert main(command + ["--data-root", str(root)]) == 2
        assert capsys.readouterr().err == f"error: {split}:6: label 45 is outside 0..44\n"
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- refused by argparse

# (command line, pieces of the usage error: the option and what it allows)
USAGE = [
    (["synth", "--out", "{out}", "--preset", "huge"], ["--preset", "invalid choice: 'huge'", "'cpu', 'paper', 'smoke'"]),
    (["reproduce", "--out", "{out}", "--preset", "gpu"], ["--preset", "invalid choice: 'gpu'", "'smoke'"]),
    (["train", "hpe", "--preset", "Smoke"], ["--preset", "invalid choice: 'Smoke'", "'smoke'"]),
    (["train", "pose"], ["invalid choice: 'pose'", "'hpe', 'har', 'fusion'"]),
    (["train", "hpe", "--seed", "one"], ["--seed", "invalid int value: 'one'"]),
    (["reproduce", "--out", "{out}", "--seeds", "1.5"], ["--seeds", "invalid int value: '1.5'"]),
    (["synth"], ["the following arguments are required: --out"]),
    (["check"], ["the following arguments are required: DATA_ROOT"]),
    (["evaluate"], ["invalid choice: 'evaluate'", "'check'"]),
]


@pytest.mark.parametrize("args,pieces", USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_usage_errors(args, pieces, tiny, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv(args, tiny, tmp_path))
    err = capsys.readouterr().err
    assert info.value.code == 2
    for piece in pieces:
        assert piece in err, err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- controls: valid options get through

# (command line, the tripwire it must reach)
VALID = [
    (["synth", "--preset", "smoke", "--out", "{out}", "--seed", "0", "--workers", "1"], "synth.generate"),
    (["reproduce", "--preset", "smoke", "--out", "{out}", "--seeds", "1"], "reproduce.ensure_synthetic"),
    (["reproduce", "--preset", "smoke", "--out", "{out}", "--data-root", "{tiny}"], "papermill.execute_notebook"),
    (["train", "hpe", "--preset", "smoke", "--film", "both", "--train", "batch_size=1", "lr=1", "max_batches=null"],
     "distributed.setup"),
    (["train", "fusion", "--preset", "smoke", "--method", "ensemble", "--data-root", "{tiny}", "--runs", "{tmp}/runs",
      "--set", "p_eq=1", "eta=0", "zeta=1", "--train", "epochs=1"], "distributed.setup"),
]


@pytest.mark.parametrize("args,reached", VALID, ids=[" ".join(a) for a, _ in VALID])
def test_valid_options_reach_the_work(args, reached, tiny, tmp_path):
    with pytest.raises(WorkStarted, match=f"^{reached}$"):
        main(argv(args, tiny, tmp_path))

