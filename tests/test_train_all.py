"""python -m handfuse train-all: the plan of notebooks 01-04 and 06, trained as independent jobs, stage by stage
through submitit (its local executor here; Slurm on a cluster), and found finished the second time."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from handfuse import finetune, grid
from handfuse.cache import get_cache
from handfuse import train_all as ta
from handfuse.__main__ import main
from handfuse.config import get_preset
from handfuse.fpha import FPHA
from handfuse.paths import REPO, ensure_synthetic
from handfuse.plan import NOTEBOOKS, NotebookRuns, notebook_defaults, plan
from handfuse.runs import finished
from handfuse.standalone import localiser_run

P = get_preset("smoke")


def test_the_plan_covers_the_notebooks_that_train_with_their_own_parameters():
    runs = plan(P)
    assert tuple(runs) == NOTEBOOKS
    # 3 HPEs, 4 HARs, 3 articulation readers and the localiser, as 01 asks, and the FiLM HPE and its oracle
    # of each later seed (02-04's, trained beside the refiner)
    assert len(runs["01"].pretrain) == 11 + 2 * (notebook_defaults("01")["seeds"] - 1) and not runs["01"].specs
    later = {(kw["seed"], kw.get("feed", "w_eq")) for kind, kw in runs["01"].pretrain if kind == "hpe" and kw["seed"] > 0}
    assert later == {(s, feed) for s in range(1, notebook_defaults("01")["seeds"]) for feed in ("w_eq", "true")}
    assert len(plan(P, seeds=1, notebooks=("01",))["01"].pretrain) == 11
    assert sum(bool(kw.get("articulation")) for _, kw in runs["01"].pretrain) == 3
    assert [kind for kind, _ in runs["01"].pretrain].count("localiser") == 1
    for nb, r in runs.items():
        source = "".join("".join(c["source"]) for c in
                         json.loads(next((REPO / "notebooks").glob(f"{nb}_*.ipynb")).read_text())["cells"])
        seeds = notebook_defaults(nb).get("seeds", 1)
        for key, spec in r.specs.items():
            assert key.startswith(f"{nb}:") and spec["trained"]
            assert f'"{spec["method"]}"' in source, (key, "a method the notebook never runs")
            assert len(spec["seeds"]) in (1, seeds)
            assert spec["film"] == P.film  # the notebooks' film=None: the preset's
    assert {k.split(":")[1] for k in runs["02"].specs} == {"trained", "pose_only"}
    assert {k.split(":")[1] for k in runs["04"].specs} == {"baseline", "baseline_att", "ensemble", "ensemble_att",
                                                            "feedback", "noisy_feedback"}
    assert plan(P, seeds=1, seed=4, notebooks=("02",))["02"].specs["02:trained"]["seeds"] == [4]
    # 06: every pair of its models, each of its methods (the DeepPrior++ + LSTM ones are 02's and 03's runs)
    p06 = notebook_defaults("06")
    pairs = {(s["hpe_model"], s["har_model"], s["method"]) for s in runs["06"].specs.values()}
    assert pairs == {(h, a, m) for h in p06["hpe_models"] for a in p06["har_models"] for m in p06["methods"]}
    assert len(pairs) == len(runs["06"].specs) > 4
    assert {(s["hpe_model"], s["har_model"]) for s in runs["06"].specs.values()} > {("deepprior", "lstm")}
    assert next(s for s in runs["06"].specs.values() if s["method"] == "feedback")["p_eq"] == \
        next(s for s in runs["03"].specs.values() if s["method"] == "feedback" and len(s["seeds"]) > 1)["p_eq"]


def test_stages_follow_the_needs():
    assert ta.stages([[], [], [0, 1], [2], []]) == [0, 0, 1, 2, 0]


def test_train_all_through_submitit_trains_once(tmp_path, monkeypatch):
    """One fine-tuning and the two pre-trainings it needs, as submitit jobs on this machine: every run
    lands on disk, and a second call finds them finished and submits nothing."""
    monkeypatch.setenv("HANDFUSE_RUNS", str(tmp_path / "runs"))
    spec = plan(P, seeds=1, notebooks=("02",))["02"].specs["02:trained"]  # 02's trained baseline, seed 0
    tiny = {"02": NotebookRuns([], {"02:trained": spec})}
    logs = tmp_path / "logs"
    done = ta.train_all("smoke", "slurm", runs=tiny, cluster="local", logs=logs, progress=False)
    assert len(done) == 4 and done[-1].startswith("fusion run") and all(d.startswith("pre-training") for d in done[:3])
    assert done[0].startswith("pre-training localiser")  # the depth-centred test crops' localiser, a job of its own
    models = tmp_path / "runs" / P.name / "models"
    folders = sorted(p.name.split("-")[0] for p in models.iterdir() if finished(p))
    assert folders == ["fuse", "har", "hpe", "localise"]
    jobs = sorted(p.name for p in logs.iterdir() if p.name.isdigit())  # a folder per job, named by its id
    assert len(jobs) == 4  # one submitit job each
    assert ta.train_all("smoke", "slurm", runs=tiny, cluster="local", logs=logs, progress=False) == []
    assert sorted(p.name for p in logs.iterdir() if p.name.isdigit()) == jobs  # nothing submitted the second time

    # the notebook's own call (02_baseline's cell, its default options) now loads the run: nothing trains here
    def no_training_here(*args, **kwargs):
        raise AssertionError("the notebook's run was trained again")

    monkeypatch.setattr(finetune.FusionTask, "batches", no_training_here)
    monkeypatch.setenv("HANDFUSE_WORKERS", "1")
    fpha = FPHA(ensure_synthetic("smoke"))
    options = dict(attention=False, w_nll=0.002, w_pose=0.998, freeze_norm=True)
    records = grid.run_many({"trained": {"method": "baseline"}}, fpha, P, [0], finetune.test_sets(fpha, P, progress=False),
                            progress=False, film=P.film, **options)
    assert records["trained"][0].history


def test_every_fine_tuning_waits_for_the_localiser_of_the_depth_centred_crops(tmp_path, monkeypatch):
    """Each fine-tuning is scored on the depth-centred test crops: it waits for their localiser, which goes
    first, once (01 asks for the same run), so that no worker trains a localiser of its own beside it."""
    monkeypatch.setenv("HANDFUSE_RUNS", str(tmp_path / "runs"))
    fpha = FPHA(ensure_synthetic("smoke"))
    cache = get_cache(fpha, P.preprocess, progress=False)
    depth = str(localiser_run(fpha, P, seed=0)[0])
    for notebooks in (("01", "02"), ("02",)):
        tasks, after = ta.jobs_of(plan(P, seeds=2, notebooks=notebooks), fpha, P, "cpu", cache)
        runs = [t["pretrain"]["run"] for t in tasks if "pretrain" in t]
        assert runs[0] == depth and runs.count(depth) == 1 and len(set(runs)) == len(runs)
        fine = [i for i, t in enumerate(tasks) if "run" in t]
        assert len(fine) == 4 and all(0 in after[i] for i in fine)  # 02's trained and pose-only runs, 2 seeds
        assert not any(0 in after[i] for i, t in enumerate(tasks) if "pretrain" in t)
    assert ta.jobs_of(plan(P, seeds=1, notebooks=("01",)), fpha, P, "cpu", cache)[1] == [[]] * 11  # no fine-tuning


def test_a_failed_job_names_its_run_and_its_log(tmp_path):
    task = {"pretrain": {"root": str(tmp_path / "gone"), "intrinsics": None, "preset": P, "device": "cpu",
                         "kind": "hpe", "kwargs": {"film": "none", "seed": 0}, "run": str(tmp_path / "run")}}
    with pytest.raises(RuntimeError, match=r"pre-training hpe \{'film': 'none', 'seed': 0\}: failed as local job .*"
                                           r"its log: (\S+)") as e:
        ta._submit_in_stages([task], [[]], tmp_path / "logs", "cpu", {}, "local")
    log = Path(re.search(r"its log: (\S+)", str(e.value))[1])
    assert log.is_file() and "gone" in log.read_text()


@pytest.mark.parametrize("argv, named", [
    (["--slurm-partition", "gpu"], "--slurm-partition"),
    (["--executor", "slurm", "--slurm-time", "0"], "--slurm-time"),
    (["--executor", "slurm", "--slurm-gpus-per-node", "-1"], "--slurm-gpus-per-node"),
    (["--notebooks", "07"], "--notebooks"),
    (["--seeds", "0"], "--seeds"),
    (["--device", "gpu"], "--device"),
])
def test_bad_train_all_options_are_refused_by_name(argv, named, capsys):
    assert main(["train-all", "--preset", "smoke", *argv]) == 2
    assert named in capsys.readouterr().err
