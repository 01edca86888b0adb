"""train/eval/serve.num_threads: auto is the physical cores (or OMP_NUM_THREADS when set), a count is
applied, 0/null leave torch's default."""

from __future__ import annotations

import os
from collections.abc import Iterator

import psutil
import pytest
import torch

from tuneforge.config import TrainConfig
from tuneforge.models import threads as devices
from tuneforge.train.devices import set_num_threads


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _load_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPUs seen busy now never cap the load in these tests (each sets the load it needs)."""
    monkeypatch.setattr(devices, "busy_now", lambda logical: 99.0)


@pytest.fixture
def quiet_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "load_average", lambda: 0.2)


def test_auto_is_the_physical_cores(monkeypatch: pytest.MonkeyPatch, quiet_machine: None) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    usable = len(os.sched_getaffinity(0))
    expected = max(1, usable * psutil.cpu_count(logical=False) // psutil.cpu_count())
    assert set_num_threads(TrainConfig()) == expected == torch.get_num_threads()


def test_auto_leaves_the_cores_other_jobs_keep_busy(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 8 if logical else 4)
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(devices, "load_average", lambda: 2.6)  # about 3 cores busy elsewhere
    assert set_num_threads(TrainConfig()) == 1 == torch.get_num_threads()
    assert capsys.readouterr().err == (
        "threads: 1 of 4 cores (other jobs keep 3 busy: load 2.6); train.num_threads sets a number\n"
    )
    monkeypatch.setattr(devices, "load_average", lambda: 9.0)  # never fewer than one thread
    assert set_num_threads(TrainConfig()) == 1
    assert "keep 3 busy: load 9.0" in capsys.readouterr().err
    monkeypatch.setattr(devices, "load_average", lambda: 0.4)
    assert set_num_threads(TrainConfig()) == 4
    assert capsys.readouterr().err == ""


def test_auto_follows_omp_num_threads_and_shares_cores_between_processes(
    monkeypatch: pytest.MonkeyPatch, quiet_machine: None
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert set_num_threads(TrainConfig()) == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")  # more processes than cores: one thread each
    assert set_num_threads(TrainConfig()) == 1


def test_a_count_is_applied_and_zero_or_null_keep_torchs_default() -> None:
    assert set_num_threads(TrainConfig(num_threads=3)) == 3 == torch.get_num_threads()
    torch.set_num_threads(2)
    assert set_num_threads(TrainConfig(num_threads=0)) == 2
    assert set_num_threads(TrainConfig(num_threads=None)) == 2


def test_evaluate_and_serve_take_the_same_setting_and_name_their_key(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from tuneforge.config import load_config
    from tuneforge.models.threads import apply_threads

    cfg, _ = load_config(None, ["eval.num_threads=3", "serve.num_threads=auto"])
    assert (cfg.eval.num_threads, cfg.serve.num_threads, cfg.train.num_threads) == (3, "auto", "auto")
    assert apply_threads(cfg.eval.num_threads, "eval.num_threads") == 3 == torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 4 if logical else 2)
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: set(range(4)))
    monkeypatch.setattr(devices, "load_average", lambda: 1.2)
    assert apply_threads(cfg.serve.num_threads, "serve.num_threads") == 1
    assert capsys.readouterr().err == (
        "threads: 1 of 2 cores (other jobs keep 1 busy: load 1.2); serve.num_threads sets a number\n"
    )


def test_this_processs_own_recent_work_does_not_count_as_another_job(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The quickstart prepares data (one core busy for seconds) and then trains: the load average still
    holds that work, but the CPUs are idle while this process sleeps, so every core is used."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 2)
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(devices, "load_average", lambda: 1.0)
    monkeypatch.setattr(devices, "busy_now", lambda logical: 0.1)
    assert set_num_threads(TrainConfig()) == 2
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(devices, "busy_now", lambda logical: 1.0)  # another job really runs
    assert set_num_threads(TrainConfig()) == 1
    assert "other jobs keep 1 busy: load 1.0" in capsys.readouterr().err
