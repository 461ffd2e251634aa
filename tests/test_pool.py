"""Runs side by side (handfuse.pool, handfuse.grid.run_many): the same records as one after the other,
one thread per run wherever it runs, and failures that name their run."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from handfuse import finetune, grid, pool, standalone
from handfuse.datasets import SequenceDataset
from handfuse.cache import get_cache
from handfuse.config import get_preset
from handfuse.fpha import FPHA
from handfuse.paths import ensure_synthetic

from conftest import copy_smoke_localiser

P = get_preset("smoke")


def _threads(job):
    return job, torch.get_num_threads()


def _fails_on_three(job):
    if job == 3:
        raise ValueError("job three is bad")
    return job * 10


def test_one_thread_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pool.one_thread("cpu"):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(KeyError), pool.one_thread("cpu"):
            raise KeyError("restored even on error")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_workers_reads_handfuse_workers(monkeypatch):
    monkeypatch.setenv("HANDFUSE_WORKERS", "3")
    assert pool.workers() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("HANDFUSE_WORKERS", bad)
        with pytest.raises(ValueError, match="HANDFUSE_WORKERS"):
            pool.workers()


def test_jobs_run_in_worker_processes_on_one_thread_in_order(monkeypatch):
    monkeypatch.setenv("HANDFUSE_WORKERS", "2")
    out = pool.map_jobs(_threads, list(range(5)), progress=False)
    assert out == [(i, 1) for i in range(5)]


def test_a_failing_job_is_named_and_the_pool_recovers(monkeypatch):
    monkeypatch.setenv("HANDFUSE_WORKERS", "2")
    with pytest.raises(RuntimeError, match="job #3: failed in a worker process.*job three is bad"):
        pool.map_jobs(_fails_on_three, list(range(6)), describe=lambda j: f"job #{j}", progress=False)
    assert pool.map_jobs(_fails_on_three, [1, 2], progress=False) == [10, 20]


DEADLINE_S = 120.0  # how long a job waits for what the test arranges; reached only when the code is wrong


def _wait_for(path: Path, deadline_s: float = DEADLINE_S) -> bool:
    """Poll until ``path`` exists; False if the deadline passes first."""
    import time
    deadline = time.monotonic() + deadline_s
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _ordered(job):
    """Marks ``started-N`` and, at its end, ``ended-N`` in ``job["dir"]``; returns the marks there when it
    started, and (if ``job["until"]`` names a job) whether that job started while this one ran."""
    folder, n = Path(job["dir"]), job["n"]
    seen = sorted(p.name for p in folder.iterdir())
    (folder / f"started-{n}").touch()
    waited = _wait_for(folder / f"started-{job['until']}") if "until" in job else None
    (folder / f"ended-{n}").touch()
    return seen, waited


def test_a_job_waits_for_the_jobs_it_needs(monkeypatch, tmp_path):
    monkeypatch.setenv("HANDFUSE_WORKERS", "2")
    # job 2 needs job 0; job 0 runs until job 3 has started, so job 3 (free) must not wait for job 0
    jobs = [{"dir": str(tmp_path), "n": 0, "until": 3}] + [{"dir": str(tmp_path), "n": n} for n in (1, 2, 3)]
    out = pool.map_jobs(_ordered, jobs, progress=False, after=[[], [], [0], []])
    assert out[0][1] is True, "a free job waited for a job it does not need"
    assert "ended-0" in out[2][0]  # started after what it needs had ended
    with pytest.raises(ValueError, match=r"job 0 \(.*\) must come after the jobs it needs: \[1\]"):
        pool.map_jobs(_ordered, jobs[:2], progress=False, after=[[1], []])


def _pid_once_all_started(job):
    """Marks ``job["dir"]/PID`` and waits until ``job["all"]`` jobs have marked theirs (each on its own
    worker, at the same time), then waits ``job["hold_s"]`` more; returns the pid."""
    import time
    folder = Path(job["dir"])
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + DEADLINE_S
    while len(list(folder.iterdir())) < job["all"] and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(job.get("hold_s", 0))
    return os.getpid()


def _sigint_pending(pid: int) -> bool:
    """Whether SIGINT is still pending for process ``pid`` (not yet delivered), from Linux ``/proc``."""
    import signal
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    bit = 1 << (signal.SIGINT - 1)
    return any(int(fields[k], 16) & bit for k in ("SigPnd", "ShdPnd"))


def _until(condition, what: str, deadline_s: float = DEADLINE_S) -> None:
    import time
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {deadline_s:.0f} s"
        time.sleep(0.01)


def test_an_interrupt_stops_jobs_and_leaves_idle_workers_waiting(monkeypatch, tmp_path):
    """Jupyter sends SIGINT to a kernel's whole process group when a user interrupts a cell and when
    it shuts the kernel down: idle workers must survive it quietly, running jobs must stop."""
    import signal
    import threading

    monkeypatch.setenv("HANDFUSE_WORKERS", "2")
    pool.shutdown()
    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    for folder in (first, second, third):
        folder.mkdir()
    def jobs(folder: Path, **kw) -> list[dict]:
        return [{"dir": str(folder), "all": 2, **kw}] * 2

    pids = set(pool.map_jobs(_pid_once_all_started, jobs(first), progress=False))
    assert len(pids) == 2  # both workers took a job, at the same time
    for pid in pids:  # both idle now
        os.kill(pid, signal.SIGINT)
    for pid in pids:  # delivered, so handled while idle, before the next jobs arrive
        _until(lambda: not _sigint_pending(pid), f"SIGINT delivered to worker {pid}")
    assert set(pool.map_jobs(_pid_once_all_started, jobs(second), progress=False)) == pids  # the same workers, pool intact

    def interrupt_once_both_run():  # both jobs have marked their start: both workers are busy
        _until(lambda: len(list(third.iterdir())) == 2, "both long jobs started")
        for pid in pids:
            os.kill(pid, signal.SIGINT)

    timer = threading.Thread(target=interrupt_once_both_run)
    timer.start()
    # a job that is not stopped runs its DEADLINE_S wait and then returns, and the call does not raise
    with pytest.raises(RuntimeError, match=r"long job: failed in a worker process \(KeyboardInterrupt"):
        pool.map_jobs(_pid_once_all_started, jobs(third, hold_s=DEADLINE_S), describe=lambda j: "long job",
                      progress=False)
    timer.join()
    assert pool.map_jobs(_threads, [7], progress=False) == [(7, 1)]  # and the next call has a fresh pool


def test_one_worker_runs_in_this_process(monkeypatch):
    monkeypatch.setenv("HANDFUSE_WORKERS", "1")
    seen = []
    assert pool.map_jobs(lambda j: seen.append(j) or -j, [1, 2], progress=False) == [-1, -2]  # a lambda: never pickled
    assert seen == [1, 2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, smoke_localiser):
    """(fpha, cache, test sets, a models folder holding the pre-trained models of seeds 0 and 1 and the
    localiser of the depth-centred test set, which each test copies rather than trains again)."""
    fpha = FPHA(ensure_synthetic("smoke"))
    cache = get_cache(fpha, P.preprocess, progress=False)
    runs = tmp_path_factory.mktemp("pretrained")
    copy_smoke_localiser(smoke_localiser, runs)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("HANDFUSE_RUNS", str(runs))
        for seed in (0, 1):
            finetune.pretrained(fpha, P, seed, False, P.film, cache=cache, progress=False)
        tests = finetune.test_sets(fpha, P, cache, progress=False)
        tests["depth"]  # built now, by the localiser in this folder
    return fpha, cache, tests, runs / P.name / "models"


def _runs_with_pretrained(smoke, folder: Path, monkeypatch) -> Path:
    """``folder`` as HANDFUSE_RUNS, holding copies of the module's pre-trained models; returns its models folder."""
    models = folder / P.name / "models"
    shutil.copytree(smoke[3], models)
    monkeypatch.setenv("HANDFUSE_RUNS", str(folder))
    return models


