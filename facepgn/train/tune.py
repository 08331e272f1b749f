"""Loss-weight (and learning-rate) sweeps with Ray Tune over Ray Train runs.

The Train V2 pattern: every Tune trial runs a small driver function (:func:`_trial`) that builds a
``TorchTrainer`` for its sampled config (``facepgn.train.ray_trainer.build_trainer``) with
``ray.tune.integration.ray_train.TuneReportCallback``, so the workers' epoch reports (validation NME,
epoch) reach Tune. ASHA stops weak trials early on the validation NME; the time unit is the epoch.

The search space is YAML over dotted training-config keys::

    search_space:
      losses.flow: {loguniform: [0.01, 1.0]}
      losses.photometric: {uniform: [0.0, 1.0]}
      optim.lr: {grid: [0.001, 0.003]}

Outputs (``output_dir``): ``results.csv`` and ``results.md`` (one row per trial, best first),
``best.yaml`` (the base training config with the best values: ``facepgn train --config best.yaml``)
and ``summary.json``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from typing import Any, Sequence

from facepgn import storage
from facepgn.cluster import require_shared_storage
from facepgn.config import (
    ConfigError,
    DistributedTrainConfig,
    SearchDimension,
    TuneJobConfig,
    build_config,
    config_data,
    deep_merge,
    dump_config,
    note_old_keys,
    read_yaml,
    set_dotted,
    upgrade_keys,
)
from facepgn.errors import FacepgnError
from facepgn.summary import versions, write_summary

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
BEST_YAML = "best.yaml"
SUMMARY_FILE = "summary.json"
TRIAL_DRIVER_CPUS = 0.01

# sections whose values change what the trials read or how they are placed: with any of them in the
# search space every trial reads its own data instead of sharing the sweep's materialised datasets
_PER_TRIAL_DATA_SECTIONS = ("data.", "validation.", "scaling.", "model.input_size")


# ---- config ------------------------------------------------------------------------------------


def _example_value(dim: SearchDimension) -> Any:
    if dim.loguniform is not None:
        return math.sqrt(dim.loguniform[0] * dim.loguniform[1])
    if dim.uniform is not None:
        return (dim.uniform[0] + dim.uniform[1]) / 2
    if dim.randint is not None:
        return dim.randint[0]
    return (dim.choice or dim.grid)[0]


def load_tune_config(path: str | None, overrides: Sequence[str] = ()) -> TuneJobConfig:
    """Load a sweep config: ``base`` (a training YAML, relative to this file) under the inline
    ``train`` section, ``--set`` overrides on top; every searched key must be a training setting."""
    notes: list[str] = []
    raw, source = config_data(TuneJobConfig, path, overrides, notes)  # the YAML + --set, as load_config reads them
    base = raw.get("base")
    if base:
        if not isinstance(base, str):
            raise ConfigError(f"{source}: base: expected a path to a training YAML")
        base_path = base
        if path and not storage.is_remote(base) and not os.path.isabs(base):
            folder = str(path).rsplit("/", 1)[0] if storage.is_remote(str(path)) else (os.path.dirname(str(path)) or ".")
            base_path = storage.join(folder, base)
        train = raw.get("train") or {}
        if not isinstance(train, dict):
            raise ConfigError(f"{source}: train: expected a mapping")
        base_train = upgrade_keys(DistributedTrainConfig, read_yaml(base_path), notes, "train.")
        raw = {**raw, "base": base_path, "train": deep_merge(base_train, train)}
    cfg = build_config(TuneJobConfig, raw, source)
    note_old_keys(notes, source)
    if not cfg.search_space:
        raise ConfigError(f"{source}: search_space is empty (give at least one key, e.g. losses.flow: {{loguniform: [0.01, 1]}})")
    train_data = cfg.train.model_dump(mode="json")
    for key, dim in cfg.search_space.items():
        trial = set_dotted(train_data, key, _example_value(dim))
        try:
            DistributedTrainConfig.model_validate(trial)
        except Exception as exc:  # noqa: BLE001 - pydantic's error, reduced to one line below
            from pydantic import ValidationError

            if isinstance(exc, ValidationError):
                err = exc.errors()[0]
                why = "not a training setting" if err["type"] == "extra_forbidden" else err["msg"]
                raise ConfigError(f"{source}: search_space.{key}: {why}") from None
            raise
    return cfg


def param_space(cfg: TuneJobConfig) -> dict[str, Any]:
    """The Tune search space (flat dotted keys)."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, dim in cfg.search_space.items():
        if dim.loguniform is not None:
            space[key] = tune.loguniform(*dim.loguniform)
        elif dim.uniform is not None:
            space[key] = tune.uniform(*dim.uniform)
        elif dim.randint is not None:
            space[key] = tune.randint(dim.randint[0], dim.randint[1])
        elif dim.choice is not None:
            space[key] = tune.choice(list(dim.choice))
        else:
            space[key] = tune.grid_search(list(dim.grid or []))
    return space


