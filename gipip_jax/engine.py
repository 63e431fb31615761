"""Batched attack engine: many independent attacks as one compiled program, on every device.

A *wave* is `attacks_per_device x num_devices` independent attacks run together. Every per-attack
value (target update, labels, objective term settings, PRNG key, optimizer state) has a leading attack
axis, sharded over a 1-D device mesh with axis name "attacks" (`jax.shard_map`: what `pmap` is
built on today); the victim and AE parameters are closed over and shared, never copied per attack.
Inside a device, the attacks of its block run by one of three strategies:

- "vmap":          `jax.vmap` with native convolutions (XLA turns per-attack weight gradients
                   into grouped convolutions: fine on GPUs, very slow on CPU);
- "vmap_patches":  `jax.vmap` with victims whose conv weight gradients are patch matmuls
                   (`gipip_jax.convs`), which vmap turns into batched matmuls;
- "unroll":        the block's attacks traced one after another into the same program (no
                   per-attack batching at all; with one attack per device this is the sequential
                   loop, so the engine can always fall back to it).

`Engine.choose_plan` picks the strategy and the wave size by a fixed rule of the config and the
devices, never by timing, since another wave width gives other numbers (the attacks are chaotic in
float rounding): see its docstring. `read_plan` replays a plan saved by another run. Each program
is compiled once, ahead of time (`jit(...).lower(...).compile()`), and serves every chunk and wave
of its shape: a compiled program cannot retrace.

An attack whose objective or image becomes NaN/Inf restarts from a fresh key (fold_in(key, try))
up to `max_tries` times, then is marked failed; an attack that keeps its best iterate (L-BFGS) and
has a finite one ends there instead. Neighbours are unaffected (all updates are per attack,
selected with `jnp.where`). One attack on one device ("unroll" x 1) is the sequential loop: the
`attack` command is a study of its targets run that way.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from gipip_jax.attack import AttackState, make_attack
from gipip_jax.objectives import term_weight
from gipip_jax.parameterizations import Parameterization

PyTree = Any
AXIS = "attacks"
STRATEGIES = ("vmap", "vmap_patches", "unroll")
CONV_OF_STRATEGY = {"vmap": "native", "vmap_patches": "patch_grad", "unroll": "native"}
# Used by choose_plan: share of a device's memory a wave may use.
MEMORY_FRACTION = 0.8
# choose_plan's attacks per device when none is given: by backend (ACCELERATOR_WIDTH for the others).
CPU_WIDTH = 4
ACCELERATOR_WIDTH = 64
# Parameterizations with convolution weights of their own, which vmap turns into grouped convolutions.
WEIGHTED_PARAMETERIZATIONS = ("gan", "dip")


class AttackInputs(NamedTuple):
    """Per-attack inputs; every leaf has a leading attack axis N.

    target_grads: the shared update tree, leaves (N, *param shape) float32.
    labels: int32 (N, B) or soft float32 (N, B, K).
    terms: the objective's term settings {name: {"weight": (N,), option: (N,)}} float32.
    keys: uint32 (N, 2) raw PRNG key data (`jax.random.key_data`); try t starts from fold_in(key, t).
    """

    target_grads: PyTree
    labels: Any
    terms: dict
    keys: Any


class WaveState(NamedTuple):
    """State of a wave: attack (AttackState, leaves (N, ...)); tries int32 (N,), restarts after
    a NaN/Inf; failed bool (N,), gave up after max_tries restarts; ended bool (N,), stopped at its
    best iterate by a NaN/Inf step (attacks that keep their best)."""

    attack: AttackState
    tries: jax.Array
    failed: jax.Array
    ended: jax.Array


class Plan(NamedTuple):
    """How a study runs: `strategy` (one of STRATEGIES), attacks per device, number of devices."""

    strategy: str
    attacks_per_device: int
    num_devices: int

    @property
    def wave_size(self) -> int:
        return self.attacks_per_device * self.num_devices


class WaveResult(NamedTuple):
    """Host results of a finished wave: loss (N,), terms {name: (N,)}, images01 (N, B, H, W, C) in
    [0, 1], labels int (N, B) (the argmax of the labels the objective saw: learned ones for DLG),
    steps (N,), tries (N,), failed (N,) bool."""

    loss: np.ndarray
    terms: dict
    images01: np.ndarray
    labels: np.ndarray
    steps: np.ndarray
    tries: np.ndarray
    failed: np.ndarray


class Program(NamedTuple):
    """The compiled functions of one plan: init(inputs) -> state; chunk(state, inputs, total) ->
    state (runs chunk_size steps, donating the state); evaluate(state, inputs) -> (loss, terms,
    images01). state_shape: the WaveState as sharded ShapeDtypeStructs (to restore checkpoints into).
    diagnose(state, inputs) -> (terms {name: (N,)}, grad_norms {name: (N,)}, images01): every
    objective term at the current iterate and the L2 norm of its WEIGHTED gradient with respect to
    what is optimized (jitted on first use; it costs about one step per term)."""

    plan: Plan
    init: Callable
    chunk: Callable
    evaluate: Callable
    bytes_per_device: int
    state_shape: WaveState
    diagnose: Callable


def make_mesh(devices=None) -> Mesh:
    """1-D mesh named "attacks" over `devices` (default: all devices of all processes)."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (AXIS,))


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def _tree_where(condition, a, b):
    return jax.tree.map(lambda u, v: jnp.where(condition, u, v), a, b)


