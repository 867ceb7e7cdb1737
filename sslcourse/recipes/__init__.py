"""One module per method notebook: the method's training, read top to bottom.

Each recipe module holds the recipe table per preset, the model container, the loader, the
optimizer and schedule, and ``run(session, ..., deadline_s=None)``, which trains through
:func:`sslcourse.train.fit`. The functions students write come in as arguments, so graded
code stays in the notebook, and the notebook's locked cells and the ``bench/`` scripts call
the same ``run``: one implementation is measured, and it is the one students run.

* :mod:`.rotation`: ``05_rotation`` (RotNet, Gidaris et al., 2018);
* :mod:`.moco`: ``07_moco`` (MoCo v2, He et al., 2020; Chen et al., 2020).
"""
