"""The train stage past one CPU, on this machine's CPU: the device rule, and data-parallel
training with torchrun and gloo (the same step as one process, one MLflow run and one set
of outputs from the stage, the whole command failing when a rank fails)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from pipeline import distributed
from pipeline.params import ParamsError
from tests.conftest import ROOT, new_project


def test_auto_is_the_cpu_here_and_a_missing_gpu_names_the_key():
    assert not torch.cuda.is_available()  # this machine has no GPU; CI neither
    assert distributed.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ParamsError, match=r"train\.device: 'cuda' requested, but torch sees no"):
        distributed.resolve_device("cuda")


def test_precision_is_float32_on_the_cpu_unless_asked():
    cpu = torch.device("cpu")
    assert distributed.autocast_dtype("auto", cpu) is None
    assert distributed.autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ParamsError, match=r"train\.precision: 'fp16' needs a CUDA GPU"):
        distributed.autocast_dtype("fp16", cpu)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_split_a_batch_into_contiguous_parts(world_size):
    for n in (125, 128, 7):
        parts = [
            distributed.Context(torch.device("cpu"), r, world_size).part(n)
            for r in range(world_size)
        ]
        covered = [i for part in parts for i in range(n)[part]]
        assert covered == list(range(n))
        assert max(len(range(n)[p]) for p in parts) - min(len(range(n)[p]) for p in parts) <= 1


def test_two_ranks_take_the_same_steps_as_one_process(tmp_path):
    """2 ranks x half a batch (63 + 62 of 125) and 1 process x the whole batch reach the
    same weights after an epoch of SGD, to float rounding."""
    torchrun = (
        str(ROOT / ".venv/bin/torchrun") if (ROOT / ".venv/bin/torchrun").exists() else "torchrun"
    )
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    subprocess.run(
        [sys.executable, "-m", "harness.ddp_steps", str(one)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "harness.ddp_steps",
            str(two),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    a, b = load_file(one), load_file(two)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def ddp_project(tmp_path_factory, mirror):
    """The small profile with mlp128 alone, trained once in one process."""

    def only_mlp128(params):
        from harness.project import small_profile

        params = small_profile(params)
        params["train"]["enabled"] = ["mlp128"]
        return params

    project = new_project(tmp_path_factory.mktemp("ddp"), mirror, profile=only_mlp128)
    project.run("dvc", "repro", "train@mlp128")
    return project


def val_accuracy(project) -> float:
    return json.loads((project.path / "models/mlp128/metrics.json").read_text())["val_accuracy"]


@pytest.mark.slow
def test_the_train_stage_runs_data_parallel_under_dvc(ddp_project):
    from mlflow import MlflowClient

    single = val_accuracy(ddp_project)
    params = ddp_project.params()
    params["train"]["processes"] = 2
    ddp_project.write_params(params)
    result = ddp_project.run("dvc", "repro", "train@mlp128")
    assert ddp_project.stages_run(result) == ["train@mlp128"]
    assert abs(val_accuracy(ddp_project) - single) < 0.02
    client = MlflowClient(tracking_uri=f"sqlite:///{ddp_project.path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    assert sorted(r.data.params["processes"] for r in runs) == ["1", "2"]  # one run each
    run = json.loads((ddp_project.path / "models/mlp128/run.json").read_text())
    two = next(r for r in runs if r.data.params["processes"] == "2")
    assert run["run_id"] == two.info.run_id and two.info.status == "FINISHED"
    assert (ddp_project.path / "models/mlp128/weights.safetensors").stat().st_size > 0


@pytest.mark.slow
def test_a_failing_rank_fails_the_whole_command_with_its_message(ddp_project):
    env = {**ddp_project.env, "MNIST_FAULT": "train.start@1"}
    params = ddp_project.params()
    params["train"]["processes"] = 2
    ddp_project.write_params(params)
    result = ddp_project.run(
        "python",
        "-m",
        "pipeline.stages.train",
        "--candidate",
        "mlp128",
        "--data",
        "data/normalised",
        "--out",
        "models/mlp128",
        env=env,
        check=False,
    )
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert "fault injected at train.start on rank 1" in output
    assert "2 data-parallel processes under torchrun failed" in output


def test_the_training_benchmark_writes_the_data_the_training_loop_reads(
    tmp_path, mirror, monkeypatch
):
    """bench.distributed_bench trains from arrays of its own making: they must be what the
    normalise stage hands the train stage, stats.json included, or the benchmark's rows fail."""
    from bench import distributed_bench
    from pipeline import training
    from pipeline.params import TrainParams, load_section

    monkeypatch.setenv("MNIST_MIRROR", str(mirror))
    distributed_bench.write_arrays(tmp_path)
    candidate = load_section(ROOT / "params.yaml", "train", TrainParams).candidates["cnn_compact"]
    data = training.load_data(tmp_path, candidate, seed=0)
    assert data.x_train.shape[1:] == (1, 28, 28) and len(data.y_val) > 0
    assert (data.mean, data.std) == (0.0, 1.0)  # the pipeline's default: pixels / 255 only