def _per_attack(fn: Callable, strategy: str) -> Callable:
    """Maps fn over the leading attack axis of all its arguments by `strategy`.

    A single attack per device is never vmapped: a size-1 vmap keeps its axis in XLA's layouts and
    adds transposes of the patch matrices (measured on the CPU: one ResNet-18 attack step 138 ms
    vmapped vs 89 ms plain; BENCHMARKS.md)."""

    def mapped(*args):
        count = jax.tree.leaves(args)[0].shape[0]
        if strategy != "unroll" and count > 1:
            return jax.vmap(fn)(*args)
        outs = [fn(*jax.tree.map(lambda a: a[i], args)) for i in range(count)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    return mapped


def per_attack_terms(settings: list[dict]) -> dict:
    """The term settings of N attacks ({name: {"weight": w, ...}} each, same names) stacked into one
    pytree of float32 (N,) leaves."""
    return jax.tree.map(lambda *values: np.asarray(values, np.float32), *settings)


def attack_inputs(target_grads, labels, terms: dict, key) -> AttackInputs:
    """Host AttackInputs of ONE attack (N = 1): its target update tree, labels (B,) or (B, K), term
    settings {name: {"weight": w, ...}} and PRNG key. Several: jax.tree.map(lambda *a: np.concatenate(a), *list_of_inputs)."""
    return AttackInputs(jax.tree.map(lambda g: np.asarray(g)[None], target_grads), np.asarray(labels)[None],
                        per_attack_terms([terms]), np.asarray(jax.random.key_data(key))[None])


def default_strategy(backend: str | None = None) -> str:
    """The strategy for one attack per device: patch-grad convolutions on the CPU (where they are the
    fast ones; a single attack is never vmapped), native ones elsewhere."""
    return "vmap_patches" if (backend or jax.default_backend()) == "cpu" else "vmap"


def wave_inputs(inputs: AttackInputs, indices) -> AttackInputs:
    """The inputs of attacks `indices` (host arrays), e.g. one wave, padding slots repeating an attack."""
    indices = np.asarray(indices)
    return jax.tree.map(lambda a: np.asarray(a)[indices], inputs)


class Engine:
    """Runs waves of independent attacks sharing one objective form, optimizer and image shape.

    build_objective(conv) -> objective(x, target_grads, labels, terms) -> (loss, terms), with the
    victim built with convolution implementation `conv` ("native" or "patch_grad").
    shape: (B, H, W, C) of one attack's candidate images; bounds: (lo, hi) box, each (C,);
    denormalize maps normalized images to [0, 1] units. parameterization (default: the pixels in
    the box) is what every attack optimizes (`parameterizations.py`); its params are the state's x,
    objective and results see the rendered images.
    """

    def __init__(self, build_objective: Callable[[str], Callable], optimizer, bounds, denormalize, *,
                 shape: tuple, chunk_size: int = 100, max_tries: int = 2, mesh: Mesh | None = None,
                 parameterization: Parameterization | None = None, line_search: bool = False):
        if chunk_size < 1 or max_tries < 0:
            raise ValueError(f"chunk_size must be >= 1 and max_tries >= 0, got {chunk_size}, {max_tries}")
        self.build_objective, self.optimizer, self.bounds = build_objective, optimizer, bounds
        self.parameterization, self.line_search = parameterization, line_search
        self.denormalize, self.shape = denormalize, tuple(shape)
        self.chunk_size, self.max_tries = chunk_size, max_tries
        self.mesh = mesh or make_mesh()
        self._programs: dict[Plan, Program] = {}

    @property
    def num_devices(self) -> int:
        return self.mesh.size

    # -- the per-attack functions -------------------------------------------------------------

    def _attack_functions(self, strategy: str):
        objective = self.build_objective(CONV_OF_STRATEGY[strategy])
        attack = make_attack(objective, self.optimizer, self.bounds, parameterization=self.parameterization,
                             line_search=self.line_search)
        shape, max_tries = self.shape, self.max_tries

        def fresh(inp: AttackInputs, tries):
            key = jax.random.fold_in(jax.random.wrap_key_data(inp.keys), tries)
            return attack.init(key, shape, inp.target_grads)

        def init_one(inp: AttackInputs) -> WaveState:
            no = jnp.zeros((), bool)
            return WaveState(fresh(inp, 0), jnp.zeros((), jnp.int32), no, no)

        def step_one(s: WaveState, inp: AttackInputs, total) -> WaveState:
            new = attack.step(s.attack, inp.target_grads, inp.labels, inp.terms)
            bad = ~jnp.isfinite(new.loss) | ~_all_finite(new.x)
            end = bad & jnp.isfinite(s.attack.best[1]) if attack.keeps_best else jnp.zeros((), bool)
            retry = bad & ~end & (s.tries < max_tries)
            restarted = _tree_where(retry, fresh(inp, s.tries + 1), s.attack)
            nxt = WaveState(_tree_where(bad, restarted, new), s.tries + retry.astype(jnp.int32),
                            s.failed | (bad & ~retry & ~end), s.ended | end)
            return _tree_where((s.attack.step < total) & ~s.failed & ~s.ended, nxt, s)

        def evaluate_one(s: WaveState, inp: AttackInputs):
            params = attack.result(s.attack)
            x, labels = attack.render(params), attack.labels(params, inp.labels)
            loss, terms = objective(x, inp.target_grads, labels, inp.terms)
            hard = jnp.argmax(labels, axis=-1) if labels.ndim == 2 else labels
            return loss, terms, jnp.clip(self.denormalize(x), 0.0, 1.0), hard.astype(jnp.int32)

        def diagnose_one(s: WaveState, inp: AttackInputs):
            terms, pullback = jax.vjp(lambda p: objective(attack.render(p), inp.target_grads,
                                                          attack.labels(p, inp.labels), inp.terms)[1], s.attack.x)
            norms = {}
            for name in terms:
                cotangent = {n: jnp.where(n == name, term_weight(inp.terms, n), 0.0).astype(v.dtype)
                             for n, v in terms.items()}
                norms[name] = optax.tree.norm(pullback(cotangent)[0])
            return terms, norms, jnp.clip(self.denormalize(attack.render(s.attack.x)), 0.0, 1.0)

        return init_one, step_one, evaluate_one, diagnose_one

    # -- compiling a plan ----------------------------------------------------------------------

    def program(self, plan: Plan, example: AttackInputs) -> Program:
        """The compiled program of `plan` (cached); `example` gives the inputs' shapes (any N)."""
        if plan in self._programs:
            return self._programs[plan]
        if plan.strategy not in STRATEGIES:
            raise ValueError(f"unknown engine strategy {plan.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if plan.num_devices != self.num_devices or plan.attacks_per_device < 1:
            raise ValueError(f"plan {plan} does not fit a mesh of {self.num_devices} device(s)")
        init_one, step_one, evaluate_one, diagnose_one = self._attack_functions(plan.strategy)
        chunk_size, strategy = self.chunk_size, plan.strategy

        def local_init(inputs):
            return _per_attack(init_one, strategy)(inputs)

        def local_chunk(state, inputs, total):
            step_all = _per_attack(lambda s, i: step_one(s, i, total), strategy)

            def body(s, _):
                busy = jnp.any((s.attack.step < total) & ~s.failed & ~s.ended)
                return jax.lax.cond(busy, lambda v: step_all(v, inputs), lambda v: v, s), None

            return jax.lax.scan(body, state, length=chunk_size)[0]

        def local_evaluate(state, inputs):
            return _per_attack(evaluate_one, strategy)(state, inputs)

        def local_diagnose(state, inputs):
            return _per_attack(diagnose_one, strategy)(state, inputs)

        sharded = P(AXIS)

        def shard(fn, in_specs, donate=()):
            mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=sharded, check_vma=False)
            return jax.jit(mapped, donate_argnums=donate)

        abstract_inputs = self._abstract(example, plan.wave_size)
        init_fn = shard(local_init, (sharded,))
        init = init_fn.lower(abstract_inputs).compile()
        abstract_state = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(self.mesh, sharded)),
            jax.eval_shape(init_fn, abstract_inputs))
        total = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(self.mesh, P()))
        chunk = shard(local_chunk, (sharded, sharded, P()), donate=(0,)).lower(abstract_state, abstract_inputs, total).compile()
        evaluate = shard(local_evaluate, (sharded, sharded)).lower(abstract_state, abstract_inputs).compile()
        diagnose = shard(local_diagnose, (sharded, sharded))
        program = Program(plan, init, chunk, evaluate, _bytes_per_device(chunk), abstract_state, diagnose)
        self._programs[plan] = program
        return program

    def _abstract(self, example: AttackInputs, size: int):
        sharding = NamedSharding(self.mesh, P(AXIS))
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct((size, *np.shape(a)[1:]), np.asarray(a).dtype,
                                                           sharding=sharding), example)

    def put(self, inputs: AttackInputs) -> AttackInputs:
        """Host inputs of one wave -> global arrays sharded over the attack axis (multi-host safe:
        every process holds the whole host array and contributes its devices' shards)."""
        sharding = NamedSharding(self.mesh, P(AXIS))
        return jax.tree.map(lambda a: jax.make_array_from_callback(np.shape(a), sharding, lambda i: np.asarray(a)[i]),
                            inputs)

    # -- running -------------------------------------------------------------------------------

    def run_wave(self, program: Program, inputs: AttackInputs, iterations: int, *, state: WaveState | None = None,
                 on_chunk: Callable[[WaveState], None] | None = None,
                 device_inputs: AttackInputs | None = None) -> tuple[WaveState, WaveResult]:
        """Runs one wave to `iterations` steps per attack (restarted attacks start over).

        inputs: host AttackInputs with N = plan.wave_size (device_inputs: the same already `put`);
        state: a state to resume from (e.g. restored from a checkpoint); on_chunk(state) is called
        after every chunk (progress, checkpoints, traces). Returns the final state and its host results.
        """
        device_inputs = self.put(inputs) if device_inputs is None else device_inputs
        state = program.init(device_inputs) if state is None else state
        total = jnp.asarray(iterations, jnp.int32)
        while not wave_finished(state, iterations):
            state = program.chunk(state, device_inputs, total)
            if on_chunk is not None:
                on_chunk(state)
        loss, terms, images01, labels = program.evaluate(state, device_inputs)
        host = to_host((loss, terms, images01, labels, state.attack.step, state.tries, state.failed))
        return state, WaveResult(*host)

    def run(self, inputs: AttackInputs, iterations: int) -> WaveResult:
        """The N attacks of host `inputs` as one wave, N / num_devices per device by
        `default_strategy`: the library's way to run a few attacks (studies add waves, checkpoints
        and records)."""
        count = len(np.asarray(inputs.keys))
        if count % self.num_devices:
            raise ValueError(f"{count} attacks do not split evenly over {self.num_devices} devices")
        program = self.program(Plan(default_strategy(), count // self.num_devices, self.num_devices), inputs)
        return self.run_wave(program, inputs, iterations)[1]

    def choose_plan(self, example: AttackInputs, num_attacks: int, *, strategy: str = "auto",
                    attacks_per_device: int = 0, log: Callable[[str], None] = print) -> tuple[Plan, list[dict]]:
        """The plan of `num_attacks` attacks: a function of the config, the backend and the devices'
        memory size, never of timing, so a rerun on the same kind of device computes the same numbers.

        Strategy "auto": `default_strategy` (vmap_patches on CPU, the fastest there by 2.7-3.1x,
        BENCHMARKS.md; vmap elsewhere), but "unroll" on CPU for WEIGHTED_PARAMETERIZATIONS, whose own
        weight gradients vmap would make grouped convolutions. attacks_per_device 0: min(width, what
        the study fills), width CPU_WIDTH on CPU (batching gains at most 1.14x there, memory stays
        small), 1 for "unroll" (its compile time grows with the width for a 1.1x gain), else
        ACCELERATOR_WIDTH (a 32 px attack alone cannot fill a GPU; not measured yet), shrunk in
        proportion while XLA's memory estimate of the compiled program exceeds MEMORY_FRACTION of the
        device's memory size (its limit, not what is free now). A plan whose program does not fit
        MEMORY_FRACTION of the memory free now is a ValueError: a busy machine stops the run rather
        than change its numbers. Returns the plan and the widths the memory rule compiled
        (strategy, attacks_per_device, bytes_per_device; [] for a given width).
        """
        name = self._auto_strategy() if strategy == "auto" else strategy
        if name not in STRATEGIES:
            raise ValueError(f"unknown engine strategy {strategy!r}; choose auto or one of {', '.join(STRATEGIES)}")
        table, width = [], attacks_per_device
        if not width:
            rule = CPU_WIDTH if jax.default_backend() == "cpu" else ACCELERATOR_WIDTH
            width = min(1 if name == "unroll" else rule, max(1, math.ceil(num_attacks / self.num_devices)))
            limit = MEMORY_FRACTION * _memory_limit_per_device(self.mesh)
            while True:
                needed = self.program(Plan(name, width, self.num_devices), example).bytes_per_device
                table.append({"strategy": name, "attacks_per_device": width, "bytes_per_device": needed})
                if width == 1 or needed <= limit:
                    break
                width = max(1, min(width - 1, int(width * limit / needed)))
        plan = Plan(name, width, self.num_devices)
        needed, free = self.program(plan, example).bytes_per_device, _free_bytes_per_device(self.mesh)
        if needed > MEMORY_FRACTION * free:
            raise ValueError(f"{width} attacks per device need {needed / 2**30:.2f} GiB per device, "
                             f"{free / 2**30:.2f} GiB is free: free memory or lower engine.attacks_per_device")
        log(f"  plan {name} x{width}/device ({needed / 2**20:.0f} MiB/device by XLA's estimate)")
        return plan, table

    def _auto_strategy(self) -> str:
        """Strategy "auto" (choose_plan's rule)."""
        weighted = self.parameterization is not None and self.parameterization.name in WEIGHTED_PARAMETERIZATIONS
        return "unroll" if weighted and jax.default_backend() == "cpu" else default_strategy()

    def measure(self, program: Program, example: AttackInputs, steps: int, repeats: int = 1) -> float:
        """Attack-steps/s of `program` running `steps` steps on waves cycled from `example`: the
        best of `repeats` timed chunks after one untimed warm-up (initialization not timed)."""
        inputs = self.put(wave_inputs(example, np.arange(program.plan.wave_size) % len(example.labels)))
        total = jnp.asarray(steps, jnp.int32)
        jax.block_until_ready(program.chunk(program.init(inputs), inputs, total))
        best = np.inf
        for _ in range(repeats):
            state = jax.block_until_ready(program.init(inputs))
            start = time.perf_counter()
            jax.block_until_ready(program.chunk(state, inputs, total))
            best = min(best, time.perf_counter() - start)
        return program.plan.wave_size * steps / best


def read_plan(path: str, num_devices: int) -> tuple[Plan, dict]:
    """The plan saved in `path` (a W/plan.json) for a mesh of `num_devices` devices, and the file's
    fields (backend, device_kind, ...); ValueError (one line) for a file that is not a plan or a plan
    for another number of devices."""
    try:
        with open(path) as f:
            saved = json.load(f)
        plan = Plan(str(saved["strategy"]), int(saved["attacks_per_device"]), int(saved["num_devices"]))
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"engine.plan {path!r} is not a readable plan.json ({type(error).__name__}: {error})") \
            from error
    if plan.strategy not in STRATEGIES or plan.attacks_per_device < 1:
        raise ValueError(f"engine.plan {path!r} holds no valid plan: {plan}")
    if plan.num_devices != num_devices:
        raise ValueError(f"engine.plan {path!r} is a plan for {plan.num_devices} device(s); this run has "
                         f"{num_devices}: replay it on as many devices of the same kind")
    return plan, saved


# CPU instruction sets that change what XLA's CPU code computes (vector widths, fused multiply-adds, bf16).
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "avx_vnni", "asimd", "sve")


