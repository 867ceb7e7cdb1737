"""The ``sslcourse`` command.

    sslcourse doctor              what this machine will run: versions, device, preset, data
    sslcourse data [NAME]         fetch or build a dataset into the cache (cifar10, stl10, embedded)
    sslcourse data --import PATH  cache CIFAR-10 from a folder of images or a cifar10-jpeg.npz archive
    sslcourse check-submissions [DIR]            list submissions that lost their nbgrader metadata
    sslcourse restore-metadata SUBMISSION RELEASE  copy the metadata back from the release (by cell id)
    sslcourse autograde ID [--course DIR] [--no-sandbox] [--sandbox-LIMIT N] [-- NBGRADER ARGS]
                                                 nbgrader autograde ID, each kernel in the sandbox
                                                 (sslcourse.sandbox), then the grading report
    sslcourse report ID [--course DIR]           the grading report alone: reports/ID.md and .csv
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
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
              "in a throw-away copy of the course or a container.")


def report(assignment: str, course: str) -> int:
    from .report import write_report

    path, reports = write_report(Path(course), assignment)
    review = [r.student for r in reports if r.needs_review]
    print(f"grading report for {assignment}: {path} ({len(reports)} submissions, {len(review)} to review"
          + (f": {', '.join(review)}" if review else "") + ")")
    return 0


def autograde(assignment: str, course: str, extra: list[str], *, sandbox: bool = True,
              limits: dict | None = None) -> int:
    """nbgrader autograde, each kernel in the sandbox of :mod:`sslcourse.sandbox` where bwrap can build it."""
    import subprocess
    import tempfile

    from . import environment
    from . import sandbox as box

    course_path = Path(course).resolve()
    try:
        settings = box.limits_from(limits or {})
    except ValueError as error:
        raise SystemExit(f"sslcourse autograde: {error}") from None
    why = box.why_not() if sandbox else "--no-sandbox was given"
    env = environment.tool_environment()
    with tempfile.TemporaryDirectory(prefix="sslcourse-sandbox-") as scratch:
        if why is None:
            data = environment.read().data_dir
            kernel_env = environment.kernel_environment(python_bin=Path(sys.executable).parent,
                                                        package_parent=Path(__file__).resolve().parent.parent,
                                                        data=data)
            log = course_path / "reports" / "sandbox" / assignment
            shutil.rmtree(log, ignore_errors=True)
            runtime = box.prepare(Path(scratch), data=data, env=kernel_env, log=log, limits=settings)
            env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(Path(scratch, "jupyter")),
                                                                env.get("JUPYTER_PATH")]))
            env["JUPYTER_RUNTIME_DIR"] = str(runtime)
            extra = [*box.nbgrader_args(runtime), *extra]
            print(f"sslcourse autograde: sandboxed kernels (bubblewrap): each sees only its submission folder, "
                  f"the installed packages and the dataset cache {data} (read-only); no network; limits "
                  f"{settings}", flush=True)
        else:
            print("=" * 78 + "\n" + NO_SANDBOX + f"\n(no sandbox because {why})\n" + "=" * 78, flush=True)
        try:
            command = ["nbgrader", "autograde", assignment, *extra]
            code = subprocess.run(command, cwd=course_path, env=env).returncode
            missing = _not_autograded(course_path, assignment) if code != 0 else []
            if missing:
                # nbgrader stops the batch at some broken submissions (duplicated grade ids, a kernel
                # that died): grade each one left over on its own, so the others still get their grades.
                print(f"sslcourse autograde: nbgrader stopped early; grading {len(missing)} submission(s) one by "
                      f"one: {', '.join(missing)}", flush=True)
                for student in missing:
                    subprocess.run([*command, f"--student={student}"], cwd=course_path, env=env)
                left = _not_autograded(course_path, assignment)
                print(f"sslcourse autograde: {len(missing) - len(left)} of them graded on their own"
                      + (f"; nbgrader refused {', '.join(left)} (see the report)" if left else ""), flush=True)
                code = 1 if left else 0
        finally:
            if why is None:  # a kernel killed before it could give its folder back
                box.give_back_folders(sorted((course_path / "autograded").glob(f"*/{assignment}")))
    if code != 0:
        print(f"sslcourse autograde: nbgrader exited with {code}; the report shows what was graded.")
    report(assignment, course)
    return code


def _not_autograded(course: Path, assignment: str) -> list[str]:
    """Students with a submission of ``assignment`` but no autograded notebook of it."""
    return [folder.parent.name for folder in sorted((course / "submitted").glob(f"*/{assignment}"))
            if not list((course / "autograded" / folder.parent.name / assignment).glob("*.ipynb"))]


SANDBOX_LIMITS = {"memory_mib": "MiB of address space per process", "processes": "processes",
                  "file_mib": "MiB per written file", "cpu_s": "CPU seconds per process",
                  "wall_s": "seconds per kernel", "tmp_mib": "MiB of /tmp", "output_mib": "MiB of notebook output"}


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
    p.add_argument("--no-sandbox", action="store_true",
                   help="run kernels unconfined, as plain nbgrader does (only for trusted submissions)")
    for name, unit in SANDBOX_LIMITS.items():
        p.add_argument(f"--sandbox-{name.replace('_', '-')}", type=int, metavar="N", help=f"sandbox limit: {unit}")
    p = sub.add_parser("report", help="the grading report of an autograded assignment")
    p.add_argument("assignment")
    p.add_argument("--course", default=".", help="the course folder (default: here)")
    p = sub.add_parser("check-submissions", help="list submissions whose nbgrader metadata was stripped")
    p.add_argument("folder", nargs="?", default="submitted")
    p = sub.add_parser("restore-metadata", help="copy nbgrader metadata back into a stripped submission")
    p.add_argument("submission")
    p.add_argument("release")
    argv = list(sys.argv[1:] if argv is None else argv)
    passed_on = argv[argv.index("--") + 1:] if "--" in argv else []   # autograde ID [...] -- nbgrader args
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.command == "check-submissions":
        return check_submissions(args.folder)
    if args.command == "restore-metadata":
        return restore_metadata(args.submission, args.release)
    if args.command == "autograde":
        limits = {name: getattr(args, f"sandbox_{name}") for name in SANDBOX_LIMITS}
        return autograde(args.assignment, args.course, passed_on, sandbox=not args.no_sandbox, limits=limits)
    if args.command == "report":
        return report(args.assignment, args.course)
    if args.command == "doctor":
        return doctor()
    return data(args.name, args.source)


if __name__ == "__main__":
    sys.exit(main())
