"""reproduction.study: the verdict rule, and a real short run on a few thousand digits."""

import json

import numpy as np
import pytest

from pipeline import atomic
from pipeline.params import TrainParams, load_section
from pipeline.stages import normalise
from reproduction import study as reproduce
from tests.conftest import ROOT

R2 = next(r for r in reproduce.REFERENCES if r.id == "R2")  # 97.27 ± 0.43
R4 = next(r for r in reproduce.REFERENCES if r.id == "R4")  # 98.1, no spread published


def test_every_reference_is_reproduced_by_a_candidate_in_params():
    reproducing = load_section(ROOT / "params.yaml", "train", TrainParams).reproducing()
    assert [r.id for r in reproduce.REFERENCES] == ["R1", "R2", "R3", "R4", "R5"]
    assert sorted(reproducing) == ["R1", "R2", "R3", "R4", "R5"]
    assert reproducing["R1"] == "mlp_tanh16" and reproducing["R3"] == "mlp_wide_softmax"


@pytest.mark.parametrize(
    "mean, ref, expected",
    [
        (97.27, R2, "reproduced"),
        (96.85, R2, "reproduced"),
        (97.69, R2, "reproduced"),
        (97.71, R2, "better"),
        (96.83, R2, "different"),
        (97.61, R4, "reproduced"),
        (98.59, R4, "reproduced"),
        (98.61, R4, "better"),
        (97.59, R4, "different"),
    ],
)
def test_verdict_uses_the_published_spread_or_half_a_point(mean, ref, expected):
    kind, reason = reproduce.verdict(mean, ref)
    assert kind == expected
    assert f"{mean:.2f}" in reason and f"{ref.accuracy:.2f}" in reason


@pytest.fixture(scope="module")
def small_arrays(tmp_path_factory, mnist):
    """2,000 train and 500 validation digits (normalised), 1,000 raw test digits."""
    train_x, train_y, test_x, test_y = mnist
    folder = tmp_path_factory.mktemp("arrays")
    stats = normalise.statistics(train_x[:2000], standardise=False)
    for name, (x, y) in {
        "train": (train_x[:2000], train_y[:2000]),
        "val": (train_x[-500:], train_y[-500:]),
    }.items():
        atomic.write_npz(
            folder / f"{name}.npz", images=normalise.apply(x, stats), labels=y.astype(np.int64)
        )
    atomic.write_json(folder / "stats.json", stats)
    atomic.write_npz(folder / "test.npz", images=test_x[:1000], labels=test_y[:1000])
    return folder


def test_short_run_writes_table_and_json_from_real_training(small_arrays, tmp_path, capsys):
    out = tmp_path / "out"
    reproduce.cli_main(
        [
            "--only",
            "R1",
            "--seeds",
            "2",
            "--data",
            str(small_arrays),
            "--test",
            str(small_arrays / "test.npz"),
            "--out",
            str(out),
        ]
    )
    report = json.loads((out / "reproduction.json").read_text())
    (row,) = report["systems"]
    accuracies = [run["test_accuracy"] for run in row["runs"]]
    assert [run["seed"] for run in row["runs"]] == [0, 1]
    assert accuracies[0] != accuracies[1]  # the seed reaches the initialisation and shuffling
    assert all(60 < a < 100 for a in accuracies)  # percent, of 1,000 real test digits
    assert row["test_accuracy_mean"] == pytest.approx(np.mean(accuracies))
    r1 = reproduce.REFERENCES[0]
    assert row["verdict"] == reproduce.verdict(row["test_accuracy_mean"], r1)[0]
    assert report["context"]["n_test"] == 1000
    table = (out / "reproduction.md").read_text()
    assert "| R1 | `mlp_tanh16` | 95.49 %" in table and row["verdict"] in table
    printed = capsys.readouterr().out
    assert printed.count("reproduce: R1 mlp_tanh16 seed") == 2 and "| R1 |" in printed

    again = tmp_path / "again"
    reproduce.cli_main(["--render", str(out / "reproduction.json"), "--out", str(again)])
    assert (again / "reproduction.md").read_text() == table  # same runs, same table
    assert "mlp_tanh16 seed" not in capsys.readouterr().out  # nothing trained


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--only", "R9"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        reproduce.parse_args(argv)
    assert exit_info.value.code == 2
    assert "usage: python -m reproduction" in capsys.readouterr().err
