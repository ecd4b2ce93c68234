"""Episodes in worker processes give the rows of one process."""
import csv

import pandas as pd
import pytest
import torch

from prmagic_core import experiments as ex
from prmagic_core.baselines import PerSAMF
from prmagic_core.data.shapeworld import episodes
from prmagic_core.evaluation import evaluate
from prmagic_core.flow import FlowConfig
from prmagic_core.models.encoding import Encoder
from prmagic_core.models.loading import load_sam
from prmagic_core.workers import ordered_map, resolve_workers


@pytest.fixture
def one_thread():
    """The single-process reference runs with one torch thread, as each worker does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FailingOn(PerSAMF):
    """PerSAM-F (100 fit iterations) that fails on one query image."""

    def __init__(self, query_image):
        super().__init__(train_iters=100)
        self.failing = query_image

    def prepare(self, encoder, support_images, support_masks, query_image):
        if query_image is self.failing:
            raise ValueError("this episode fails")
        return super().prepare(encoder, support_images, support_masks, query_image)


def without_timings(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_ordered_map_keeps_the_order_and_runs_in_other_processes():
    import os

    parent = os.getpid()
    results = list(ordered_map(lambda i: (i * i, os.getpid(), torch.get_num_threads()), range(6), workers=2))
    assert [r[0] for r in results] == [i * i for i in range(6)]
    assert all(pid != parent for _, pid, _ in results) and {threads for *_, threads in results} == {1}
    assert [r[1] for r in ordered_map(lambda i: (i, os.getpid()), range(3), workers=1)] == [parent] * 3


def test_multi_worker_evaluate_equals_the_single_process_run_row_for_row(tmp_path, one_thread):
    data = episodes(5, seed=3)
    run = dict(steps=2, flow=FlowConfig(eta=1e-2), selector="masked-image", seed=5, progress=False)
    encoder = Encoder(load_sam("tiny"))
    failing = data[2].query_image  # an episode that fails must fail the same way in a worker
    single = evaluate(FailingOn(failing), encoder, data, out=tmp_path / "one.csv", workers=1, **run)
    forked = evaluate(FailingOn(failing), Encoder(load_sam("tiny")), data, out=tmp_path / "two.csv", workers=2, **run)
    assert [r["status"] for r in single] == ["ok", "ok", "failed", "ok", "ok"]
    assert without_timings(forked) == without_timings(single)
    with open(tmp_path / "one.csv") as a, open(tmp_path / "two.csv") as b:
        assert without_timings(csv.DictReader(b)) == without_timings(csv.DictReader(a))


def test_multi_worker_sweep_writes_the_single_process_table(tmp_path, one_thread):
    sweep = ex.Sweep(baselines=("persam",), etas=(1e-2, 1e-3), seeds=(0,), episodes=3, steps=1)
    single = ex.Lab(ex.Setup(), tmp_path / "one", workers=1).sweep(sweep, progress=False)
    forked = ex.Lab(ex.Setup(), tmp_path / "two", workers=2).sweep(sweep, progress=False)
    assert len(single) == 2 * 3 * 2
    pd.testing.assert_frame_equal(forked, single)


def test_workers_are_checked_against_the_device():
    assert resolve_workers(None, "cpu") >= 1
    assert resolve_workers(None, "cuda") == 1 and resolve_workers(None, "cpu", world=2) == 1
    with pytest.raises(ValueError, match="--workers must be at least 1"):
        resolve_workers(0, "cpu")
    with pytest.raises(ValueError, match="torchrun"):
        resolve_workers(2, "cuda")
    with pytest.raises(ValueError, match="under torchrun"):
        resolve_workers(2, "cpu", world=2)
