"""A stand-in for Colab's ``google.colab`` package, for tests only (tests/test_colab.py).

Put ``tests/fake_colab`` on ``PYTHONPATH`` and import ``google.colab`` (Colab's kernel imports it
at start-up), and ``sslcourse`` takes its Colab code path. ``google`` has no ``__init__.py`` here
on purpose: it stays a namespace package, so other ``google.*`` packages still import.
"""