def trial_config(cfg: TuneJobConfig, params: dict[str, Any], trial_id: str) -> DistributedTrainConfig:
    """The training config of one trial: the base with the sampled values, its own run name and output."""
    data = cfg.train.model_dump(mode="json")
    for key, value in params.items():
        data = set_dotted(data, key, value)
    data = set_dotted(data, "ray.name", f"{cfg.name}-{trial_id}")
    data = set_dotted(data, "ray.storage_path", storage.join(cfg.storage_path, cfg.name + "-trials"))
    data = set_dotted(data, "output_dir", storage.join(cfg.output_dir, "trials", trial_id))
    data = set_dotted(data, "resume", True)
    return DistributedTrainConfig.model_validate(data)


def default_concurrency(cfg: TuneJobConfig, cluster: dict[str, float]) -> int:
    """As many trials as the cluster fits: each holds ``num_workers`` workers' CPUs (and GPUs)."""
    s = cfg.train.scaling
    fits = [cluster.get("CPU", 1.0) / (s.num_workers * s.cpus_per_worker)]
    if s.use_gpu:
        fits.append(cluster.get("GPU", 0.0) / max(s.num_workers * s.gpus_per_worker, 1e-9))
    return max(1, int(math.floor(min(fits) + 1e-9)))


# ---- the trial ---------------------------------------------------------------------------------


