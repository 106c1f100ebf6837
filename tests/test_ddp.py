"""DDP: two gloo ranks under torchrun on this CPU machine; failures come back as one line."""

from __future__ import annotations

import pytest

from perfwatch.pipelines.ddp import _failure_line, run_ddp


@pytest.mark.slow
def test_two_ranks_train_and_rank0_reports():
    result = run_ddp(nproc=2, steps=4, warmup=1, model="mlp", batch_size=16, device="cpu", timeout=60)
    assert result["world_size"] == 2
    assert (result["backend"], result["device"]) == ("gloo", "cpu")
    assert result["batch_size_per_rank"] == 16 and result["steps"] == 4
    assert len(result["step_seconds"]) == 4 and all(s > 0 for s in result["step_seconds"])
    # Global throughput counts both ranks' samples over rank 0's timed steps.
    assert result["global_samples_per_s"] == pytest.approx(2 * 16 * 4 / sum(result["step_seconds"]))


def test_a_run_past_its_timeout_is_killed_with_a_clear_error():
    with pytest.raises(RuntimeError, match=r"timed out after 0.5 s"):
        run_ddp(nproc=2, timeout=0.5)


def test_bad_arguments_fail_before_launching():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        run_ddp(model="resnet")
    with pytest.raises(ValueError, match="nproc"):
        run_ddp(nproc=0)
    with pytest.raises(ValueError, match="device must be one of"):
        run_ddp(device="tpu")


def test_failure_line_names_the_rank_error_not_torchruns_summary():
    stderr = """
[rank0]: Traceback (most recent call last):
[rank0]:   File "ddp.py", line 56, in train
[rank0]: ValueError: batch_size must be >= 1, got 0
[rank1]: ValueError: batch_size must be >= 1, got 0
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
"""
    assert _failure_line(stderr) == "ValueError: batch_size must be >= 1, got 0"
    usage = "usage: ddp [-h]\npython -m perfwatch.pipelines.ddp: error: argument --model: invalid choice\n"
    assert _failure_line(usage) == "python -m perfwatch.pipelines.ddp: error: argument --model: invalid choice"
    assert _failure_line("Segmentation fault\n") == "Segmentation fault"
    assert _failure_line("") == "no output on stderr"
