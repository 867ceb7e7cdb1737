"""Images for the course: named datasets (:mod:`.datasets`), the offline set (:mod:`.embedded`),
and the device-resident loader (:mod:`.batches`).

Everything a notebook needs is importable from here, e.g.
``from sslcourse.data import DeviceBatches, load_dataset``.
"""
from .batches import DeviceBatches, normalize, to_float
from .datasets import (CIFAR10_CLASSES, DatasetError, ImageDataset, cache_path, embedded_digits, load_cifar10,
                       load_cifar10_npz, load_dataset, load_image_folder, load_stl10, save_cache)
from .speech import SpeechDataset, log_spectrogram, synthetic_speech

__all__ = ["DeviceBatches", "normalize", "to_float", "CIFAR10_CLASSES", "DatasetError", "ImageDataset",
           "cache_path", "embedded_digits", "load_cifar10", "load_cifar10_npz", "load_dataset",
           "load_image_folder", "load_stl10", "save_cache", "SpeechDataset", "log_spectrogram", "synthetic_speech"]
