"""sslcourse: the support package of a hands-on course on self-supervised learning.

The notebooks teach the methods; this package holds what they share: budget presets,
datasets, batched augmentation, backbones, one training loop, evaluation, results and
plots, and the checks behind the autograded test cells. See ``docs/PACKAGE.md``.
"""
from .budget import Budget, choose_budget
from .runtime import choose_device, course_home, data_dir, results_dir, seed_everything, setup

__version__ = "0.1.0"
__all__ = ["Budget", "choose_budget", "choose_device", "course_home", "data_dir", "results_dir",
           "seed_everything", "setup", "__version__"]
