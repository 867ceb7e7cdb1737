"""``python -m sslcourse ...`` (and ``torchrun -m sslcourse pretrain ...``): the ``sslcourse`` command."""
import sys

from .cli import main

sys.exit(main())
