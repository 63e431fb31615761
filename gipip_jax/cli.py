"""`gipip-jax` command line: thin wrapper that loads a config file and runs a job.

    gipip-jax attack       --config experiments/configs/gipip_cifar10.py:smoke --workdir W   (a study, one attack per device)
    gipip-jax study        --config experiments/configs/study_cifar10.py:smoke --workdir W   (in waves)
    gipip-jax train-ae     --config experiments/configs/ae_cifar10.py --workdir W
    gipip-jax train-gan    --config experiments/configs/gan_cifar10.py --workdir W
    gipip-jax train-victim --config experiments/configs/victim_cifar10.py:smoke --workdir W
    gipip-jax utility      --config experiments/configs/utility_cifar10.py:smoke --workdir W
    gipip-jax train-inverter --config experiments/configs/inverter_cifar10.py:smoke --workdir W
    gipip-jax audit        --model NAME|PATH.py:Class --data cifar10 --batch-size 1 [--defense F=V ...] --workdir W
                           (how much one federated setup leaks: W/report.md, W/report.html; see gipip_jax/audit.py)
    gipip-jax summarize    W/results.jsonl [...]
    gipip-jax report       W      (a study or experiment directory -> W/report.md, W/report.html)

A config file defines `get_config(arg=None) -> ml_collections.ConfigDict`; `PATH:ARG` passes
ARG. `--set key.sub=value` overrides a field (value parsed as a Python literal, else a string).
Bad input ends with one line `gipip-jax: error: ...` on stderr and exit status 2 (config fields are
checked against schema.py's table first; `--help-config` lists them); a study interrupted by SIGINT
or SIGTERM with one line and status 130 or 143 (rerun to resume).
"""

from __future__ import annotations

import argparse
import os
import sys

from gipip_jax import schema
from gipip_jax.configs import ConfigError, apply_override, load_config  # noqa: F401  (also cli's API)

COMMANDS = ("attack", "study", "train-ae", "train-gan", "train-victim", "utility", "train-inverter")


def error_line(error: BaseException) -> str:
    """`gipip-jax: error: ...` on one line, whatever the error's message holds."""
    text = " ".join(str(error).split()) or type(error).__name__
    return f"gipip-jax: error: {text}"


def input_errors() -> tuple[type[BaseException], ...]:
    """Errors of input (config, data, checkpoints, the file system): one line, exit status 2.
    Anything else is a bug and keeps its traceback."""
    from gipip_jax import checkpoints, client, data, victims

    return (ConfigError, data.DataError, checkpoints.CheckpointError, victims.ShapeError,
            client.UpdateMismatchError, ValueError, OSError)


def fail(error: BaseException) -> int:
    print(error_line(error), file=sys.stderr)
    return 2


def _check_workdir(workdir: str) -> None:
    """A work directory must be a directory, or not exist yet under directories only."""
    path = os.path.abspath(workdir)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        where = "" if path == os.path.abspath(workdir) else f" is inside {path!r}, which"
        raise ConfigError(f"--workdir {workdir!r}{where} is a file, not a directory")


def first_missing(workdir: str) -> str | None:
    """The outermost folder of `workdir`'s path that does not exist yet (a run creates it), or None."""
    path, missing = os.path.abspath(workdir), None
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        missing, path = path, os.path.dirname(path)
    return missing


def remove_if_empty(root: str) -> None:
    """Removes folder `root` if it holds no files (only empty folders): what a run that failed to
    start leaves behind. A run that wrote anything (results, checkpoints, caches) keeps it to resume."""
    if not os.path.isdir(root) or os.path.islink(root):
        return
    for folder, subfolders, files in os.walk(root):
        if files or any(os.path.islink(os.path.join(folder, name)) for name in subfolders):
            return
    for folder, _, _ in os.walk(root, topdown=False):
        try:
            os.rmdir(folder)
        except OSError:   # another process wrote to it meanwhile: leave the rest
            return


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gipip-jax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command)
        p.add_argument("--config", required=True, help="config file, PATH.py[:ARG]")
        p.add_argument("--workdir", required=True, help="directory for checkpoints and results")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
        p.add_argument("--help-config", action=schema.HelpConfig, command=command, help="list config fields, exit")
    from gipip_jax import audit

    audit.add_arguments(sub.add_parser("audit", help="how much does my federated setup leak? (a report and a verdict)",
                                       description=audit.__doc__.split("\n\n")[0]))
    summarize = sub.add_parser("summarize", help="markdown table of results.jsonl files")
    summarize.add_argument("paths", nargs="+", help="results.jsonl files")
    report = sub.add_parser("report", help="markdown/HTML report with plots and image grids of a study or experiment")
    report.add_argument("workdir", help="a study directory (results.jsonl) or an experiment directory (experiment.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "summarize":
        from gipip_jax import results, summarize

        try:
            return summarize.main(args.paths)
        except (results.ResultsError, OSError) as error:
            return fail(error)
    if args.command == "report":
        from gipip_jax import data, report

        try:
            return report.main(args.workdir)
        except (report.ReportError, data.DataError, ValueError, OSError) as error:
            return fail(error)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from gipip_jax import jobs, workdir

    expected = input_errors()
    created = first_missing(args.workdir)   # removed again if the run fails before writing anything
    try:
        _check_workdir(args.workdir)
        if args.command == "audit":
            from gipip_jax import audit

            return audit.main(args)
        config = load_config(args.config)
        for assignment in args.set:
            apply_override(config, assignment)
        schema.validate(config)   # every declared field, before any data is decoded
        from gipip_jax import study, utility

        if args.command == "attack":   # a study run one attack per device
            config = study.sequential(config)
        job = {"attack": study.run, "study": study.run, "train-ae": jobs.train_ae, "train-gan": jobs.train_gan,
               "train-victim": jobs.train_victim, "utility": utility.run, "train-inverter": jobs.train_inverter}[args.command]
        job(config, args.workdir)
    except workdir.Interrupted as stop:   # SIGINT / SIGTERM in a study: one line, status 130 / 143
        print(f"gipip-jax: {stop}", file=sys.stderr)
        return workdir.leave(stop.status)
    except expected as error:
        if args.command in ("attack", "study"):   # a lost peer of a multi-process study: exit now, skip JAX's exit barrier
            from gipip_jax import distributed
            distributed.exit_if_peer_lost(error)
        if created:
            remove_if_empty(created)
        return workdir.leave(fail(error))   # in a multi-process group: at once (say, process 0 refused W's lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
