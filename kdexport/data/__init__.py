"""Data: the dataset registry (in-memory tensors or streamed files), normalization and augmentations.

The registries' names are declared here, without importing torch, so the CLI lists them and configs
check them at once; their items live in :mod:`.datasets` and :mod:`.augment`.
"""

from ..registry import Registry

DATASETS = Registry("dataset", home="kdexport.data.datasets")
DATASETS.declare("digits", "scikit-learn's bundled 8x8 handwritten digits (1,797 images, no network)")
DATASETS.declare("mnist", "MNIST 28x28 (torchvision's layout under --data-dir; downloaded when missing)")
DATASETS.declare("cifar10", "CIFAR-10 32x32 (torchvision's release, or an ImageFolder copy with train/ and test/)")
DATASETS.declare("imagefolder", "your images: --data-dir with train/CLASS/* and test/CLASS/* (or val/)")

AUGMENTATIONS = Registry("augmentation", home="kdexport.data.augment")
AUGMENTATIONS.declare("none", "the images as they are")
AUGMENTATIONS.declare("crop-flip", "a random 4-pixel shift (zero border) and a random mirror")
AUGMENTATIONS.declare("shift2", "a random shift of up to 2 pixels")
AUGMENTATIONS.declare("shift2-flip", "a random 2-pixel shift and a random mirror")
AUGMENTATIONS.declare("shift2-altflip", "a 2-pixel shift, each image mirrored every other epoch")
AUGMENTATIONS.declare("reflect2-flip", "shift2-flip with the border reflected instead of zeros")
AUGMENTATIONS.declare("reflect2-altflip", "shift2-altflip with the border reflected (airbench94's)")
AUGMENTATIONS.declare("crop-flip-cutout", "crop-flip plus a 12-pixel cutout (airbench96's)")
AUGMENTATIONS.declare("rrc-flip", "RandomResizedCrop and a random mirror (photos)")
