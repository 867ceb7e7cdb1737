"""The ``sslcourse`` command.

    sslcourse doctor              what this machine will run, and the fix for anything wrong
    sslcourse data [NAME]         fetch or build a dataset into the cache (cifar10, stl10, embedded)
    sslcourse data --import PATH  cache CIFAR-10 from a folder of images or a cifar10-jpeg.npz archive
    sslcourse check-submissions [DIR]            list submissions that lost their nbgrader metadata
    sslcourse restore-metadata SUBMISSION RELEASE  copy the metadata back from the release (by cell id)
    sslcourse autograde ID [--course DIR] [--jobs N] [--db URL] [--no-sandbox] [--sandbox-LIMIT N]
                           [-- NBGRADER ARGS]    nbgrader autograde ID, N submissions at a time (default:
                                                 the cores), each kernel
                                                 in the sandbox (sslcourse.sandbox), then the grading report;
                                                 a second call grades only what is new or failed
    sslcourse report ID [--course DIR] [--db URL]  the grading report alone: reports/ID.md and .csv
    sslcourse pretrain METHOD [--preset P] [--out DIR] [--epochs N] [--shards N] [--notebook PATH]
                                                 the method's reference recipe on this process; under
                                                 torchrun --nproc_per_node=N -m sslcourse pretrain ...
                                                 on N processes (sslcourse.pretrain)
    sslcourse class-report [ID ...] [--course DIR] [--db URL]
                                                 every assignment at a glance: reports/class.html and class.csv
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def doctor() -> int:
    """Versions, device, preset, data, results and JupyterLab's Validate button, each with its fix (sslcourse.doctor)."""
    from .doctor import run

    return run()


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


def report(assignment: str, course: str, db: str | None = None) -> int:
    from .report import write_report

    path, reports = write_report(Path(course), assignment, db)
    review = [r.student for r in reports if r.needs_review]
    print(f"grading report for {assignment}: {path} ({len(reports)} submissions, {len(review)} to review"
          + (f": {', '.join(review)}" if review else "") + ")")
    return 0


def class_report(assignments: list[str], course: str, db: str | None = None) -> int:
    from .class_report import write_class_report

    try:
        written = write_class_report(Path(course), assignments or None, db)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"sslcourse class-report: {error}") from None
    review = sum(len(students) for students in written.to_review.values())
    print(f"class report: {written.html} and {written.csv} ({len(written.students)} students, "
          f"{len(written.assignments)} assignments, {review} submission(s) to review)")
    return 0


