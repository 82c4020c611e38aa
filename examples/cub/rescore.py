"""Score a folder of score maps in clovaai wsolevaluation's layout with this library's metrics (Choe et al., CVPR 2020).

The read-back half of the wsolevaluation interop (:mod:`scm_calib.interop`): ``train.py --wsol-scoremaps`` writes
``<run>/wsolevaluation/`` (``scoremaps/<image_id>.npy`` and ``metadata/<dataset>/<split>/``), the reference's
``evaluation.py`` scores it, and this command scores the same folder, or score maps that other code wrote in that
layout, with :class:`~scm_calib.metrics.BoxAccuracy` under the ``"wsol"`` protocol. It prints MaxBoxAcc (largest
box, IoU 0.5) and MaxBoxAccV2 (all boxes, mean over IoU 0.3 / 0.5 / 0.7), the numbers of the reference's
command without and with ``--multi_contour_eval=True --multi_iou_eval=True``.

    python examples/cub/rescore.py runs/cub-scm-seed0/wsolevaluation
    python examples/cub/rescore.py wsol --dataset-name ILSVRC --split val --scoremap-root my_scoremaps
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from scm_calib.data import DatasetFormatError
from scm_calib.interop import DATASET_NAMES, read_wsolevaluation
from scm_calib.metrics import BoxAccuracy


def rescore(scoremap_root: Path, split_dir: Path, step: float = 0.01) -> dict[str, Any]:
    """The box metrics of a folder of score maps.

    Args:
        scoremap_root: the score map folder (the reference's ``--scoremap_root``).
        split_dir: the split's metadata folder, ``<metadata_root>/<dataset_name>/<split>``.
        step: the threshold step (the reference's ``--cam_curve_interval``).

    Returns:
        :func:`~scm_calib.metrics.box_accuracy`'s dict (``MaxBoxAcc``, ``MaxBoxAccV2``, ``best_tau``, ...) and
        ``count``, the number of images.
    """
    metric = BoxAccuracy("wsol", step=step)
    count = 0
    for batch in read_wsolevaluation(scoremap_root, split_dir):
        metric.update(batch.maps, batch.gt_boxes)
        count += len(batch.image_ids)
    return {**metric.compute(), "count": count}


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 for a missing or malformed folder, reported in one line)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder holding scoremaps/ and metadata/ (train.py --wsol-scoremaps)")
    parser.add_argument("--dataset-name", choices=DATASET_NAMES, default="CUB", help="metadata/<name> (default: CUB)")
    parser.add_argument("--split", default="test", help="metadata/<name>/<split> (default: test)")
    parser.add_argument("--scoremap-root", type=Path, help="score map folder (default: <root>/scoremaps)")
    parser.add_argument("--metadata-root", type=Path, help="metadata folder (default: <root>/metadata)")
    parser.add_argument("--step", type=float, default=0.01, help="threshold step, as --cam_curve_interval")
    args = parser.parse_args(argv)
    scoremap_root = args.scoremap_root or args.root / "scoremaps"
    split_dir = (args.metadata_root or args.root / "metadata") / args.dataset_name / args.split
    try:
        if not 0 < args.step < 1:
            raise ValueError(f"--step must be in (0, 1), got {args.step}; the reference's default is 0.01.")
        if not split_dir.is_dir():
            raise ValueError(
                f"no metadata folder {split_dir}; pass the folder train.py --wsol-scoremaps wrote, or --metadata-root, "
                "--dataset-name and --split of yours."
            )
        result = rescore(scoremap_root, split_dir, args.step)
    except (FileNotFoundError, ValueError, DatasetFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ious = " / ".join(f"{result[f'MaxBoxAccV2@{name}']:.2f}" for name in ("30", "50", "70"))
    print(f"{result['count']} score maps of {split_dir}, wsol protocol (threshold step {args.step}):")
    print(f"MaxBoxAcc    {result['MaxBoxAcc']:6.2f}  (largest box, IoU 0.5, best tau {result['best_tau']:.2f})")
    print(f"MaxBoxAccV2  {result['MaxBoxAccV2']:6.2f}  (all boxes; IoU 0.3 / 0.5 / 0.7: {ious})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
