"""Built-in real datasets: brain MRI with synthetic lesions, and Fashion-MNIST's one-class protocol."""

from .brain_mri import SIZE_BINS, BrainMRISplit, brain_mri_pool, find_brain_volume, insert_lesions, load_brain_mri
from .fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from .fashion_mnist import find_fashion_mnist, one_class_split, read_idx, semi_supervised_split

__all__ = [
    "SIZE_BINS", "BrainMRISplit", "brain_mri_pool", "find_brain_volume", "insert_lesions", "load_brain_mri",
    "FASHION_MNIST_CLASSES", "find_fashion_mnist", "one_class_split", "read_idx", "semi_supervised_split",
]
