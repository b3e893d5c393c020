"""Sweep: recipes, or a grid of variants of them, each compressed into its own output folder,
then compared side by side.

    result = sweep("minilm", ["svd-int4"], ["svd.rank=64,128,256", "quantize.format=int4,int8"], "out/sweep", jobs=2)
    result = sweep("minilm", ["minilm-int8", "minilm-pq", "peer-onnxruntime-arm64"], [], "out/compare")

A grid axis is `STEP.KEY=V1,V2,...`: the values replace KEY in every STEP of each recipe (values
are read as YAML, so `64` is a number and `int4` a string); without axes each recipe runs as it
is. Variants run through an
`Executor`: a local process pool by default; anything with the same `map` can stand in (a
cluster engine), since each job is a plain picklable function call.
"""

from __future__ import annotations

import copy
import itertools
import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml

from edgeemb.errors import EdgeembError
from edgeemb.outputs import check_target
from edgeemb.pipeline import EvaluationData, compress
from edgeemb.progress import track
from edgeemb.recipe import Recipe, load_recipe, parse_recipe
from edgeemb.report.compare import Comparison, compare_outputs


@dataclass(frozen=True)
class GridAxis:
    step: str
    key: str
    values: tuple


def parse_grid(specs: Iterable[str]) -> list[GridAxis]:
    """`["svd.rank=64,128", ...]` -> axes (none for no specs); a malformed spec is an error naming it."""
    axes = []
    for spec in specs:
        target, _, values = spec.partition("=")
        step, _, key = target.partition(".")
        if not (step and key and values):
            raise EdgeembError(f"grid {spec!r}: expected STEP.KEY=V1,V2 (e.g. svd.rank=64,128)")
        axes.append(GridAxis(step, key, tuple(yaml.safe_load(v) for v in values.split(","))))
    return axes


def variants(base: Recipe, axes: list[GridAxis]) -> list[Recipe]:
    """Every combination of the axes' values applied to `base`, each validated as a recipe
    (`[base]` itself without axes)."""
    if not axes:
        return [base]
    data = base.to_dict()
    for axis in axes:
        if not any(axis.step in step for step in data["steps"]):
            raise EdgeembError(f"grid {axis.step}.{axis.key}: recipe {base.name!r} has no {axis.step!r} step")
    recipes = []
    for combination in itertools.product(*(axis.values for axis in axes)):
        variant = copy.deepcopy(data)
        for axis, value in zip(axes, combination):
            for step in variant["steps"]:
                if axis.step in step:
                    step[axis.step][axis.key] = value
        variant["name"] = "-".join([base.name, *(f"{axis.key}{value}" for axis, value in zip(axes, combination))])
        recipes.append(parse_recipe(variant, origin=f"{variant['name']} (sweep of {base.name})"))
    return recipes


class Executor(Protocol):
    def map(self, function: Callable, jobs: list[tuple]) -> Iterable: ...


@dataclass(frozen=True)
class LocalPool:
    """Up to `jobs` variants at once, each in a fresh process (spawned: no inherited state)."""

    jobs: int = 1

    def map(self, function: Callable, jobs: list[tuple]) -> Iterable:
        if self.jobs <= 1:
            return (function(*job) for job in jobs)
        pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=multiprocessing.get_context("spawn"))
        return _drain(pool, [pool.submit(function, *job) for job in jobs])


def _drain(pool: ProcessPoolExecutor, futures: list) -> Iterable:
    with pool:
        for future in futures:
            yield future.result()


def _compress_variant(
    model: str | None, recipe: dict, out: Path, data: EvaluationData, force: bool, calibration: Path | None
) -> str:
    compress(model, parse_recipe(recipe), out, force=force, data=data, calibration=calibration)
    return str(out)


@dataclass(frozen=True)
class SweepResult:
    outs: list[Path]
    comparison: Comparison


def sweep(
    model: str | None,
    recipes: Iterable[str | Path | Recipe],
    grid: Iterable[str],
    out_dir: str | Path,
    *,
    data: EvaluationData = EvaluationData(),
    calibration: Path | None = None,
    jobs: int = 1,
    executor: Executor | None = None,
    force: bool = False,
) -> SweepResult:
    """Compress `model` with every variant of each recipe into `out_dir/NAME/`, then compare them.
    `calibration` goes to every variant (steps that measure activations need it)."""
    out_dir = Path(out_dir)
    axes = parse_grid(grid)
    bases = [r if isinstance(r, Recipe) else load_recipe(r) for r in recipes]
    if not bases:
        raise EdgeembError("a sweep needs at least one recipe")
    if not axes and len(bases) < 2:
        raise EdgeembError("one recipe and no --grid axis is a single compress: give a grid axis or more recipes")
    runs = [variant for base in bases for variant in variants(base, axes)]
    names = [r.name for r in runs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise EdgeembError(f"two variants would share the output folder {repeated[0]!r}: give each recipe its own name")
    outs = [out_dir / name for name in names]
    for out in outs:
        check_target(out, force)
    executor = executor or LocalPool(jobs)
    work = [(model, r.to_dict(), out, data, force, calibration) for r, out in zip(runs, outs)]
    for _ in track(executor.map(_compress_variant, work), "sweep variants", len(work)):
        pass
    return SweepResult(outs, compare_outputs(outs))
