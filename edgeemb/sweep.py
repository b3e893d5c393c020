"""Sweep: recipes, or a grid of variants of them, each compressed into its own output folder,
then compared side by side.

    result = sweep("minilm", ["svd-int4"], ["svd.rank=64,128,256", "quantize.format=int4,int8"], "out/sweep", jobs=2)
    result = sweep("minilm", ["minilm-int8", "minilm-pq", "peer-onnxruntime-arm64"], [], "out/compare")

A grid axis is `STEP.KEY=V1,V2,...`: the values replace KEY in every STEP of each recipe (values
are read as YAML, so `64` is a number and `int4` a string); without axes each recipe runs as it
is. Variants run through an
`Executor`: a local process pool by default; anything with the same `map` can stand in (a
cluster engine), since each job is a plain picklable function call.

A variant that fails (its error is one line) does not stop the others: the sweep compares what
finished and lists what failed. With `resume`, an existing output folder whose manifest records the
same recipe (digest), model (sha256) and calibration is reused as it is, so a rerun runs only what
is missing.
"""

from __future__ import annotations

import copy
import itertools
import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import yaml

from edgeemb.artifact import load_artifact
from edgeemb.errors import EdgeembError
from edgeemb.outputs import check_target
from edgeemb.pipeline import EvaluationData, compress
from edgeemb.progress import track
from edgeemb.recipe import Recipe, load_recipe, parse_recipe
from edgeemb.report.compare import Comparison, compare_outputs
from edgeemb.results import DataFile
from edgeemb.sources import open_model


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
) -> str | None:
    """None once OUT/ is written; a failing variant's one-line error, so that the sweep goes on."""
    try:
        compress(model, parse_recipe(recipe), out, force=force, data=data, calibration=calibration)
    except EdgeembError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class SweepResult:
    outs: list[Path]  # the variants' output folders, written or reused, in the sweep's order
    comparison: Comparison | None  # None when fewer than two variants finished
    failed: dict[str, str]  # variant name -> its error
    reused: list[Path]  # outputs of an earlier run taken as they were (`resume`)


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
    resume: bool = False,
) -> SweepResult:
    """Compress `model` with every variant of each recipe into `out_dir/NAME/`, then compare the
    ones that finished; a failing variant is recorded and the others go on. `calibration` goes to
    every variant (steps that measure activations need it). With `resume`, outputs already made
    with the same recipe, model and calibration are reused; another existing output needs `force`."""
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
    reused = _finished(model, runs, outs, calibration) if resume else []
    for out in outs:
        if out in reused:
            continue
        if resume and out.exists() and not force:
            raise EdgeembError(f"{out} was made with another recipe, model or calibration; pass --force to replace it")
        check_target(out, force)
    executor = executor or LocalPool(jobs)
    todo = [(run, out) for run, out in zip(runs, outs) if out not in reused]
    work = [(model, run.to_dict(), out, data, force, calibration) for run, out in todo]
    errors = track(executor.map(_compress_variant, work), "sweep variants", len(work))
    failed = {run.name: error for (run, _), error in zip(todo, errors) if error is not None}
    done = [out for out in outs if out.name not in failed]
    comparison = compare_outputs(done) if len(done) > 1 else None
    if comparison is not None:  # the comparison (and compare.md) says what is missing from it
        notes = [*comparison.notes, *(f"{name} failed: {error}" for name, error in failed.items())]
        comparison = replace(comparison, notes=notes)
    return SweepResult(done, comparison, failed, reused)


def _finished(model: str | None, runs: list[Recipe], outs: list[Path], calibration: Path | None) -> list[Path]:
    """The outputs that already hold their variant: the manifest's recipe digest, source sha256 and
    calibration are this sweep's (an unreadable manifest is no match)."""
    existing = [(run, out) for run, out in zip(runs, outs) if out.is_dir()]
    if not existing:
        return []
    source = open_model(model).sha256
    wanted = DataFile.of(calibration).sha256 if calibration is not None else None
    reused = []
    for run, out in existing:
        try:
            manifest = load_artifact(out).manifest
        except EdgeembError:
            continue
        recorded = manifest.calibration.sha256 if manifest.calibration is not None else None
        if manifest.recipe.get("digest") == run.digest and manifest.source.sha256 == source and recorded == wanted:
            reused.append(out)
    return reused
