"""The config schema: one table of the fields the CLI commands take, with type, allowed range or
choices, and help.

`validate(config)` checks a loaded config (after its `--set` overrides) once, before any data is
decoded or any work directory is created; a bad value raises a ConfigError whose one line names the
field, the value and what the field takes. `help_text(command)` lists the table
(`gipip-jax COMMAND --help-config`).

A field is a dotted path with one meaning in every config that has it; a path that a config lacks
is skipped (each config carries its command's fields). Fields the table does not list pass through
unchecked: a config file may carry notes or blocks for other tools, and `--set` can only set a field
that the file defines (configs.set_field), so an override with a typo is refused before this.
Lists (grid fields, targets.starts, ...) are checked element by element. Groups that have validators
of their own are checked as a whole by them: every combination of the grid's defense fields by
`defenses.parse`, `threat` by `threat_models.check_threat_config`, `aux` by
`data.check_auxiliary_request`, each of the utility's `settings` by `defenses.parse`.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import ml_collections

from gipip_jax.configs import ConfigError

ATTACKS = ("attack", "study")
AE, GAN, VICTIM, UTILITY = ("train-ae",), ("train-gan",), ("train-victim",), ("utility",)
TRAINING = AE + GAN + VICTIM + UTILITY
ALL = ATTACKS + TRAINING
_MISSING = object()


class Field(NamedTuple):
    """One config field. kind: "int" | "number" | "bool" | "text" | "choice" | "path" (a string: "" for
    none, else a file or folder that exists) | "any" (checked by `check` alone); low/high: the range of
    numbers, ends excluded where open_low/open_high; none: what None means where None is allowed ("":
    not allowed); each: the field is a list and every element is checked; check(value) raises
    ValueError for a value that other modules' validators refuse (applied after the kind's check)."""

    kind: str
    help: str
    commands: tuple[str, ...]
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    choices: tuple = ()
    none: str = ""
    each: bool = False
    check: Callable[[Any], Any] | None = None


def _integer(help_text: str, commands: tuple[str, ...], low: int = 0, **kwargs) -> Field:
    return Field("int", help_text, commands, low=low, **kwargs)


def _positive(help_text: str, commands: tuple[str, ...], **kwargs) -> Field:
    return Field("number", help_text, commands, low=0.0, open_low=True, **kwargs)


@functools.cache
def table() -> dict[str, Field]:
    """Every declared field by dotted path, in the order they are checked."""
    from gipip_jax import (adaptive, assembly, attack, data, defenses, engine, metrics, objectives, parameterizations,
                           study, threat_models, training, victims)

    fields = {
        "name": Field("text", "the study's name (its records' attack names start with it)", ATTACKS),
        "seed": _integer("random seed", ALL),
        "data.name": Field("text", f"dataset: {', '.join(data.DATASETS)}, imagenet_resized/SxS or folder:PATH", ALL),
        "data.split": Field("text", "split of the targets (attacks) or of the auxiliary images (priors)",
                            ATTACKS + AE + GAN),
        "data.test_split": Field("text", "split the accuracy is measured on", VICTIM + UTILITY),
        "data.data_dir": Field("path", "folder of the dataset archives", ALL, none="$GIPIP_JAX_DATA or ../shared/data"),
        "data.cache_dir": Field("text", "folder of decoded arrays (made when missing)", ALL,
                                none="$GIPIP_JAX_CACHE or ~/.cache/gipip_jax"),
        "data.image_size": _integer("side the images are resized to", ALL, low=1, none="the dataset's own size"),
        "targets.starts": _integer("target batches, by number in the split's partition into batches", ATTACKS,
                                   each=True),
        "targets.batch_size": _integer("images per client batch", ATTACKS, low=1),
        "targets.unique_labels": Field("bool", "batches of distinct labels (else consecutive images)", ATTACKS),
        "victim.name": Field("text", f"victim model: {', '.join(victims.VICTIMS)}, a registered name or FILE.py:Class",
                             ATTACKS + VICTIM + UTILITY),
        "victim.checkpoint": Field("path", "a trained victim (gipip-jax train-victim); '': untrained", ATTACKS),
        "victim.init_seed": _integer("seed of an untrained victim's weights", ATTACKS),
        "victim.init": Field("choice", "initialization of an untrained victim", ATTACKS + UTILITY,
                             choices=victims.INITS),
        "prior.checkpoint": Field("path", "the AE prior (gipip-jax train-ae), used when grid.as_weight > 0", ATTACKS),
        "prior.offset": Field("number", "the AS offset c", ATTACKS, low=0.0, none="the AE checkpoint's c"),
        "attack.optimizer": Field("choice", "adam, or lbfgs for DLG / iDLG", ATTACKS, choices=attack.OPTIMIZERS),
        "attack.parameterization": Field("choice", "what Adam optimizes (parameterizations.py)", ATTACKS,
                                         choices=tuple(p for p in parameterizations.PARAMETERIZATIONS if p != "dlg")),
        "attack.matching": Field("choice", "gradient matching distance", ATTACKS, choices=objectives.MATCHING),
        "attack.learning_rate": _positive("Adam's learning rate on the pixels", ATTACKS),
        "attack.signed": Field("bool", "signed Adam steps (Inverting Gradients)", ATTACKS),
        "attack.iterations": _integer("optimizer steps per attack (0 only with attack.init='inverter': the network's "
                                      "reconstruction alone)", ATTACKS),
        "attack.init": Field("choice", "where the pixels start: N(0, 1) ('random'), a flat image of the "
                             "normalization's mean colour ('flat'), or the LTI network's output for the target "
                             "update ('inverter', inverter.checkpoint)", ATTACKS, choices=assembly.ATTACK_INITS),
        "inverter.checkpoint": Field("path", "the LTI network (gipip-jax train-inverter), used with attack.init "
                                     "'inverter'", ATTACKS),
        "attack.restarts": _integer("attacks per target and setting, from different keys", ATTACKS, low=1),
        "attack.max_tries": _integer("restarts from a fresh key after a NaN/Inf objective", ATTACKS),
        "attack.restart_selection": Field("choice", "which restart per target is kept", ATTACKS,
                                          choices=study.RESTART_SELECTIONS),
        "attack.labels": Field("choice", "labels the attack uses: given, learned (dlg) or recovered from the update",
                               ATTACKS, choices=study.LABEL_SOURCES),
        "attack": Field("any", "attack.iterations >= 1 unless attack.init is 'inverter'", ATTACKS, check=_steps),
        "threat.kind": Field("choice", "what a client shares", ATTACKS, choices=threat_models.KINDS),
        "threat.local_steps": _integer("client steps per round (fedavg)", ATTACKS, low=1),
        "threat.local_lr": _positive("client learning rate (fedavg)", ATTACKS),
        "threat.local_batch_size": _integer("images per client step (fedavg; 0: the whole batch)", ATTACKS),
        "threat.clients": _integer("clients summed in the secure aggregate", ATTACKS, low=1),
        "threat": Field("any", "the threat model as a whole", ATTACKS,
                        check=lambda group: threat_models.check_threat_config(group.to_dict())),
    }
    for term in objectives.TERMS.values():
        fields[f"grid.{term.weight_field}"] = Field("number", f"weights of the {term.name} term", ATTACKS,
                                                    low=0.0, each=True)
        for option, field in term.options.items():
            fields[f"grid.{field}"] = Field("number", f"the {term.name} term's {option}", ATTACKS, low=0.0, each=True,
                                            none="the term's default (as_offset: the AE checkpoint's c)")
    for field, off in defenses.DEFENSE_DEFAULTS.items():
        fields[f"grid.{field}"] = Field("any", f"defense setting (off: {off!r}; checked by defenses.parse)", ATTACKS,
                                        each=True)
    for field in adaptive.ATTACKER_DEFAULTS:
        fields[f"grid.{field}"] = Field("bool", "the attacker knows the defense (adaptive.py)", ATTACKS, each=True)
    fields["grid"] = Field("any", "every combination of the grid's defense settings", ATTACKS, check=_grid_defenses)
    fields.update({
        "engine.strategy": Field("choice", "how a device runs its attacks (auto: engine.choose_plan's rule)", ATTACKS,
                                 choices=("auto", *engine.STRATEGIES)),
        "engine.attacks_per_device": _integer("attacks per device in a wave (0: engine.choose_plan's rule)", ATTACKS),
        "engine.chunk_size": _integer("steps per compiled chunk", ATTACKS, low=1),
        "engine.checkpoint_every": _integer("steps between wave checkpoints", ATTACKS, low=1),
        "engine.plan": Field("path", "another run's plan.json to replay (overrides strategy, attacks_per_device)",
                             ATTACKS),
        "engine.distributed": Field("bool", "one study over several processes (distributed.py)", ATTACKS),
        "engine.coordinator": Field("text", "HOST:PORT of process 0 ('': auto-detected)", ATTACKS),
        "engine.num_processes": _integer("processes (0: auto-detected)", ATTACKS),
        "engine.process_id": _integer("this process (-1: auto-detected)", ATTACKS, low=-1),
        "metrics.lpips_net": Field("choice", "LPIPS backbone", ATTACKS, choices=metrics.LPIPS_NETS, none="no LPIPS"),
        "gan.checkpoint": Field("path", "the GAN prior (gipip-jax train-gan) of attack.parameterization=gan", ATTACKS),
        "gan.latent_iterations": _integer("steps on the latent before the generator's weights", ATTACKS,
                                        none="half of attack.iterations"),
        "gan.latent_lr": _positive("learning rate on the latent", ATTACKS),
        "gan.generator_lr": _positive("learning rate on the generator's weights", ATTACKS),
        "dip.widths": _integer("U-Net channels per level", ATTACKS, low=1, each=True),
        "dip.learning_rate": _positive("learning rate on the U-Net's weights", ATTACKS),
        "dip.noise_channels": _integer("channels of the U-Net's fixed noise input", ATTACKS, low=1),
        "dip.noise_std": Field("number", "std of that noise", ATTACKS, low=0.0),
        "aux.fraction": Field("number", "share of the split the prior trains on", AE + GAN, low=0.0, high=1.0,
                              open_low=True, none="aux.count is given"),
        "aux.count": _integer("images the prior trains on", AE + GAN, none="aux.fraction is given"),
        "aux.seed": _integer("seed of the auxiliary subset", AE + GAN),
        "aux": Field("any", "exactly one of aux.fraction and aux.count", AE + GAN,
                     check=lambda group: data.check_auxiliary_request(group.get("fraction"), group.get("count"))),
        "heldout_count": _integer("held-out images (the AE's error is measured on them; aux.fraction 1.0 "
                                  "leaves them out, for the GAN too)", AE + GAN),
        "recipe": Field("choice", "AE training recipe", AE, choices=tuple(training.AE_RECIPES)),
        "target_heldout_mse": _positive("stop after the first epoch whose held-out MSE is at most this (epochs: "
                                        "the most)", AE, none="every epoch runs"),
        "learning_rate": _positive("learning rate", TRAINING, none="the AE recipe's default (train-ae)"),
        "epochs": _integer("passes over the training images", TRAINING),
        "batch_size": _integer("images per training step", TRAINING, low=1),
        "overwrite": Field("bool", "replace an existing checkpoint", AE + GAN + VICTIM),
        "latent_dim": _integer("size of the GAN's latent", GAN, low=1),
        "width": _integer("the DCGAN's base width", GAN, low=1),
        "b1": Field("number", "Adam's b1", GAN, low=0.0, high=1.0, open_high=True),
        "train_count": _integer("training images (0: the whole train split)", VICTIM + UTILITY),
        "eval_count": _integer("test images the accuracy is measured on", VICTIM + UTILITY),
        "augment": Field("bool", "random crops and flips while training", UTILITY),
        "delta": Field("number", "the delta of the DP-SGD epsilon reported", UTILITY, low=0.0, high=1.0,
                       open_low=True, open_high=True),
        "settings": Field("any", "defense settings to measure: dicts of defense fields ({}: none)", UTILITY,
                          each=True, check=defenses.parse),
    })
    return fields


def _steps(group: ml_collections.ConfigDict) -> None:
    """An attack that runs no step is only the Learning-to-Invert network's output (attack.init)."""
    if group.get("iterations") == 0 and group.get("init", "random") != "inverter":
        raise ValueError("attack.iterations = 0 runs no attack step: it takes an integer >= 1 "
                         "(0 only with attack.init='inverter')")


