"""`gipip-jax` command line: thin wrapper that loads a config file and runs a job.

    gipip-jax attack       --config experiments/configs/gipip_cifar10.py:smoke --workdir W
    gipip-jax study        --config experiments/configs/study_cifar10.py:smoke --workdir W
    gipip-jax train-ae     --config experiments/configs/ae_cifar10.py --workdir W
    gipip-jax train-gan    --config experiments/configs/gan_cifar10.py --workdir W
    gipip-jax train-victim --config experiments/configs/victim_cifar10.py:smoke --workdir W
    gipip-jax utility      --config experiments/configs/utility_cifar10.py:smoke --workdir W
    gipip-jax summarize    W/results.jsonl [...]
    gipip-jax report       W      (a study or experiment directory -> W/report.md, W/report.html)

A config file defines `get_config(arg=None) -> ml_collections.ConfigDict`; `PATH:ARG` passes
ARG. `--set key.sub=value` overrides a field (value parsed as a Python literal, else a string).
Bad input ends with one line `gipip-jax: error: ...` on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys

import ml_collections

COMMANDS = ("attack", "study", "train-ae", "train-gan", "train-victim", "utility")


class ConfigError(ValueError):
    """A config file or override that cannot be used."""


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` by calling its get_config(arg)."""
    path, _, arg = spec.partition(":")
    from gipip_jax.jobs import resolve_path

    path = resolve_path(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location("gipip_config", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:  # a broken config file: report it as such
        raise ConfigError(f"config file {path!r} failed to load: {error!r}") from error
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} defines no get_config(arg)")
    return module.get_config(arg or None)


def apply_override(config: ml_collections.ConfigDict, assignment: str) -> None:
    """Applies one `dotted.key=value` override in place."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise ConfigError(f"override {assignment!r} is not of the form key=value")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        if part not in node:
            raise ConfigError(f"override {key!r}: the config has no field {part!r}")
        node = node[part]
    if leaf not in node:
        raise ConfigError(f"override {key!r}: the config has no field {leaf!r} (fields: {sorted(node.keys())})")
    try:
        node[leaf] = value
    except TypeError as error:
        raise ConfigError(f"override {key!r}: {error}") from error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gipip-jax", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        p = sub.add_parser(command)
        p.add_argument("--config", required=True, help="config file, PATH.py[:ARG]")
        p.add_argument("--workdir", required=True, help="directory for checkpoints and results")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    summarize = sub.add_parser("summarize", help="markdown table of results.jsonl files")
    summarize.add_argument("paths", nargs="+", help="results.jsonl files")
    report = sub.add_parser("report", help="markdown/HTML report with plots and image grids of a study or experiment")
    report.add_argument("workdir", help="a study directory (results.jsonl) or an experiment directory (experiment.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "summarize":
        from gipip_jax import summarize

        return summarize.main(args.paths)
    if args.command == "report":
        from gipip_jax import data, report

        try:
            return report.main(args.workdir)
        except (report.ReportError, data.DataError, ValueError, FileNotFoundError) as error:
            print(f"gipip-jax: error: {error}", file=sys.stderr)
            return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from gipip_jax import checkpoints, client, data, jobs, victims
    from gipip_jax.attack import AttackDivergedError

    expected = (ConfigError, data.DataError, checkpoints.CheckpointError, victims.ShapeError,
                client.UpdateMismatchError, AttackDivergedError, ValueError, FileNotFoundError)
    try:
        config = load_config(args.config)
        for assignment in args.set:
            apply_override(config, assignment)
        from gipip_jax import study, utility

        job = {"attack": jobs.attack, "study": study.run, "train-ae": jobs.train_ae, "train-gan": jobs.train_gan,
               "train-victim": jobs.train_victim, "utility": utility.run}[args.command]
        job(config, args.workdir)
    except expected as error:
        print(f"gipip-jax: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
