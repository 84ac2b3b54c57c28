"""corruption_set: validation and test digits spoilt in the common ways (noise, blur,
geometry, intensity, occlusion, outlines), as each serving path receives them. Rendered
once for all candidates; the robustness stages score each candidate on it.

In: ``val.npz`` and ``test.npz`` from split; params ``robustness.corruptions`` (digits
per split, seed, severity, the corruptions by family). Out, in ``--out``:
``digits.npz`` holding, for each split S in (val, test): ``S_arrays`` (C, N, 28, 28)
uint8, the corrupted digits as sent to POST /predict; ``S_images`` (C, N, 28, 28)
uint8, what POST /predict_image's preprocessing made of each sent as a PNG (zeros where
it refused one, as the service would with a 400); ``S_refused`` (C, N) bool; ``S_labels``
(N,); and ``names``, ``families`` (C,). In ``--pictures``: ``corruptions.png``, a
panel per family of a few test digits, corrupted, and what /predict_image sees.

The validation digits serve decisions (promotion's robustness floor), the test digits
the report. Nothing trains on them: training spoils its images with its own code
(pipeline/augment.py), seeds and strengths.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline import atomic, cli, corruptions, dataset
from pipeline.params import ParamsError, RobustnessParams, load_section

EXAMPLES = 6  # test digits in corruptions.png


def render(digits: np.ndarray, names: list[str], seed: int, severity: float):
    """(N, 28, 28) -> (arrays (C, N, 28, 28), images (C, N, 28, 28), refused (C, N))."""
    arrays = np.stack([corruptions.corrupt(name, digits, seed, severity) for name in names])
    seen = [corruptions.as_images(spoilt) for spoilt in arrays]
    return arrays, np.stack([s for s, _ in seen]), np.stack([r for _, r in seen])


def main(args) -> None:
    started = time.perf_counter()
    params = load_section(args.params, "robustness", RobustnessParams).corruptions
    names = [name for family in params.families.values() for name in family]
    unknown = [name for name in names if name not in corruptions.CORRUPTIONS]
    if unknown:
        raise ParamsError(
            f"{args.params}: robustness.corruptions.families: unknown {unknown}; known: "
            f"{', '.join(corruptions.CORRUPTIONS)}"
        )
    families = [family for family, members in params.families.items() for _ in members]
    out: dict[str, np.ndarray] = {"names": np.array(names), "families": np.array(families)}
    for split, path in (("val", args.val), ("test", args.test)):  # test last: it draws the picture
        data = atomic.read_npz(path)
        if params.per_split > len(data["labels"]):
            raise ParamsError(
                f"{args.params}: robustness.corruptions.per_split: {params.per_split} is more "
                f"than the {len(data['labels'])} digits of the {split} split"
            )
        index = dataset.choose(len(data["labels"]), params.per_split, params.seed)
        arrays, images, refused = render(data["images"][index], names, params.seed, params.severity)
        out |= {
            f"{split}_arrays": arrays,
            f"{split}_images": images,
            f"{split}_refused": refused,
            f"{split}_labels": data["labels"][index],
        }
    atomic.write_npz(args.out / "digits.npz", **out)
    atomic.write_bytes(
        args.pictures / "corruptions.png",
        corruptions.picture(data["images"][:EXAMPLES], params.severity, params.seed),
    )
    refused = int(out["val_refused"].sum() + out["test_refused"].sum())
    print(
        f"corruption_set: {params.per_split} validation and {params.per_split} test digits x "
        f"{len(names)} corruptions rendered for both paths ({refused} refused) in "
        f"{time.perf_counter() - started:.1f} s"
    )


def cli_main(argv=None) -> None:
    p = cli.parser("corruption_set", __doc__)
    p.add_argument("--val", required=True, type=Path, help="val.npz from split")
    p.add_argument("--test", required=True, type=Path, help="test.npz from split")
    p.add_argument("--out", required=True, type=Path, help="folder for digits.npz")
    p.add_argument("--pictures", required=True, type=Path, help="folder for corruptions.png")
    cli.run("corruption_set", main, p.parse_args(argv))


if __name__ == "__main__":
    cli_main()