SPECS = {"chain": {"method": "baseline", "trained": False}, "tuned": {"method": "feedback", "p_eq": 0.5}}


def _scores(records: dict) -> dict:
    return {k: [(r.seed, r.test, [h["train_loss"] for h in r.history], r.frame_error_mm) for r in v]
            for k, v in records.items()}


def test_side_by_side_gives_the_records_of_one_after_the_other(smoke, tmp_path, monkeypatch):
    fpha, cache, tests, _ = smoke
    models = _runs_with_pretrained(smoke, tmp_path / "pooled", monkeypatch)
    monkeypatch.setenv("HANDFUSE_WORKERS", "2")
    pooled = grid.run_many(SPECS, fpha, P, [0, 1], tests, cache=cache, progress=False)
    tuned = sorted(models.glob("fuse-feedback-*"))
    assert len(tuned) == 2 and all(json.loads((d / "result.json").read_text())["config"]["cpu_threads"] == 1 for d in tuned)

    # the same runs one after the other, here, from the same pre-trained models
    _runs_with_pretrained(smoke, tmp_path / "here", monkeypatch)
    monkeypatch.setenv("HANDFUSE_WORKERS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the calling process's own thread count must not matter
    try:
        here = grid.run_many(SPECS, fpha, P, [0, 1], tests, cache=cache, progress=False)
    finally:
        torch.set_num_threads(before)
    assert _scores(here) == _scores(pooled)
    assert [r.seed for r in pooled["tuned"]] == [0, 1] and all(r.history for r in pooled["tuned"])


def test_side_by_side_runs_are_trained_by_the_workers_and_loaded_here(smoke, tmp_path, monkeypatch):
    fpha, cache, tests, _ = smoke
    _runs_with_pretrained(smoke, tmp_path, monkeypatch)
    monkeypatch.setenv("HANDFUSE_WORKERS", "2")

    def no_training_here(*args, **kwargs):
        raise AssertionError("a side-by-side run was trained in the calling process")

    monkeypatch.setattr(finetune.FusionTask, "batches", no_training_here)  # the workers' copy is untouched
    records = grid.run_seeds("baseline", fpha, P, [0, 1], tests, cache=cache, progress=False, keep_model=True)
    assert [r.seed for r in records] == [0, 1] and all(r.history and r.model is not None for r in records)
    # one after the other, the same call trains here
    monkeypatch.setenv("HANDFUSE_WORKERS", "1")
    with pytest.raises(AssertionError, match="trained in the calling process"):
        grid.run_seeds("baseline", fpha, P, [0, 1], tests, cache=cache, progress=False, w_nll=0.5)


def test_test_sets_a_worker_cannot_rebuild_run_here(smoke, tmp_path, monkeypatch):
    fpha, cache, tests, _ = smoke
    _runs_with_pretrained(smoke, tmp_path, monkeypatch)
    monkeypatch.setenv("HANDFUSE_WORKERS", "2")
    fewer = {"gt": SequenceDataset(cache, fpha.test[:-1])}
    assert not grid.standard_tests(fpha, P, cache, fewer)
    assert grid.standard_tests(fpha, P, cache, {"gt": tests["gt"]})
    calls = []
    monkeypatch.setattr(grid, "map_jobs", lambda *a, **k: calls.append(a))
    records = grid.run_many({"chain": SPECS["chain"]}, fpha, P, [0, 1], fewer, cache=cache, progress=False)
    assert calls == [] and [r.seed for r in records["chain"]] == [0, 1]
    assert all(len(r.frame_error_mm["gt"]) == len(fpha.test) - 1 for r in records["chain"])


def test_a_spec_without_a_method_is_refused(smoke):
    fpha, cache, tests, _ = smoke
    with pytest.raises(ValueError, match="spec 'x' names no method"):
        grid.run_many({"x": {"trained": False}}, fpha, P, [0], tests, cache=cache, progress=False)


def test_a_failing_run_names_itself(smoke, tmp_path, monkeypatch):
    fpha, cache, tests, _ = smoke
    _runs_with_pretrained(smoke, tmp_path, monkeypatch)
    monkeypatch.setenv("HANDFUSE_WORKERS", "2")
    # an interrupted run with a corrupt checkpoint: the worker that resumes it fails, and says which run it was
    grid.run_seeds("baseline", fpha, P, [0, 1], tests, cache=cache, progress=False)
    for result in Path(tmp_path, P.name, "models").glob("fuse-baseline-*/result.json"):
        result.unlink()  # both runs interrupted: both go to the workers
    run = sorted(Path(tmp_path, P.name, "models").glob("fuse-baseline-*-seed1"))[0]
    (run / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match=r"fusion run .*'method': 'baseline'.*seed 1: failed in a worker process.*last.pt"):
        grid.run_seeds("baseline", fpha, P, [0, 1], tests, cache=cache, progress=False)
    # a corrupt finished run is loaded here, and refused naming its file
    (run / "last.pt").unlink()  # seed 1 starts again
    grid.run_seeds("baseline", fpha, P, [0, 1], tests, cache=cache, progress=False)
    (run / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"seed1/best.pt: not a handfuse checkpoint"):
        grid.run_seeds("baseline", fpha, P, [0, 1], tests, cache=cache, progress=False)


def test_two_specs_naming_one_run_train_it_once_and_spec_seeds_win(smoke, tmp_path, monkeypatch):
    fpha, cache, tests, _ = smoke
    _runs_with_pretrained(smoke, tmp_path, monkeypatch)
    monkeypatch.setenv("HANDFUSE_WORKERS", "2")
    handed = []
    real = grid.map_jobs
    monkeypatch.setattr(grid, "map_jobs", lambda fn, jobs, **k: handed.extend(jobs) or real(fn, jobs, **k))
    out = grid.run_many({"a": {"method": "baseline", "w_nll": 0.5}, "b": {"method": "baseline", "w_nll": 0.5},
                           "one": {"method": "baseline", "w_nll": 0.25, "seeds": [1]}},
                          fpha, P, [0, 1], tests, cache=cache, progress=False, keep_model=["one"])
    assert out["one"][0].model is not None and all(r.model is None for r in out["a"] + out["b"])  # live models only where asked
    assert sorted((j["run"]["spec"]["w_nll"], j["run"]["seed"]) for j in handed) == [(0.25, 1), (0.5, 0), (0.5, 1)]
    assert [r.seed for r in out["one"]] == [1] and _scores({"x": out["a"]}) == _scores({"x": out["b"]})
    handed.clear()  # finished runs are loaded, not handed over again
    again = grid.run_many({"a": {"method": "baseline", "w_nll": 0.5}}, fpha, P, [0, 1], tests, cache=cache, progress=False)
    assert handed == [] and _scores(again) == _scores({"a": out["a"]})


def test_pretrainings_go_to_the_workers_first_and_give_the_records_of_one_after_the_other(smoke, smoke_localiser, tmp_path,
                                                                                          monkeypatch):
    fpha, cache, tests, _ = smoke
    specs = {"chain": {"method": "baseline", "trained": False}, "tuned": {"method": "baseline", "w_nll": 0.5},
             "att": {"method": "baseline", "attention": True, "seeds": [1]}}
    monkeypatch.setenv("HANDFUSE_RUNS", str(tmp_path / "pooled"))  # nothing pre-trained yet but the localiser
    copy_smoke_localiser(smoke_localiser, tmp_path / "pooled")  # of the depth-centred test set (built here)
    monkeypatch.setenv("HANDFUSE_WORKERS", "2")
    handed = []
    real = grid.map_jobs
    monkeypatch.setattr(grid, "map_jobs", lambda fn, jobs, **k: handed.append((jobs, k["after"])) or real(fn, jobs, **k))

    def no_training_here(*args, **kwargs):
        raise AssertionError("a pre-training ran in the calling process")

    with monkeypatch.context() as m:
        m.setattr(standalone.HPETask, "batches", no_training_here)  # the workers' copies are untouched
        m.setattr(standalone.HARTask, "batches", no_training_here)
        pooled = grid.run_many(specs, fpha, P, [0, 1], tests, cache=cache, progress=False)
    (jobs, after), = handed
    kinds = [(j["pretrain"]["kind"], j["pretrain"]["kwargs"]["seed"], j["pretrain"]["kwargs"].get("attention"))
             for j in jobs if "pretrain" in j]
    # each pre-training once (chain and tuned share theirs), all of them ahead of the runs that start from them
    assert sorted(kinds, key=str) == sorted([("hpe", 0, None), ("har", 0, False), ("hpe", 1, None), ("har", 1, False),
                                            ("har", 1, True)], key=str)
    assert all("pretrain" in j for j in jobs[:len(kinds)]) and len(jobs) == len(kinds) + 5
    for job, needs in zip(jobs[len(kinds):], after[len(kinds):]):
        assert {jobs[i]["pretrain"]["kwargs"]["seed"] for i in needs} == {job["run"]["seed"]} and len(needs) == 2
    for run in (tmp_path / "pooled" / P.name / "models").glob("h*-seed*"):
        assert json.loads((run / "result.json").read_text())["config"]["cpu_threads"] == 1

    # everything one after the other, here, from nothing, with the calling process on 2 threads
    monkeypatch.setenv("HANDFUSE_RUNS", str(tmp_path / "here"))
    monkeypatch.setenv("HANDFUSE_WORKERS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        here = grid.run_many(specs, fpha, P, [0, 1], tests, cache=cache, progress=False)
    finally:
        torch.set_num_threads(before)
    assert _scores(here) == _scores(pooled)
    scores = ("hpe_error_mm", "hpe_film_error_mm", "har_accuracy")  # the pre-trained models', not their times
    assert ([[getattr(r.pretrained, s) for s in scores] for k in specs for r in here[k]]
            == [[getattr(r.pretrained, s) for s in scores] for k in specs for r in pooled[k]])


def test_pretrain_many_trains_side_by_side_what_pretrain_would_train_here(smoke, tmp_path, monkeypatch):
    fpha, cache, _, _ = smoke
    requests = [("hpe", {"film": "none", "seed": 2}), ("hpe", {"film": P.film, "seed": 2}),
                ("har", {"attention": True, "seed": 2})]
    monkeypatch.setenv("HANDFUSE_WORKERS", "2")
    monkeypatch.setenv("HANDFUSE_RUNS", str(tmp_path / "pooled"))
    pooled = grid.pretrain_many(fpha, P, requests, cache=cache, progress=False)
    assert len(list((tmp_path / "pooled" / P.name / "models").glob("*-seed2"))) == 3
    monkeypatch.setenv("HANDFUSE_RUNS", str(tmp_path / "here"))
    for (kind, kwargs), (model, result) in zip(requests, pooled):
        _, alone = standalone.pretrain(fpha, P, kind, kwargs, cache=cache, progress=False)
        assert result.test == alone.test and result.history[-1]["train_loss"] == alone.history[-1]["train_loss"]
        assert result.config == alone.config and model is not None


# ----------------------------------------------------------------------------- several workers per GPU


def _device_seen(job):
    """The GPU this worker was pinned to, and its pid; holds a moment so that the jobs overlap."""
    import time
    time.sleep(job)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()


def test_slots_spread_the_workers_over_the_devices():
    assert pool.slots(["0", "1"], 2) == ["0", "1", "0", "1"]
    assert pool.slots([None], 3) == [None, None, None]


def test_gpu_jobs_run_on_their_assigned_device_and_are_spread(monkeypatch):
    """Two fake GPUs, two workers each: every job runs in a worker pinned (CUDA_VISIBLE_DEVICES) to
    the device the scheduler assigned it, both devices take jobs, and no device runs more workers
    than its share."""
    monkeypatch.setattr(pool, "devices", lambda device: ["0", "1"])
    monkeypatch.setenv("HANDFUSE_WORKERS_PER_GPU", "2")
    assert pool.workers("cuda") == 4
    placed: list = []
    try:
        out = pool.map_jobs(_device_seen, [0.2] * 8, progress=False, device="cuda", placed=placed)
    finally:
        pool.shutdown()
    assert [seen for seen, _ in out] == placed  # each job ran on the device it was assigned
    assert placed[:4] == ["0", "1", "0", "1"]  # the first round fills both devices
    # which device's freed worker takes each later job depends on timing (a loaded machine skews the counts);
    # how many workers each device holds does not
    pids = {d: {pid for seen, pid in out if seen == d} for d in ("0", "1")}
    assert all(1 <= len(p) <= 2 for p in pids.values()) and not pids["0"] & pids["1"]


MEASURED = {"device": "NVIDIA H200", "preset": "paper", "runs_per_hour": {"1": 40.0, "2": 70.0, "4": 92.0, "8": 95.0}}


def test_workers_per_gpu_is_the_smallest_count_near_the_best_measured():
    rule = pool.per_gpu_rule
    assert rule(MEASURED, "NVIDIA H200", 139.8, cores=16, gpus=1) == 4  # 92 is within 5 % of 95; 70 is not
    assert rule({**MEASURED, "runs_per_hour": {"1": 40.0, "2": 94.0, "8": 95.0}}, "NVIDIA H200", 139.8, 16, 1) == 2
    assert rule(MEASURED, "NVIDIA H200", 139.8, cores=6, gpus=2) == 3  # a core per worker to feed the GPU
    assert rule({**MEASURED, "peak_memory_gib": 40.0}, "NVIDIA H200", 139.8, 16, 1) == 3  # 3 x 40 GiB fit in 0.9 x 139.8
    assert rule({**MEASURED, "peak_memory_gib": 40.0}, "NVIDIA H200", None, 16, 1) == 4  # the card's memory unknown
    assert rule({**MEASURED, "peak_memory_gib": 40.0, "memory_gib": 80.0}, "NVIDIA H200", None, 16, 1) == 1
    summed = {"1": 30.0, "2": 80.0, "4": None}  # as benchmarks.gpu_projection writes it: N workers' summed peak
    assert rule({**MEASURED, "peak_memory_gib": summed}, "NVIDIA H200", 139.8, 16, 1) == 3  # 40 GiB a worker
    # no measurement, or another GPU's: the fallback, still bounded by the cores
    assert rule(None, "NVIDIA H200", 139.8, 16, 1) == pool.FALLBACK_PER_GPU
    assert rule(MEASURED, "NVIDIA A100-SXM4-80GB", 80.0, 16, 1) == pool.FALLBACK_PER_GPU
    assert rule(None, "NVIDIA H200", 139.8, cores=2, gpus=2) == 1
    with pytest.raises(ValueError, match="workers.json: runs_per_hour must map worker counts"):
        rule({**MEASURED, "runs_per_hour": {"two": 5.0}}, "NVIDIA H200", 139.8, 16, 1, "benchmarks/gpu/workers.json")


def test_workers_per_gpu_reads_the_override_and_the_measurement_file(monkeypatch, tmp_path):
    measured = tmp_path / "workers.json"
    measured.write_text(json.dumps({**MEASURED, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else ""}))
    monkeypatch.delenv("HANDFUSE_WORKERS_PER_GPU", raising=False)
    assert pool.workers_per_gpu(1, measured) == min(4, os.cpu_count() or 1)
    assert pool.workers_per_gpu(1, tmp_path / "none.json") == min(pool.FALLBACK_PER_GPU, os.cpu_count() or 1)
    monkeypatch.setenv("HANDFUSE_WORKERS_PER_GPU", "5")
    assert pool.workers_per_gpu(1, measured) == 5
    for bad in ("0", "many"):
        monkeypatch.setenv("HANDFUSE_WORKERS_PER_GPU", bad)
        with pytest.raises(ValueError, match="HANDFUSE_WORKERS_PER_GPU"):
            pool.workers_per_gpu(1, measured)
