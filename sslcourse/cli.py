"""The ``sslcourse`` command.

    sslcourse doctor              what this machine will run: versions, device, preset, data
    sslcourse data [NAME]         fetch or build a dataset into the cache (cifar10, stl10, embedded)
    sslcourse data --import PATH  cache CIFAR-10 from a folder of images or a cifar10-jpeg.npz archive
    sslcourse check-submissions [DIR]            list submissions that lost their nbgrader metadata
    sslcourse restore-metadata SUBMISSION RELEASE  copy the metadata back from the release (by cell id)
    sslcourse autograde ID [--course DIR]        nbgrader autograde ID, then the grading report
    sslcourse report ID [--course DIR]           the grading report alone: reports/ID.md and .csv
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path


def doctor() -> int:
    import torch
    import torchvision

    from .budget import choose_budget
    from .data import cache_path
    from .environment import data_dir, results_dir
    from .session import choose_device

    print(f"python       {platform.python_version()} ({sys.executable})")
    print(f"torch        {torch.__version__}   torchvision {torchvision.__version__}")
    for name in ("ipywidgets", "jupyterlab", "nbgrader"):
        try:
            module = __import__(name)
            print(f"{name:<12} {getattr(module, '__version__', '?')}")
        except ImportError:
            print(f"{name:<12} not installed")
    device = choose_device()
    print(f"device       {device}" + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""))
    print(f"threads      {torch.get_num_threads()}")
    from .cpu_bf16 import describe
    print(f"cpu          {describe()}")
    print(f"{choose_budget()}")
    print(f"data dir     {data_dir()}")
    for name in ("cifar10", "stl10", "embedded"):
        path = cache_path(name)
        print(f"  {name:<10} {'cached' if path.exists() else 'not cached'} ({path.name})")
    print(f"results dir  {results_dir()}")
    return 0


def data(name: str, source: str | None) -> int:
    from .budget import make_budget
    from .data import cache_path, load_cifar10_npz, load_dataset, load_image_folder, save_cache
    from .environment import data_dir

    if source is not None:
        path = Path(source)
        dataset = load_cifar10_npz(path) if path.suffix == ".npz" else load_image_folder(path)
        dataset.name = name
        save_cache(dataset, cache_path(name))
        print(f"cached {dataset!r} as '{name}' in {data_dir()}")
        return 0
    budget = make_budget("gpu", "sslcourse data")  # the full dataset, downloads allowed
    dataset = load_dataset(name, budget=budget)
    print(f"ready: {dataset!r}")
    return 0


def check_submissions(folder: str) -> int:
    import nbformat

    from .grading import has_nbgrader_metadata

    bad = [p for p in sorted(Path(folder).glob("*/*/*.ipynb"))
           if not has_nbgrader_metadata(nbformat.read(p, as_version=4))]
    for path in bad:
        print(f"no nbgrader metadata (would autograde to 0): {path}")
    print(f"{len(bad)} submission(s) without nbgrader metadata under {folder}")
    return 1 if bad else 0


def restore_metadata(submission: str, release: str) -> int:
    from .grading import repair_file

    matched = repair_file(submission, release)
    print(f"restored nbgrader metadata on {matched} cells of {submission} (original kept as .ipynb.orig)")
    return 0


NO_SANDBOX = ("sslcourse autograde: NO SANDBOX. Submissions run with your rights, as under plain nbgrader: "
              "they can read solutions/ and gradebook.db and use the network. Grade untrusted submissions "
              "in a throw-away copy of the course or a container. (Kernel isolation is not built yet.)")


def report(assignment: str, course: str) -> int:
    from .report import write_report

    path, reports = write_report(Path(course), assignment)
    review = [r.student for r in reports if r.needs_review]
    print(f"grading report for {assignment}: {path} ({len(reports)} submissions, {len(review)} to review"
          + (f": {', '.join(review)}" if review else "") + ")")
    return 0


def autograde(assignment: str, course: str, extra: list[str]) -> int:
    import subprocess

    print("=" * 78 + "\n" + NO_SANDBOX + "\n" + "=" * 78, flush=True)
    result = subprocess.run(["nbgrader", "autograde", assignment, *extra], cwd=course)
    if result.returncode != 0:
        print(f"sslcourse autograde: nbgrader exited with {result.returncode}; the report shows what was graded.")
    report(assignment, course)
    return result.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sslcourse", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="show versions, device, budget preset and cached data")
    p = sub.add_parser("data", help="download or build a dataset into the cache")
    p.add_argument("name", nargs="?", default="cifar10", choices=["cifar10", "stl10", "embedded"])
    p.add_argument("--import", dest="source", metavar="PATH",
                   help="cache this image folder (train/<class>/..., test/<class>/...) or .npz archive instead of downloading")
    p = sub.add_parser("autograde", help="nbgrader autograde, then the grading report")
    p.add_argument("assignment")
    p.add_argument("--course", default=".", help="the course folder (default: here)")
    p.add_argument("nbgrader_args", nargs=argparse.REMAINDER, help="passed on to nbgrader autograde")
    p = sub.add_parser("report", help="the grading report of an autograded assignment")
    p.add_argument("assignment")
    p.add_argument("--course", default=".", help="the course folder (default: here)")
    p = sub.add_parser("check-submissions", help="list submissions whose nbgrader metadata was stripped")
    p.add_argument("folder", nargs="?", default="submitted")
    p = sub.add_parser("restore-metadata", help="copy nbgrader metadata back into a stripped submission")
    p.add_argument("submission")
    p.add_argument("release")
    args = parser.parse_args(argv)
    if args.command == "check-submissions":
        return check_submissions(args.folder)
    if args.command == "restore-metadata":
        return restore_metadata(args.submission, args.release)
    if args.command == "autograde":
        return autograde(args.assignment, args.course, [a for a in args.nbgrader_args if a != "--"])
    if args.command == "report":
        return report(args.assignment, args.course)
    if args.command == "doctor":
        return doctor()
    return data(args.name, args.source)


if __name__ == "__main__":
    sys.exit(main())
