"""The robustness report: pipeline/photos.py's rendering, its params, the photo_set stage
(test digits rendered as people send them, through the service's preprocessing) and the
robustness stage (a candidate scored on them, into its MLflow run), on a few hundred
real test digits and a small network trained here. No DVC: tests/test_e2e.py runs them
inside `dvc repro`."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from pipeline import atomic, models, photos, tracking
from pipeline.params import ParamsError, RobustnessParams, TrainParams, load_section
from pipeline.stages import corruption_set, photo_set, record, robustness
from tests.conftest import ROOT

KINDS = ["clean", "ruled", "photo"]


# --- rendering -----------------------------------------------------------------------


def test_every_kind_renders_the_same_bytes_from_the_same_seed(mnist) -> None:
    digits = mnist[2][:3]
    for kind in photos.KINDS:
        first, again = photos.render(kind, digits, seed=7), photos.render(kind, digits, seed=7)
        assert first == again, kind
        assert first != photos.render(kind, digits, seed=8), kind
        for data in first:
            image = Image.open(io.BytesIO(data))
            assert image.format in ("PNG", "JPEG") and min(image.size) >= 200


def test_a_kinds_images_do_not_depend_on_the_other_kinds() -> None:
    assert photos.kind_rng(0, "photo").random() == photos.kind_rng(0, "photo").random()
    assert photos.kind_rng(0, "photo").random() != photos.kind_rng(0, "ruled").random()


def test_params_list_every_kind_and_validate() -> None:
    params = load_section(ROOT / "params.yaml", "robustness", RobustnessParams)
    assert params.kinds == list(photos.KINDS)
    spoilt = {"per_split": 10, "seed": 0, "severity": 0.6, "families": {"noise": ["gaussian"]}}
    with pytest.raises(ValueError, match="more than once"):
        RobustnessParams.model_validate(
            {"per_kind": 10, "seed": 0, "kinds": ["clean", "clean"], "corruptions": spoilt}
        )
    with pytest.raises(ValueError, match="per_kind"):
        RobustnessParams.model_validate({"seed": 0, "kinds": ["clean"]})


# --- photo_set -----------------------------------------------------------------------


def write_params(tmp_path, **robustness_params) -> object:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["robustness"].update(robustness_params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, mnist):
    """photo_set run on 300 of the official test digits, three kinds: its output folder."""
    folder = tmp_path_factory.mktemp("photo_set")
    atomic.write_npz(folder / "test.npz", images=mnist[2][:1000], labels=mnist[3][:1000])
    args = argparse.Namespace(
        params=write_params(folder, per_kind=300, seed=3, kinds=KINDS),
        test=folder / "test.npz",
        out=folder / "data",
        pictures=folder / "reports",
    )
    photo_set.main(args)
    return folder


def test_photo_set_holds_the_same_digits_under_every_kind(rendered, mnist) -> None:
    data = atomic.read_npz(rendered / "data" / "digits.npz")
    assert data["images"].shape == (3, 300, 28, 28) and data["images"].dtype == np.uint8
    assert list(data["kinds"]) == KINDS and data["refused"].shape == (3, 300)
    index = data["index"]
    assert len(set(index)) == 300 and index.max() < 1000  # drawn from the test split only
    np.testing.assert_array_equal(data["originals"], mnist[2][index])
    np.testing.assert_array_equal(data["labels"], mnist[3][index])
    assert not data["refused"].any() and (data["images"].reshape(3, 300, -1).max(2) > 0).all()
    assert min(Image.open(rendered / "reports" / "examples.png").size) > 200


def test_photo_set_stops_on_an_unknown_kind_or_too_many_digits(rendered) -> None:
    for edit, message in (
        ({"kinds": ["clean", "blurry"]}, "robustness.kinds: unknown ['blurry']"),
        ({"per_kind": 5000}, "robustness.per_kind: 5000 is more than the 1000"),
    ):
        args = argparse.Namespace(
            params=write_params(rendered, **edit),
            test=rendered / "test.npz",
            out=rendered / "refused",
            pictures=rendered / "refused",
        )
        with pytest.raises(ParamsError, match=message.replace("[", r"\[")):
            photo_set.main(args)
        assert not (rendered / "refused").exists()


# --- robustness ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist):
    """mlp128's network, trained here for two epochs on 10,000 images, as a train stage
    would leave it: weights.safetensors, run.json of a real MLflow run, stats.json."""
    folder = tmp_path_factory.mktemp("mlp128")
    candidate = load_section(ROOT / "params.yaml", "train", TrainParams).candidate("mlp128")
    torch.manual_seed(0)
    net = models.build(candidate)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    images = torch.from_numpy(mnist[0][:10_000].copy()).float().unsqueeze(1) / 255
    labels = torch.from_numpy(mnist[1][:10_000].astype(np.int64))
    for _ in range(2):
        for batch in torch.randperm(len(images)).split(64):
            loss = torch.nn.functional.cross_entropy(net(images[batch]), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, folder / "weights.safetensors"
    )
    atomic.write_json(folder / "stats.json", {"mean": 0.0, "std": 1.0, "standardise": False})
    return folder


def test_robustness_scores_a_candidate_and_record_adds_it_to_its_run(
    rendered, trained, mnist, tmp_path, monkeypatch
) -> None:
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow puts a run's artifacts beside the working folder
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("mnist")
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_metric("test_accuracy", 0.9)
    client = mlflow.MlflowClient()
    before = client.get_run(run.info.run_id).info
    atomic.write_json(trained / "run.json", {"run_id": run.info.run_id, "candidate": "mlp128"})
    out = tmp_path / "robustness" / trained.name  # the layout record reads
    # Two corruptions of two families, 100 digits of each split, as corruption_set writes them.
    names, families = ["brightness", "gaussian"], ["intensity", "noise"]
    spoilt = {"names": np.array(names), "families": np.array(families)}
    for split, rows in (("val", slice(2000, 2100)), ("test", slice(2100, 2200))):
        arrays, images, refused = corruption_set.render(mnist[2][rows], names, 0, 0.6)
        spoilt |= {
            f"{split}_arrays": arrays,
            f"{split}_images": images,
            f"{split}_refused": refused,
            f"{split}_labels": mnist[3][rows],
        }
    atomic.write_npz(tmp_path / "corrupted.npz", **spoilt)
    robustness.main(
        argparse.Namespace(
            params=ROOT / "params.yaml",
            candidate="mlp128",
            model=trained,
            stats=trained / "stats.json",
            photos=rendered / "data" / "digits.npz",
            corruptions=tmp_path / "corrupted.npz",
            out=out,
        )
    )
    report = json.loads((out / "corruptions.json").read_text())
    for split in ("val", "test"):
        for path in ("arrays", "images"):
            families_seen = report[split][path]["families"]
            assert set(families_seen) == {"intensity", "noise"}
            assert report[split][path]["mean_error"] == pytest.approx(
                np.mean(list(families_seen.values()))
            )
    # A flat grey offset sent as an array fools a network trained on black backgrounds far
    # more than the image path, whose preprocessing divides the paper's brightness out.
    test = report["test"]
    assert test["arrays"]["families"]["intensity"] > test["images"]["families"]["intensity"]
    assert (out / "corruptions.csv").read_text().splitlines()[0] == (
        "family,corruption,error_arrays,error_images"
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run_id"] == run.info.run_id and metrics["n_per_kind"] == 300
    assert set(metrics["accuracy"]) == set(KINDS)
    reference, accuracy = metrics["reference_accuracy"], metrics["accuracy"]
    assert reference > 0.85  # a real network, not chance
    assert abs(accuracy["clean"] - reference) < 0.05  # a clean scan reads like the array
    assert accuracy["photo"] > reference - 0.15 and accuracy["ruled"] > reference - 0.1
    assert metrics["mean_accuracy"] == pytest.approx(np.mean(list(accuracy.values())))
    rows = (out / "robustness.csv").read_text().splitlines()
    assert rows[0] == "kind,accuracy,correct,refused,n" and len(rows) == 1 + len(KINDS)
    assert Image.open(out / "robustness.png").format == "PNG"

    # The stage hands off through its files; record adds them to the run, once.
    assert client.get_run(run.info.run_id).data.metrics == {"test_accuracy": 0.9}
    atomic.write_json(tmp_path / "reports" / trained.name / "metrics.json", {"test_accuracy": 0.9})
    gathered = record.gather(trained.name, trained.parent, tmp_path / "reports", out.parent)
    assert tracking.add_to_run(
        run.info.run_id, gathered["metrics"], gathered["folders"], "recorded", gathered["sha256"]
    )
    after = client.get_run(run.info.run_id)
    assert after.data.metrics["robustness_photo"] == pytest.approx(accuracy["photo"])
    assert after.data.metrics["robustness_reference"] == pytest.approx(reference)
    assert {f"robustness_{kind}" for kind in KINDS} <= set(after.data.metrics)
    assert (after.info.status, after.info.end_time) == (before.status, before.end_time)
    assert after.data.metrics["corruption_error_pct_arrays"] == pytest.approx(
        100 * test["arrays"]["mean_error"]
    )
    assert "val_corruption_error_pct_images" in after.data.metrics
    assert after.data.metrics["test_error_pct"] == pytest.approx(10.0)
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "robustness")}
    assert "robustness/metrics.json" in logged and "robustness/robustness.png" in logged
    assert [a.path for a in client.list_artifacts(run.info.run_id, "evaluate")] == [
        "evaluate/metrics.json"
    ]
