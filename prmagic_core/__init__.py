"""PR-MaGIC: prompt refinement by mask-decoder gradient flow for in-context segmentation."""
__version__ = "0.1.0"
