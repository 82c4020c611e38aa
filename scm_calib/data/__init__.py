"""WSOL datasets: CUB-200-2011, ILSVRC list files, wsolevaluation metadata and the generated default dataset.

Every dataset yields :class:`WSOLSample` s (image, 0-based label, boxes that followed the transforms,
original size, optional protocol boxes and mask); :func:`collate_wsol` batches them. torchvision and Pillow
(the ``examples`` extra) are imported when a dataset or transform is built.
"""

from scm_calib.data.base import WSOLBatch, WSOLDataset, WSOLSample, collate_wsol
from scm_calib.data.cub import CUBDataset, read_cub_classes, read_cub_records
from scm_calib.data.generated import ensure_generated_dataset, render_object_image
from scm_calib.data.ilsvrc import ILSVRCListDataset, read_ilsvrc_list
from scm_calib.data.records import DatasetFormatError, ImageRecord, load_image
from scm_calib.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    protocol_boxes,
    wsol_eval_transform,
    wsol_train_transform,
)
from scm_calib.data.wsol_metadata import WSOLMetadataDataset, read_wsol_metadata

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CUBDataset",
    "DatasetFormatError",
    "ILSVRCListDataset",
    "ImageRecord",
    "WSOLBatch",
    "WSOLDataset",
    "WSOLMetadataDataset",
    "WSOLSample",
    "collate_wsol",
    "ensure_generated_dataset",
    "load_image",
    "protocol_boxes",
    "read_cub_classes",
    "read_cub_records",
    "read_ilsvrc_list",
    "read_wsol_metadata",
    "render_object_image",
    "wsol_eval_transform",
    "wsol_train_transform",
]
