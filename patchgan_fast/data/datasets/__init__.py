"""Built-in real datasets: brain MRI (registered synthetic subjects with lesions modelled on pathology; the
earlier unregistered construction), and Fashion-MNIST's one-class protocol."""

from .brain_mri import SIZE_BINS, BrainMRISplit, brain_mri_pool, find_brain_volume, insert_lesions, load_brain_mri
from .brain_subjects import brain_subjects_pool, find_mni_template, load_brain_subjects
from .fashion_mnist import CLASSES as FASHION_MNIST_CLASSES
from .fashion_mnist import find_fashion_mnist, one_class_split, read_idx, semi_supervised_split

__all__ = [
    "SIZE_BINS", "BrainMRISplit", "brain_mri_pool", "find_brain_volume", "insert_lesions", "load_brain_mri",
    "brain_subjects_pool", "find_mni_template", "load_brain_subjects",
    "FASHION_MNIST_CLASSES", "find_fashion_mnist", "one_class_split", "read_idx", "semi_supervised_split",
]
