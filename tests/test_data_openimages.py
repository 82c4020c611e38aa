"""wsolevaluation's OpenImages layout: instance masks and ignore regions listed in localization.txt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scm_calib.data import DatasetFormatError, WSOLMetadataDataset, collate_wsol, read_wsol_metadata


def write_openimages(root: Path, ignore_first: bool = True) -> Path:
    """Two 16 x 12 images of class 0 and 1 under ``test/<class>/``; the first with two instance masks (columns
    0-3 and 8-9) and an ignore box (columns 2-11), the second with one mask and no ignore file. The metadata
    is wsolevaluation's: an empty ``image_sizes.txt`` and "<path>,<mask>,<ignore>" lines."""
    lines = []
    for label, name, instances, ignore in (
        (0, "a", [(0, 4), (8, 10)], (2, 12)),
        (1, "b", [(5, 9)], None),
    ):
        folder = root / "test" / f"c{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((12, 16, 3), 90 * label, np.uint8)).save(folder / f"{name}.jpg")
        for index, (x0, x1) in enumerate(instances):
            mask = np.zeros((12, 16), np.uint8)
            mask[:, x0:x1] = 255
            Image.fromarray(mask).save(folder / f"{name}_m{index}.png")
            ignore_path = ""
            if ignore is not None and index == (0 if ignore_first else len(instances) - 1):
                region = np.zeros((12, 16), np.uint8)
                region[:, ignore[0] : ignore[1]] = 255
                Image.fromarray(region).save(folder / f"{name}_ignore.png")
                ignore_path = f"test/c{label}/{name}_ignore.png"
            lines.append(f"test/c{label}/{name}.jpg,test/c{label}/{name}_m{index}.png,{ignore_path}")
    split = root / "metadata" / "test"
    split.mkdir(parents=True)
    (split / "image_ids.txt").write_text("test/c0/a.jpg\ntest/c1/b.jpg\n")
    (split / "class_labels.txt").write_text("test/c0/a.jpg,0\ntest/c1/b.jpg,1\n")
    (split / "image_sizes.txt").write_text("")
    (split / "localization.txt").write_text("\n".join(lines) + "\n")
    return split


def test_masks_are_the_union_of_instances_and_ignore_leaves_the_object_out(tmp_path: Path) -> None:
    split = write_openimages(tmp_path)
    records = read_wsol_metadata(split)
    assert records[0].masks == ("test/c0/a_m0.png", "test/c0/a_m1.png") and records[0].ignore == "test/c0/a_ignore.png"
    assert records[1].ignore is None and records[0].size is None and records[0].boxes == ()
    dataset = WSOLMetadataDataset(tmp_path, split, image_size=16)
    assert dataset.check_images() == []
    batch = collate_wsol([dataset[0], dataset[1]])
    columns = torch.arange(16)
    # 16 x 12 resized to 16 x 16 keeps the columns.
    assert torch.equal(batch.masks[0, 0], (columns < 4) | ((columns >= 8) & (columns < 10)))
    assert torch.equal(batch.ignore[0, 0], ((columns >= 4) & (columns < 8)) | ((columns >= 10) & (columns < 12)))
    assert torch.equal(batch.masks[1, 0], (columns >= 5) & (columns < 9)) and not batch.ignore[1].any()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("missing mask", "a_m1.png (listed in"),
        ("two ignores", "a second ignore mask for test/c0/a.jpg; give it on the image's first line only"),
    ],
)
def test_mask_list_errors_name_the_file(edit: str, message: str, tmp_path: Path) -> None:
    split = write_openimages(tmp_path)
    if edit == "missing mask":
        (tmp_path / "test" / "c0" / "a_m1.png").unlink()
        problems = WSOLMetadataDataset(tmp_path, split).check_images()
        assert len(problems) == 1 and message in problems[0]
        return
    localization = split / "localization.txt"
    localization.write_text(localization.read_text().replace("a_m1.png,", "a_m1.png,test/c0/a_ignore.png"))
    with pytest.raises(DatasetFormatError, match=message):
        read_wsol_metadata(split)