@functools.cache
def machine() -> str:
    """The machine a run computes on, as far as its numbers depend on it: an accelerator's device kind
    ("NVIDIA H100 80GB HBM3"), or "cpu", the architecture and the CPU_FEATURES it has (Linux's
    /proc/cpuinfo), e.g. "cpu x86_64 avx2 fma avx512f amx_bf16". The same plan gives bit-identical
    records on the same machine only (BENCHMARKS.md, "chaotic in float rounding")."""
    if jax.default_backend() != "cpu":
        return jax.devices()[0].device_kind
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((set(line.split(":", 1)[1].split()) for line in f
                          if line.startswith(("flags", "Features"))), set())
    except OSError:
        pass
    return " ".join(["cpu", platform.machine(), *(f for f in CPU_FEATURES if f in flags)])


def wave_finished(state: WaveState, iterations: int) -> bool:
    """Every attack of the wave has run `iterations` steps, failed or ended at its best."""
    steps, failed, ended = to_host((state.attack.step, state.failed, state.ended))
    return bool(np.all((steps >= iterations) | failed | ended))


def to_host(tree):
    """Device arrays -> numpy, gathering shards of other processes when there are several."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _bytes_per_device(compiled) -> int:
    """Peak bytes one device needs for a compiled program (XLA's memory analysis; 0 if unknown)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return 0
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
               + stats.temp_size_in_bytes + stats.generated_code_size_in_bytes)


def _memory_limit_per_device(mesh: Mesh) -> float:
    """Memory size of this process's first device of the mesh: its allocator's limit, or the host's
    memory shared by its CPU devices. Fixed for a kind of device, unlike what is free."""
    stats = _memory_stats(mesh)
    if stats and "bytes_limit" in stats:
        return float(stats["bytes_limit"])
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return total / max(1, sum(d.platform == "cpu" for d in mesh.devices.flat))


def _memory_stats(mesh: Mesh) -> dict | None:
    device = next((d for d in mesh.devices.flat if d.process_index == jax.process_index()), mesh.devices.flat[0])
    return device.memory_stats() if hasattr(device, "memory_stats") else None


def _free_bytes_per_device(mesh: Mesh) -> float:
    """Free memory of this process's first device of the mesh; host memory shared by CPU devices."""
    stats = _memory_stats(mesh)
    if stats and "bytes_limit" in stats:
        return float(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return available / max(1, sum(d.platform == "cpu" for d in mesh.devices.flat))