def _grid_defenses(grid: ml_collections.ConfigDict) -> None:
    """defenses.parse of every combination of the grid's defense fields (a study runs each one)."""
    from gipip_jax import defenses

    names = [f for f in defenses.DEFENSE_DEFAULTS if f in grid]
    values = [list(grid[f] or [defenses.DEFENSE_DEFAULTS[f]]) for f in names]
    for combination in itertools.product(*values):
        defenses.parse(dict(zip(names, combination)))


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks every declared field `config` has (see the module doc); ConfigError on the first bad one."""
    for path, field in table().items():
        value = _lookup(config, path)
        if value is _MISSING:
            continue
        if field.each and value is not None:
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"config field {path} = {value!r} is not allowed: it takes a list, each element "
                                  f"{takes(field)}")
            for i, element in enumerate(value):
                _check(f"{path}[{i}]", field, element)
        else:
            _check(path, field, value)


def _lookup(config: ml_collections.ConfigDict, path: str) -> Any:
    node = config
    for part in path.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, Mapping)) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _check(path: str, field: Field, value: Any) -> None:
    if not _fits(field, value):
        raise ConfigError(f"config field {path} = {value!r} is not allowed: it takes {takes(field)}")
    if field.kind == "path" and value and not os.path.exists(_resolved(value)):
        raise ConfigError(f"config field {path} = {value!r} is not allowed: no such file or folder "
                          f"(it takes {takes(field)})")
    if field.check is not None and value is not None:
        try:
            field.check(value)
        except (ValueError, TypeError) as error:   # a validator's refusal
            raise ConfigError(f"config field {path}: {' '.join(str(error).split())}") from error


def _fits(field: Field, value: Any) -> bool:
    if value is None:
        return bool(field.none) or field.kind == "any"
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if field.kind in ("int", "number"):
        if not number or (field.kind == "int" and not isinstance(value, int)) or not math.isfinite(value):
            return False
        above = value > field.low if field.open_low else value >= field.low
        below = value < field.high if field.open_high else value <= field.high
        return above and below
    return {"bool": lambda: isinstance(value, bool), "text": lambda: isinstance(value, str),
            "path": lambda: isinstance(value, str), "choice": lambda: value in field.choices,
            "any": lambda: True}[field.kind]()


def _resolved(path: str) -> str:
    from gipip_jax.assembly import resolve_path

    return resolve_path(path)


def takes(field: Field) -> str:
    """What `field` takes, in words, e.g. "an integer >= 1" or "one of 'adam', 'lbfgs'"."""
    if field.kind in ("int", "number"):
        text = "an integer" if field.kind == "int" else "a number"
        if field.low > -math.inf and field.high < math.inf:
            text += (f" in {'(' if field.open_low else '['}{field.low:g}, "
                     f"{field.high:g}{')' if field.open_high else ']'}")
        elif field.low > -math.inf:
            text += f" {'>' if field.open_low else '>='} {field.low:g}"
    else:
        text = {"bool": "True or False", "text": "a string", "path": "'' or an existing path",
                "choice": "one of " + ", ".join(repr(c) for c in field.choices),
                "any": "a value its validator accepts"}[field.kind]
    return text + (f", or None ({field.none})" if field.none else "")


def help_text(command: str) -> str:
    """The fields of `command`'s configs: path, what it takes, help; one line each."""
    rows = [(path + ("[i]" if f.each else ""), takes(f), f.help)
            for path, f in table().items() if command in f.commands]
    width = max((len(row[0]) for row in rows), default=0)
    lines = [f"config fields of `gipip-jax {command}` (--set FIELD=VALUE); fields a config does not have are "
             "skipped, fields not listed here pass through unchecked:"]
    lines += [f"  {path:<{width}}  {what}: {help_}" for path, what, help_ in rows]
    return "\n".join(lines)


class HelpConfig(argparse.Action):
    """`--help-config`: prints help_text(command) and exits, like --help."""

    def __init__(self, option_strings, dest, command: str, **kwargs):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)
        self.command = command

    def __call__(self, parser, namespace, values, option_string=None):
        print(help_text(self.command))
        parser.exit()
