"""Which of a trained run's maps localizes, and can SCM's diffusion see the object's edges?

For each run folder of ``train.py`` (its ``model_stripped.safetensors``), on the test split of the run's data
(CUB layout: the generated data or a CUB folder), ``wsol`` protocol, MaxBoxAccV2 of:

- ``A``: the class-token attention alone (the semantic-agnostic map),
- ``S``: the ground-truth class's semantic map alone,
- ``A*S``: the localization map, what the run reports,
- the centred Gaussian map that ignores the image,

and, where the data has masks, :class:`~scm_calib.diagnostics.SemanticAffinity` of the semantic maps: the mean
cosine similarity of neighbouring patches' class-score vectors (SCM's ``Sim``) inside the object, in the
background and across the object's edge.

    python examples/cub/probe_maps.py runs/generated-scm-seed0 runs/generated-baseline-seed0
    python examples/cub/probe_maps.py runs/my-run --data-root /data/CUB_200_2011 --json probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from config import TrainConfig
from infer import SetupError, load_stripped

from scm_calib.data import CUBDataset, collate_wsol
from scm_calib.diagnostics import SemanticAffinity
from scm_calib.evaluation import centre_prior_map
from scm_calib.localize import semantic_and_attention
from scm_calib.metrics import BoxAccuracy


def data_root(config: TrainConfig, override: str | None) -> Path:
    """The dataset the run was trained on (``--data-root`` wins); generated data lives under its ``data_cache``."""
    if override is not None:
        return Path(override)
    if config.data_root is not None:
        return Path(config.data_root)
    return Path(config.data_cache) / config.data_family


def probe(model: torch.nn.Module, image_size: int, root: Path, batch_size: int = 64) -> dict[str, float]:
    """MaxBoxAccV2 of A, S, A*S and the centre prior, and the semantic affinity, of a stripped model on ``root``'s
    test split at ``image_size``."""
    test = CUBDataset(root, "test", image_size=image_size)  # reads the masks when the folder has them
    size = (image_size, image_size)
    scores = {name: BoxAccuracy("wsol", size=size) for name in ("A", "S", "A*S", "centre prior")}
    affinity = SemanticAffinity()
    for start in range(0, len(test), batch_size):
        batch = collate_wsol([test[i] for i in range(start, min(start + batch_size, len(test)))])
        with torch.no_grad():
            output = semantic_and_attention(model, batch.images)
        rows = torch.arange(len(batch.labels))
        maps = {
            "A": output.attention,
            "S": output.semantic[rows, batch.labels],
            "A*S": output.maps[rows, batch.labels],
            "centre prior": centre_prior_map(output.attention.shape[-2:]).expand_as(output.attention),
        }
        for name, value in maps.items():
            scores[name].update(value, batch.boxes_protocol)
        if batch.masks is not None:
            affinity.update(output.semantic, batch.masks)
    result = {f"MaxBoxAccV2 {name}": metric.compute()["MaxBoxAccV2"] for name, metric in scores.items()}
    if batch.masks is not None:
        result.update({f"affinity {k}": v for k, v in affinity.compute().items() if not k.endswith("_pairs")})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of train.py")
    parser.add_argument("--data-root", help="the CUB-layout dataset to probe on (default: the run's own)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = {}
    try:
        for run in args.runs:
            if not (run / "model_stripped.safetensors").is_file():
                raise SetupError(f"{run} holds no model_stripped.safetensors; pass the folder of a finished run.")
            model, config, _ = load_stripped(run / "model_stripped.safetensors")
            root = data_root(config, args.data_root)
            if not (root / "images.txt").is_file():
                raise SetupError(f"{root} is not a CUB-layout dataset (no images.txt); pass --data-root.")
            results[str(run)] = probe(model, config.image_size, root)
            figures = (f"{k} {v:.3f}" if "affinity" in k else f"{k} {v:.1f}" for k, v in results[str(run)].items())
            print(run, "|", ", ".join(figures), flush=True)
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
