"""sslcourse: the support package of a hands-on course on self-supervised learning.

The notebooks teach the methods; this package holds what they share. Read it bottom up:

* ``environment``: the only reader of environment variables; ``budget``: the presets;
  ``session``: ``setup()``, the first call of every notebook;
* ``data``: datasets and the device-resident loader; ``augment``: batched augmentations;
* ``models``: backbones and heads; ``train``: one training loop, ``fit``;
* ``evaluate``: kNN, linear probe, label efficiency; ``results`` and ``plots``;
* ``recipes``: one module per method notebook, the method's training on top of ``fit``;
* ``checks`` and ``grading``: behind the autograded test cells and nbgrader.

See ``docs/PACKAGE.md``.
"""
from .budget import Budget, choose_budget
from .environment import course_home, data_dir, on_colab, results_dir, use_google_drive
from .session import Session, choose_device, seed_everything, setup

# The release. Keep it equal to pyproject.toml's version; Colab installs the git tag v<version>
# (sslcourse/colab.py), so bumping it is how a new release reaches the notebooks.
__version__ = "0.1.0"
__all__ = ["Budget", "Session", "choose_budget", "choose_device", "course_home", "data_dir", "on_colab",
           "results_dir", "seed_everything", "setup", "use_google_drive", "__version__"]
