"""A stand-in for ``google.colab.drive``: ``mount`` makes a local folder look like a mounted Drive.

Colab's ``drive.mount(mountpoint)`` asks the student for access, then shows their Drive under
``<mountpoint>/MyDrive``. This one creates that folder and records the call, and it refuses any
mountpoint outside ``$FAKE_COLAB_ROOT`` (a test's temporary folder), so a test can never write to
the real ``/content``. Each call is one JSON line in ``$FAKE_COLAB_ROOT/mount_calls.jsonl``.
"""
import json
import os
from pathlib import Path

ROOT_VARIABLE = "FAKE_COLAB_ROOT"
CALLS_FILE = "mount_calls.jsonl"


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    """Create ``<mountpoint>/MyDrive`` (inside ``$FAKE_COLAB_ROOT`` only) and record the call."""
    if not os.environ.get(ROOT_VARIABLE):
        raise RuntimeError(f"the google.colab stand-in needs ${ROOT_VARIABLE}: the folder it may mount into")
    root = Path(os.environ[ROOT_VARIABLE]).resolve()
    point = Path(mountpoint).resolve()
    if point != root and root not in point.parents:
        raise RuntimeError(f"the google.colab stand-in mounts only inside ${ROOT_VARIABLE} ({root}), "
                           f"not at {point}")
    (point / "MyDrive").mkdir(parents=True, exist_ok=True)
    call = {"mountpoint": str(mountpoint), "force_remount": force_remount, "readonly": readonly}
    with open(root / CALLS_FILE, "a", encoding="utf-8") as calls:
        calls.write(json.dumps(call) + "\n")
    print(f"Mounted at {mountpoint}")          # what Colab prints
