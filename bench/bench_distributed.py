"""Scaling of ``sslcourse pretrain``: one process against N processes, the same global batch.

    python bench/bench_distributed.py                       # CPU: 1 process x 2 threads vs 2 gloo processes x 1
    python bench/bench_distributed.py --processes 8 --preset gpu --epochs 2   # a GPU node: 1 GPU vs 8 GPUs

Both sides are the real command (``python -m sslcourse pretrain METHOD`` and ``torchrun --nproc_per_node N
-m sslcourse pretrain METHOD``), with ``--shards N`` on both, so they train on the same global batches
and end with the same weights up to float rounding (``tests/test_distributed.py``). The script prints
each side's images per second (training only: the kNN monitor and the probes excluded), the images per
second per process, the speed-up and the scaling efficiency (speed-up / N), and both sides' kNN.

On the CPU the cores are shared: one process uses all of them through its threads, N processes get
``cores / N`` threads each, so the ratio measures data parallelism against intra-op parallelism on the
same silicon. On a GPU node each process has a GPU of its own, and the ratio is the multi-GPU scaling.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.benchutil import DEFAULT_DATA, ROOT  # noqa: E402


def pretrain(method: str, processes: int, shards: int, args, out: Path) -> dict:
    """Run the command on ``processes`` processes; return its metrics JSON."""
    threads = max(1, (os.cpu_count() or 1) // processes) if args.device == "cpu" else 1
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
                if processes > 1 else [sys.executable])
    command = [*launcher, "-m", "sslcourse", "pretrain", method, "--preset", args.preset, "--out", str(out),
               "--shards", str(shards), "--epochs", str(args.epochs), "--dataset", args.dataset,
               *(["--device", args.device] if args.device == "cpu" else [])]
    print(f"$ OMP_NUM_THREADS={threads} {' '.join(command)}", flush=True)
    proc = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = [line for line in proc.stdout.splitlines() if "sslcourse pretrain" in line or "Error" in line]
    print("\n".join(tail[-3:]), flush=True)
    if proc.returncode:
        raise SystemExit(f"bench_distributed: the run on {processes} process(es) failed:\n{proc.stdout[-4000:]}")
    return json.loads((out / f"{method}-{args.preset}.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="moco", choices=["denoising", "context_encoder", "relative_position", "rotation", "moco"])
    parser.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "gpu"])
    parser.add_argument("--processes", type=int, default=2, help="N, the processes of the parallel side")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="cifar10-jpeg.npz, or 'embedded'")
    args = parser.parse_args()
    args.dataset = "embedded" if args.data == "embedded" else f"npz:{args.data}"
    if args.data != "embedded" and not Path(args.data).exists():
        raise SystemExit(f"bench_distributed: expected the CIFAR-10 archive at {args.data}; pass --data PATH or "
                         "--data embedded.")
    with tempfile.TemporaryDirectory() as tmp:
        one = pretrain(args.method, 1, args.processes, args, Path(tmp) / "one")
        many = pretrain(args.method, args.processes, args.processes, args, Path(tmp) / "many")
    speedup = many["images_per_second"] / one["images_per_second"]
    print(f"\n{args.method}, preset {args.preset}, {args.epochs} epochs, global batch {one['global_batch']}, "
          f"{one['device']}, {os.cpu_count()} cores")
    print("| side | images/s | images/s per process | training | kNN |")
    print("|---|---:|---:|---:|---:|")
    for name, m in (("1 process", one), (f"{args.processes} processes", many)):
        print(f"| {name} | {m['images_per_second']:.0f} | {m['images_per_second_per_process']:.0f} | "
              f"{m['training_minutes'] * 60:.1f} s | {m['knn']:.2f}% |")
    print(f"speed-up {speedup:.2f}x, scaling efficiency {speedup / args.processes:.0%}; "
          f"kNN difference {many['knn'] - one['knn']:+.2f} points")


if __name__ == "__main__":
    main()