def _trial(params: dict[str, Any], *, sweep: dict[str, Any], datasets: dict[str, Any] | None) -> None:
    """One Tune trial: a Ray Train run reporting its epochs to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from facepgn.train import ray_trainer
    from facepgn.train.plan import preflight

    cfg = TuneJobConfig.model_validate(sweep)
    trial_id = tune.get_context().get_trial_id()
    train_cfg = trial_config(cfg, params, trial_id)
    plan = preflight(train_cfg, require_validation=True)
    trainer = ray_trainer.build_trainer(plan, callbacks=[TuneReportCallback()], epoch_reports_only=True, datasets=datasets)
    trainer.fit()


# ---- the sweep ---------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def results_rows(cfg: TuneJobConfig, result_grid) -> list[dict[str, Any]]:
    """One row per trial (sampled values, final metrics, status), best first."""
    rows = []
    keys = list(cfg.search_space)
    for result in result_grid:
        metrics = dict(result.metrics or {})
        params = {k: (result.config or {}).get(k) for k in keys}
        epoch = int(metrics.get("epoch") or 0)
        step = int(metrics.get("step") or 0)
        if result.error is not None:
            status = f"error: {str(result.error).strip().splitlines()[0][:200] if str(result.error).strip() else type(result.error).__name__}"
        elif epoch < cfg.sweep.max_t and step < cfg.train.steps:
            status = "stopped early"
        else:
            status = "completed"
        rows.append({
            "trial_id": metrics.get("trial_id") or os.path.basename(str(result.path or "")),
            **params,
            cfg.sweep.metric: _number(metrics.get(cfg.sweep.metric)),
            "val_nme_pgn": _number(metrics.get("val_nme_pgn")),
            "epoch": epoch,
            "step": step,
            "status": status,
        })
    sign = 1.0 if cfg.sweep.mode == "min" else -1.0
    rows.sort(key=lambda r: (r[cfg.sweep.metric] is None, sign * (r[cfg.sweep.metric] or 0.0)))
    return rows


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["trial_id"])
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue()


def _markdown(cfg: TuneJobConfig, rows: list[dict[str, Any]]) -> str:
    header = list(rows[0]) if rows else ["trial_id"]
    lines = [
        f"# Sweep {cfg.name}",
        "",
        f"{len(rows)} trials; metric `{cfg.sweep.metric}` ({cfg.sweep.mode}); ASHA grace period "
        f"{cfg.sweep.grace_period} epoch(s), max {cfg.sweep.max_t} epochs, reduction factor {cfg.sweep.reduction_factor:g}.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_format(row[k]) for k in header) + " |")
    return "\n".join(lines) + "\n"


def _prepare_sweep(cfg: TuneJobConfig):
    """Everything checkable before a trial starts (the base config's data, storage, validation set);
    returns the config with the checked train config and absolute paths, and the base plan."""
    from facepgn.train import ray_trainer
    from facepgn.train.plan import absolute_path, check_writable, preflight

    base_plan = preflight(cfg.train, require_validation=True)  # a validation source, its files with rows
    cfg = cfg.model_copy(update={
        "train": base_plan.config,
        "storage_path": absolute_path(cfg.storage_path),
        "output_dir": absolute_path(cfg.output_dir),
    })
    check_writable(cfg.storage_path, "storage_path")
    check_writable(cfg.output_dir, "output_dir")
    ray_trainer.ensure_ray()
    require_shared_storage({"storage_path": cfg.storage_path, "output_dir": cfg.output_dir}, cfg.shared_storage)
    return cfg, base_plan


def _build_tuner(cfg: TuneJobConfig, base_plan):
    """The Tuner: ASHA, the seeded variant generator (which limits concurrency), trials holding a
    token driver CPU, the datasets shared by every trial unless the search space changes data."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from facepgn.train import ray_trainer
    from facepgn.train.datasets import build_datasets, check_validation_faces, validation_dataset

    # faces to rank the trials on (a hold-out share may hold none): one line before any trial
    validation = validation_dataset(base_plan)
    check_validation_faces(base_plan, validation)
    shared = not any(k.startswith(_PER_TRIAL_DATA_SECTIONS) for k in cfg.search_space)
    datasets = build_datasets(base_plan, validation) if shared else None
    concurrency = cfg.sweep.max_concurrent_trials or default_concurrency(cfg, ray.cluster_resources())
    grid = 1
    for dim in cfg.search_space.values():
        if dim.grid is not None:
            grid *= len(dim.grid)
    print(
        f"facepgn tune: {cfg.sweep.num_samples * grid} trials, at most {concurrency} at once, "
        f"{cfg.train.scaling.num_workers} worker(s) each; metric {cfg.sweep.metric} ({cfg.sweep.mode})",
        flush=True,
    )
    scheduler = ASHAScheduler(
        time_attr="epoch",
        max_t=cfg.sweep.max_t,
        grace_period=cfg.sweep.grace_period,
        reduction_factor=cfg.sweep.reduction_factor,
    )
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # the variant generator itself limits concurrency (Tune ignores max_concurrent_trials with it)
    search_alg = BasicVariantGenerator(random_state=cfg.sweep.seed, max_concurrent=concurrency)
    trainable = tune.with_parameters(_trial, sweep=cfg.model_dump(mode="json"), datasets=datasets)
    # the trial driver only waits on its Train run: it holds a token CPU share (Tune refuses 0),
    # the Train workers hold theirs
    trainable = tune.with_resources(trainable, {"CPU": TRIAL_DRIVER_CPUS})
    storage_kwargs = ray_trainer.storage_args(cfg.storage_path)
    return tune.Tuner(
        trainable,
        param_space=param_space(cfg),
        tune_config=tune.TuneConfig(
            metric=cfg.sweep.metric,
            mode=cfg.sweep.mode,
            scheduler=scheduler,
            search_alg=search_alg,
            num_samples=cfg.sweep.num_samples,
        ),
        run_config=tune.RunConfig(name=cfg.name, verbose=0, **storage_kwargs),
    )


def _write_best_config(cfg: TuneJobConfig, best: dict[str, Any] | None) -> str | None:
    """The best trial's full train config as YAML (its sampled values, its own run name and output);
    None when no trial reported the metric."""
    if best is None:
        return None
    best_cfg = cfg.train
    data = best_cfg.model_dump(mode="json")
    for key in cfg.search_space:
        data = set_dotted(data, key, best[key])
    data = set_dotted(data, "ray.name", f"{cfg.name}-best")
    data = set_dotted(data, "output_dir", storage.join(cfg.output_dir, "best-model"))
    best_yaml = storage.join(cfg.output_dir, BEST_YAML)
    dump_config(DistributedTrainConfig.model_validate(data), best_yaml)
    return best_yaml


def _write_sweep_summary(cfg: TuneJobConfig, rows: list[dict[str, Any]], best: dict[str, Any] | None,
                         best_yaml: str | None, started: float) -> dict[str, Any]:
    return write_summary(
        storage.join(cfg.output_dir, SUMMARY_FILE), job="tune",
        counts={
            "trials": len(rows),
            "completed": sum(r["status"] == "completed" for r in rows),
            "stopped_early": sum(r["status"] == "stopped early" for r in rows),
            "errors": sum(r["status"].startswith("error") for r in rows),
        },
        errors=[{"trial_id": r["trial_id"], "reason": r["status"]} for r in rows if r["status"].startswith("error")],
        timings={"wall_s": round(time.time() - started, 3)},
        extra={
            "best": best,
            "best_config": best_yaml,
            "results": {"csv": storage.join(cfg.output_dir, RESULTS_CSV), "markdown": storage.join(cfg.output_dir, RESULTS_MD)},
        },
        config=cfg.model_dump(mode="json"),
        versions=versions("ray", "torch", "pyarrow"),
    )


def run_sweep(cfg: TuneJobConfig) -> dict[str, Any]:
    """Check, run the sweep, write the results table, the best config and ``summary.json``."""
    started = time.time()
    cfg, base_plan = _prepare_sweep(cfg)
    result_grid = _build_tuner(cfg, base_plan).fit()
    rows = results_rows(cfg, result_grid)
    storage.atomic_write_text(storage.join(cfg.output_dir, RESULTS_CSV), _csv_text(rows))
    storage.atomic_write_text(storage.join(cfg.output_dir, RESULTS_MD), _markdown(cfg, rows))
    best = next((r for r in rows if r[cfg.sweep.metric] is not None), None)
    best_yaml = _write_best_config(cfg, best)
    summary = _write_sweep_summary(cfg, rows, best, best_yaml, started)
    if best is None:
        raise FacepgnError(f"{cfg.output_dir}: no trial reported {cfg.sweep.metric} (see {RESULTS_MD})")
    return summary
