"""Built-in real datasets."""

from .brain_mri import BrainMRISplit, find_brain_volume, load_brain_mri, insert_lesions

__all__ = ["BrainMRISplit", "find_brain_volume", "load_brain_mri", "insert_lesions"]
