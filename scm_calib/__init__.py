"""scm_calib: SCM (Spatial Calibration Module, Bai et al., ECCV 2022) for any timm Vision Transformer."""

__version__ = "0.1.0"