def autograde(assignment: str, course: str, extra: list[str], *, sandbox: bool = True,
              limits: dict | None = None, jobs: int | None = None, db: str | None = None) -> int:
    """nbgrader autograde of every new or failed submission, ``jobs`` at a time (:mod:`sslcourse.autograde`),
    each kernel in the sandbox of :mod:`sslcourse.sandbox` where bwrap can build it; then the grading report."""
    import fnmatch
    import tempfile

    from . import environment
    from . import sandbox as box
    from .autograde import default_jobs, grade_all, submissions, to_grade

    course_path = Path(course).resolve()
    # As many at a time as there are cores: each worker's kernels run as a uid of their own
    # (sandbox.sandbox_uid), so RLIMIT_NPROC, which counts a uid's processes, is each kernel's own.
    jobs = min(default_jobs(), box.MAX_WORKERS) if jobs is None else jobs
    if not 1 <= jobs <= box.MAX_WORKERS:
        raise SystemExit(f"sslcourse autograde: --jobs must be between 1 and {box.MAX_WORKERS}, got {jobs}")
    limits = dict(limits or {})
    try:
        settings = box.limits_from(limits)
    except ValueError as error:
        raise SystemExit(f"sslcourse autograde: {error}") from None
    # nbgrader's own student filter becomes ours: each process is given exactly one student.
    pattern = next((arg.split("=", 1)[1] for arg in extra
                    if arg.startswith(("--student=", "--CourseDirectory.student_id="))), "*")
    extra = [arg for arg in extra if not arg.startswith(("--student=", "--CourseDirectory.student_id="))]
    if db:
        extra = [f"--CourseDirectory.db_url={db}", *extra]
    force = "--force" in extra or "-f" in extra
    every = [s for s in submissions(course_path, assignment) if fnmatch.fnmatchcase(s, pattern)]
    students = [s for s in to_grade(course_path, assignment, force=force) if s in every]
    print(f"sslcourse autograde: {assignment}: {len(students)} submission(s) to grade, "
          f"{len(every) - len(students)} already graded and unchanged; {jobs} at a time", flush=True)
    why = box.why_not() if sandbox else "--no-sandbox was given"
    env = environment.tool_environment()
    kernel_args = None
    with tempfile.TemporaryDirectory(prefix="sslcourse-sandbox-") as scratch:
        if why is None:
            data = environment.read().data_dir
            kernel_env = environment.kernel_environment(python_bin=Path(sys.executable).parent,
                                                        package_parent=Path(__file__).resolve().parent.parent,
                                                        data=data)
            log = course_path / "reports" / "sandbox" / assignment
            runtime = box.prepare(Path(scratch), data=data, env=kernel_env, log=log, limits=settings, workers=jobs)
            env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [str(Path(scratch, "jupyter")),
                                                                env.get("JUPYTER_PATH")]))
            env["JUPYTER_RUNTIME_DIR"] = str(runtime)
            kernel_args = lambda worker: box.nbgrader_args(runtime, worker)  # noqa: E731
            print(f"sslcourse autograde: sandboxed kernels (bubblewrap): each sees only its submission folder, "
                  f"the installed packages and the dataset cache {data} (read-only); no network; limits "
                  f"{settings}", flush=True)
        else:
            print("=" * 78 + "\n" + NO_SANDBOX + f"\n(no sandbox because {why})\n" + "=" * 78, flush=True)
        try:
            grade_all(course_path, assignment, ["nbgrader", "autograde", assignment, *extra], env=env, jobs=jobs,
                      students=students, kernel_args=kernel_args)
        finally:
            if why is None:  # a kernel killed before it could give its folder back
                box.give_back_folders(sorted((course_path / "autograded").glob(f"*/{assignment}")))
    left = [s for s in _not_autograded(course_path, assignment) if s in students]
    if left:
        print(f"sslcourse autograde: nbgrader could not grade {', '.join(left)} (see the report, and "
              f"reports/autograde/{assignment}/<student>.log); run the same command again to retry only those")
    report(assignment, course, db)
    return 1 if left else 0


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
    sub.add_parser("doctor", help="check versions, device, preset, data and the Validate button; print fixes")
    p = sub.add_parser("data", help="download or build a dataset into the cache")
    p.add_argument("name", nargs="?", default="cifar10", choices=["cifar10", "stl10", "embedded"])
    p.add_argument("--import", dest="source", metavar="PATH",
                   help="cache this image folder (train/<class>/..., test/<class>/...) or .npz archive instead of downloading")
    p = sub.add_parser("autograde", help="nbgrader autograde, then the grading report")
    p.add_argument("assignment")
    p.add_argument("--course", default=".", help="the course folder (default: here)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="grade N submissions at once (default: the cores, %d here; each worker's sandboxed kernels "
                        "run as a uid of their own)" % (os.cpu_count() or 1))
    p.add_argument("--db", metavar="URL", help="the gradebook's URL (nbgrader's db_url), e.g. postgresql://host/course")
    p.add_argument("--no-sandbox", action="store_true",
                   help="run kernels unconfined, as plain nbgrader does (only for trusted submissions)")
    for name, unit in SANDBOX_LIMITS.items():
        p.add_argument(f"--sandbox-{name.replace('_', '-')}", type=int, metavar="N", help=f"sandbox limit: {unit}")
    p = sub.add_parser("report", help="the grading report of an autograded assignment")
    p.add_argument("assignment")
    p.add_argument("--course", default=".", help="the course folder (default: here)")
    p.add_argument("--db", metavar="URL", help="the gradebook's URL (default: sqlite gradebook.db in the course)")
    p = sub.add_parser("class-report", help="every assignment at a glance: reports/class.html and class.csv")
    p.add_argument("assignments", nargs="*", metavar="ID", help="assignments (default: every one in the gradebook)")
    p.add_argument("--course", default=".", help="the course folder (default: here)")
    p.add_argument("--db", metavar="URL", help="the gradebook's URL (default: sqlite gradebook.db in the course)")
    p = sub.add_parser("pretrain", help="pretrain a method's reference encoder (under torchrun: on many processes)")
    p.add_argument("method", choices=["denoising", "context_encoder", "split_brain", "relative_position", "rotation",
                                      "cpc", "moco"])
    p.add_argument("--preset", default="gpu", choices=["smoke", "cpu", "gpu"], help="whose recipe (default gpu)")
    p.add_argument("--out", default="reference", help="folder of the encoder, metrics, manifest and checkpoint")
    p.add_argument("--epochs", type=int, help="default: the recipe's")
    p.add_argument("--shards", type=int, help="how the data is cut (default: the number of processes); keep it "
                                              "to resume on another number of processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="auto", help="as sslcourse data (default: CIFAR-10 outside smoke)")
    p.add_argument("--device", help="e.g. cpu (gloo) on a GPU machine; default: cuda:LOCAL_RANK if present")
    p.add_argument("--notebook", help="the solution notebook (default solutions/<id>/<id>.ipynb)")
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
        return autograde(args.assignment, args.course, passed_on, sandbox=not args.no_sandbox, limits=limits,
                         jobs=args.jobs, db=args.db)
    if args.command == "report":
        return report(args.assignment, args.course, args.db)
    if args.command == "class-report":
        return class_report(args.assignments, args.course, args.db)
    if args.command == "doctor":
        return doctor()
    if args.command == "pretrain":
        from .pretrain import pretrain

        try:
            pretrain(args.method, preset=args.preset, out=args.out, notebook=args.notebook, seed=args.seed,
                     epochs=args.epochs, shards=args.shards, dataset=args.dataset, device=args.device)
        except ValueError as error:
            print(f"sslcourse pretrain: {error}", file=sys.stderr)
            return 2
        return 0
    return data(args.name, args.source)


if __name__ == "__main__":
    sys.exit(main())
