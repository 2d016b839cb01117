"""The main job: fine-tune a pretrained text backbone the way the Keras recipe reads.

A thin composition of the library's parts: config -> data (stratified split)
-> `tfft.build_model` -> head stage on cached backbone features
(`tfft.fit_cached`) -> unfreeze stage (`tfft.fine_tune` with the top blocks
open) -> evaluation on the test split after each stage -> a SavedModel that
takes raw strings. `tfft finetune` on the command line runs the same job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfft.adapt.freeze import TopK, trainable_summary
from tfft.backbones import load_backbone
from tfft.data import TEXT_DATASETS, stratified_split
from tfft.distribute import (
    chief_writes,
    distribute_dataset,
    gather_from_workers,
    get_strategy,
    global_batch_size,
    is_chief,
    worker_dir,
)
from tfft.evaluation import plot_training_curves, report_from_predictions
from tfft.export import export_saved_model
from tfft.jobs.config import (
    DEPRECATED_SETTINGS,
    METHODS,
    ConfigError,
    JobConfig,
    check_writable,
    renamed_settings,
)
from tfft.jobs.state import RunState, new_run_dir, resumable_stage
from tfft.models.builder import build_model, check_labels
from tfft.prompting import (
    build_soft_prompt_classifier,
    build_zero_shot_model,
    count_trainable_params,
)
from tfft.training.callbacks import EpochSeeding, TrainingDivergedError, default_callbacks
from tfft.training.feature_cache import fit_cached
from tfft.training.recipes import completed_epochs, epoch_datasets, fine_tune
from tfft.utils.files import write_json_atomic

logger = logging.getLogger(__name__)


class NumericalError(RuntimeError):
    """Training produced a NaN or infinite loss."""


def _last_good_weights(stage, run_dir):
    """The newest weights on disk from before the fault: the stage's best checkpoint,
    else the finished head stage's weights, else None."""
    candidates = [os.path.join(run_dir, stage, "checkpoints", "best.weights.h5")]
    if stage != "head":
        candidates.append(os.path.join(run_dir, "stage_weights", "head.weights.h5"))
    return next((path for path in candidates if os.path.isfile(path)), None)


def _fault_message(what, stage, run_dir, learning_rate):
    kept = _last_good_weights(stage, run_dir)
    where = (f"The last good weights are kept in {kept}." if kept else
             "No weights were saved: it failed before its first epoch ended.")
    return (
        f"The {stage} stage stopped: {what} {where} "
        f"Likely causes: a learning rate too high for this model ({learning_rate:g}; try "
        "10x lower), or float16 overflow under mixed precision (use mixed_bfloat16 or float32)."
    )


def _check_finite(history, stage, run_dir, learning_rate):
    losses = history.history.get("loss", [])
    if losses and all(np.isfinite(losses)):
        return
    raise NumericalError(_fault_message(
        f"a NaN or infinite loss (losses per epoch: {losses}).", stage, run_dir, learning_rate))


@contextlib.contextmanager
def _numerical_faults(stage, run_dir, learning_rate):
    """Reports a diverging stage (`DivergenceGuard`) as the job's NumericalError."""
    try:
        yield
    except TrainingDivergedError as error:
        raise NumericalError(_fault_message(str(error), stage, run_dir, learning_rate)) from error


def _history(history):
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def run_job(config: JobConfig | dict | None = None, verbose: str | int = "auto",
            **overrides: Any) -> dict[str, Any]:
    """Runs the main job: head on cached features, then top-k fine-tuning.

    The stages are the library's own: the head stage is `tfft.fit_cached`
    (or, with `feature_cache=False`, the head stage of `tfft.fine_tune`),
    the unfreeze stage is `tfft.fine_tune(..., freeze_epochs=0,
    unfreeze="top_k:K")` with the transformer preset peaking at
    `learning_rate`. Re-running the same call on the same `run_dir`
    resumes: finished stages are reloaded from `run_dir/stage_weights/`,
    and an interrupted fine-tuning stage continues after its last completed
    epoch (`run_dir/backup/`), ending with the weights an uninterrupted run
    would have. Without `run_dir`, each job gets a new folder
    `runs/<date>-<time>-<microseconds>`, never one another job uses.

    Under MultiWorkerMirroredStrategy every worker gets the same `run_dir`:
    the chief keeps the run there, each other worker keeps what it needs to
    resume in `run_dir/workers/<task_type>-<index>/`, so a restarted job
    resumes on every worker from the same point (the last epoch or stage all
    workers finished). The report, plots, final weights and export are the
    chief's only.

    Args:
        config: JobConfig or dict. Defaults to `JobConfig()`.
        verbose: Keras verbosity for progress bars.
        **overrides: settings that replace those in `config` (`strategy` is
            a deprecated alias of `method`).

    Returns:
        The report dict (also written to `run_dir/report.json`): per-stage
        test accuracy and macro F1, histories, the final `"test"` metrics,
        `"export_path"` and `"replicas"` (the strategy's replicas in sync),
        plus the trained `"model"` and its raw-input
        `"preprocessor"` (not in the JSON file).

    Example:

    >>> report = tfft.run_job(max_examples=300, epochs=1)
    >>> report["test"]["macro_f1"]
    """
    config = _as_config(config, overrides)
    check_writable(config.run_dir or "runs", "run directory")
    if config.export_dir:
        check_writable(config.export_dir, "export directory")
        if os.path.exists(config.export_dir) and not os.path.isdir(config.export_dir):
            raise ConfigError(f"export_dir: {config.export_dir!r} is a file, not a directory.")
    # Before any other TensorFlow work: TPU and multi-worker set-up must come first.
    strategy = get_strategy(config.distribution, tpu=config.tpu)
    chief = is_chief(strategy)
    started = time.time()
    keras.utils.set_random_seed(config.seed)
    data, train, val, test = _split(config)
    print(
        f"tfft finetune: {config.dataset} ({len(data.class_names)} classes: "
        f"{', '.join(data.class_names)}), split train/val/test = "
        f"{len(train)}/{len(val)}/{len(test)} (seed {config.seed})"
    )

    with strategy.scope():
        backbone = load_backbone(config.backbone, sequence_length=config.sequence_length)
    task = build_model(backbone, task="multiclass", num_classes=len(data.class_names),
                       freeze="feature_extraction", compile=False, strategy=strategy,
                       class_names=list(data.class_names))
    batch_size = global_batch_size(config.batch_size, strategy)
    if strategy.num_replicas_in_sync > 1:
        print(f"Batch: {config.batch_size} per replica x {strategy.num_replicas_in_sync} "
              f"replicas = {batch_size}")
    # Created only now that the data and backbone loaded: bad input writes nothing.
    run_dir = config.run_dir or new_run_dir("runs")
    if not config.run_dir and not chief:
        logger.warning("This worker's run directory %s is its own: pass the same run_dir to "
                       "every worker so that a restarted job can resume.", run_dir)
    # The chief's run directory, or this worker's own folder inside it.
    work_dir = worker_dir(run_dir, strategy)
    state = RunState(work_dir, config)
    run = _Run(config=config, task=task, backbone=backbone, data=data, train=train, val=val,
               test=test, run_dir=work_dir, verbose=verbose, strategy=strategy,
               batch_size=batch_size)

    os.makedirs(work_dir, exist_ok=True)
    write_json_atomic(os.path.join(work_dir, "config.json"), config.to_dict())
    state._write()
    unfinished = _agree_on_progress(state, work_dir, strategy)

    model = task
    if config.method == "prompt":
        model, stages = _prompt_stage(run)
    elif config.method == "soft_prompt":
        model, stages = _soft_prompt_stage(run)
    else:
        stages = [resumable_stage(state, "head", "Stage 1/2 head", task,
                                  lambda: _head_stage(run), on_reload=run.forget_report,
                                  rerun="head" in unfinished)]
        if config.epochs > 0 and config.unfreeze_top > 0:
            stages.append(resumable_stage(state, "fine_tune", "Stage 2/2 fine-tune", task,
                                          lambda: _fine_tune_stage(run),
                                          on_reload=run.forget_report,
                                          rerun="fine_tune" in unfinished))
    report = run.final_report(model)

    export_path = None
    if config.export_dir and chief:
        sample = np.asarray(test.x[:8]).astype(str)
        export_path = export_saved_model(
            model, config.export_dir, preprocessor=backbone.preprocessor,
            class_names=data.class_names, task="multiclass", sample_inputs=sample,
            metadata={
                "backbone_spec": config.backbone, "dataset": config.dataset,
                "split": {"seed": config.seed, "val_fraction": config.val_fraction,
                          "test_fraction": config.test_fraction,
                          "max_examples": config.max_examples},
                "sequence_length": config.sequence_length,
                "evaluation": report.to_dict(),
            },
        )
        print(f"Exported SavedModel (raw strings in) to {export_path}")

    result = {
        "config": config.to_dict(),
        "run_dir": os.path.abspath(run_dir),
        "stages": stages,
        "test": {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]},
        "test_report": report.to_dict(),
        "export_path": export_path,
        "replicas": int(strategy.num_replicas_in_sync),
        "seconds": time.time() - started,
    }
    # Every worker saves (reading variables can take collective ops); only the
    # chief's copy is kept.
    with chief_writes(os.path.join(run_dir, "final.weights.h5"), strategy) as target:
        model.save_weights(target)
    if chief:
        report_path = os.path.join(run_dir, "report.json")
        write_json_atomic(report_path, result, default=str)
        _save_plots(report, stages, run_dir)
        print(f"Report written to {report_path} ({result['seconds']:.0f} s in all)")
    result["model"] = model
    result["preprocessor"] = backbone.preprocessor
    return result


def _as_config(config, overrides):
    if config is None:
        return JobConfig.from_dict(overrides)
    if isinstance(config, dict):
        return JobConfig.from_dict({**config, **overrides})
    if not isinstance(config, JobConfig):
        raise TypeError(
            f"config must be a JobConfig, a dict of settings or None. Received: "
            f"{type(config).__name__}"
        )
    if overrides:
        overrides = renamed_settings(overrides)
        valid = {f.name for f in dataclasses.fields(JobConfig)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ConfigError(f"Unknown setting(s) {unknown}. Valid settings: {sorted(valid)}")
        return dataclasses.replace(config, **overrides)
    return config


def _split(config):
    """The dataset (optionally a stratified subset) and its train/val/test split."""
    data = TEXT_DATASETS[config.dataset]()
    if config.max_examples and config.max_examples < len(data):
        keep, _, _ = stratified_split(
            data.y, val_fraction=0.0, test_fraction=1.0 - config.max_examples / len(data),
            seed=config.seed,
        )
        data = data.take(keep)
    train_idx, val_idx, test_idx = stratified_split(
        data.y, config.val_fraction, config.test_fraction, seed=config.seed
    )
    train, val, test = data.take(train_idx), data.take(val_idx), data.take(test_idx)
    check_labels(train.y, "multiclass", len(data.class_names))
    return data, train, val, test


@dataclasses.dataclass
class _Run:
    """What every stage of one job needs."""

    config: JobConfig
    task: keras.Model
    backbone: Any
    data: Any
    train: Any
    val: Any
    test: Any
    run_dir: str
    verbose: Any
    strategy: tf.distribute.Strategy
    batch_size: int
    last_report: Any = None

    def batches(self, x, y=None, batch_size=None):
        """Preprocessed batches of raw texts (and labels), in order."""
        return self.task.make_dataset(np.asarray(x).astype(str), y,
                                      batch_size=batch_size or self.batch_size)

    def evaluate(self, model):
        """The test report of `model`; remembered for `final_report`."""
        probs = model.predict(self.batches(self.test.x), verbose=self.verbose)
        report = report_from_predictions(self.test.y, probs, task="multiclass",
                                         class_names=self.data.class_names)
        self.last_report = (model, report)
        return report

    def final_report(self, model):
        """The last stage's report when it scored `model` as it is now, else a new one."""
        if self.last_report is not None and self.last_report[0] is model:
            return self.last_report[1]
        return self.evaluate(model)

    def forget_report(self):
        """Called when weights change outside a stage (a finished stage reloaded)."""
        self.last_report = None

    def record(self, name, started, history, model=None, **fields):
        """A stage record for state.json and report.json, with `model`'s test metrics."""
        report = self.evaluate(model if model is not None else self.task)
        return {
            "name": name, **fields, "seconds": time.time() - started,
            "history": _history(history) if history is not None else {},
            "test": {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]},
        }


def _head_stage(run):
    """Stage 1: the frozen backbone runs once per example (cached); the head trains."""
    config, task = run.config, run.task
    counts = trainable_summary(task)
    print(f"Stage 1/2 head: backbone frozen, {counts['trainable']:,} trainable / "
          f"{counts['frozen']:,} frozen parameters")
    started = time.time()
    callbacks = default_callbacks(os.path.join(run.run_dir, "head"), patience=5, backup=False)
    faults = _numerical_faults("head", run.run_dir, config.head_learning_rate)
    if config.feature_cache:
        with run.strategy.scope():
            optimizer = keras.optimizers.Adam(config.head_learning_rate)
        with faults:
            history = fit_cached(
                task, run.train.x, run.train.y, validation_data=(run.val.x, run.val.y),
                make_dataset=run.batches, epochs=config.head_epochs,
                batch_size=run.batch_size, optimizer=optimizer, callbacks=callbacks,
                seed=config.seed, verbose=run.verbose, strategy=run.strategy,
            )
        feature_seconds, hit = history.feature_seconds, all(history.cache_hits)
    else:
        with faults:
            [(_, history)] = fine_tune(
                task, (run.train.x, run.train.y), (run.val.x, run.val.y), epochs=0,
                freeze_epochs=config.head_epochs, lr=config.head_learning_rate,
                callbacks=callbacks, verbose=run.verbose, batch_size=run.batch_size,
                make_dataset=run.batches, seed=config.seed, strategy=run.strategy,
            )
        feature_seconds, hit = 0.0, False
    _check_finite(history, "head", run.run_dir, config.head_learning_rate)
    return run.record("head", started, history, freeze="feature_extraction",
                      feature_seconds=feature_seconds, feature_cache_hit=bool(hit),
                      trainable_params=counts["trainable"])


def _fine_tune_stage(run):
    """Stage 2: top blocks unfrozen, transformer preset at the peak rate, resumable."""
    config = run.config
    started = time.time()
    print(f"Stage 2/2 fine-tune: top {config.unfreeze_top} blocks unfrozen, peak learning "
          f"rate {config.learning_rate:g}")
    # Early stopping would keep state a resumed run cannot recover; the best
    # epoch is still checkpointed.
    callbacks = default_callbacks(os.path.join(run.run_dir, "fine_tune"), patience=2,
                                  early_stopping=False, backup=False)
    with _numerical_faults("fine_tune", run.run_dir, config.learning_rate):
        [(_, history)] = fine_tune(
            run.task, (run.train.x, run.train.y), (run.val.x, run.val.y),
            epochs=config.epochs, freeze_epochs=0, unfreeze=TopK(config.unfreeze_top),
            preset="transformer", fine_tune_lr=config.learning_rate, callbacks=callbacks,
            verbose=run.verbose, batch_size=run.batch_size, make_dataset=run.batches,
            seed=config.seed, backup_dir=os.path.join(run.run_dir, "backup"),
            strategy=run.strategy,
        )
    if history.resumed_from_epoch:
        print(f"Stage 2/2 fine-tune: resumed after epoch {history.resumed_from_epoch} from "
              f"{os.path.join(run.run_dir, 'backup')}")
    _check_finite(history, "fine_tune", run.run_dir, config.learning_rate)
    counts = trainable_summary(run.task)
    print(f"Stage 2/2 fine-tune: {counts['trainable']:,} trainable / {counts['frozen']:,} "
          "frozen parameters")
    return run.record("fine_tune", started, history, freeze=f"top_k:{config.unfreeze_top}",
                      trainable_params=counts["trainable"],
                      resumed_from_epoch=history.resumed_from_epoch)


def _agree_on_progress(state, run_dir, strategy):
    """Makes every worker of a restarted job resume from the same point.

    Each worker records its finished stages and backs up after each epoch; a
    kill can land between two workers' writes and leave them one stage or one
    epoch apart, and a worker cannot go back. So a stage counts as finished
    only where every worker finished it, and backups that stop after different
    epochs are dropped (the stage starts over everywhere) rather than let the
    workers' collective ops mismatch. One collective op; nothing to agree on
    in a single process.

    Returns:
        The stages this worker finished but must run again.
    """
    names = ("head", "fine_tune")
    backup = os.path.join(run_dir, "backup", "fine_tune")
    rows = gather_from_workers(
        [state.stage(name) is not None for name in names] + [completed_epochs(backup)],
        strategy,
    )
    if len({row[-1] for row in rows}) > 1:
        logger.warning("The workers' fine-tuning backups stop after different epochs (%s): "
                       "the stage starts over on every worker.", sorted({r[-1] for r in rows}))
        shutil.rmtree(backup, ignore_errors=True)
    return {name for i, name in enumerate(names)
            if state.stage(name) is not None and not all(row[i] for row in rows)}


def _prompt_stage(run):
    """Zero-shot: label prompts embedded by the backbone become the head."""
    config = run.config
    started = time.time()
    with run.strategy.scope():
        model = build_zero_shot_model(run.backbone, run.data.class_names,
                                      template=config.prompt_template)
    print(f"Prompt: zero-shot with {config.prompt_template!r}, no parameter updates")
    stage = run.record("prompt", started, None, model=model, freeze="feature_extraction",
                       template=config.prompt_template, trainable_params=0)
    print(f"Prompt: test accuracy {stage['test']['accuracy']:.4f}, macro F1 "
          f"{stage['test']['macro_f1']:.4f}")
    return model, [stage]


def _soft_prompt_stage(run):
    """Soft prompts: learnable vectors before the frozen backbone, plus a head."""
    config, backbone = run.config, run.backbone
    started = time.time()
    with run.strategy.scope():
        tuned = build_soft_prompt_classifier(backbone, num_classes=len(run.data.class_names),
                                             num_tokens=config.prompt_tokens)
        tuned.compile(keras.optimizers.Adam(config.prompt_learning_rate),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["sparse_categorical_accuracy"])
        inputs = {k: keras.Input(shape=v.shape[1:], dtype=v.dtype, name=k)
                  for k, v in backbone.model.input.items()}
        model = keras.Model(inputs, keras.layers.Softmax(dtype="float32")(tuned(inputs)))
    trainable = count_trainable_params(tuned)
    epochs = max(config.epochs, 1)
    train = epoch_datasets(np.asarray(run.train.x).astype(str), run.train.y,
                           run.task.make_dataset, run.batch_size, epochs, config.seed)
    with _numerical_faults("soft_prompt", run.run_dir, config.prompt_learning_rate):
        history = tuned.fit(
            distribute_dataset(train, run.strategy),
            validation_data=distribute_dataset(run.batches(run.val.x, run.val.y),
                                               run.strategy),
            epochs=epochs, steps_per_epoch=math.ceil(len(run.train) / run.batch_size),
            verbose=run.verbose,
            callbacks=[EpochSeeding(config.seed),
                       *default_callbacks(os.path.join(run.run_dir, "soft_prompt"),
                                          patience=2, early_stopping=False, backup=False)],
        )
    _check_finite(history, "soft_prompt", run.run_dir, config.prompt_learning_rate)
    stage = run.record("soft_prompt", started, history, model=model, freeze="soft_prompt",
                       prompt_tokens=config.prompt_tokens, trainable_params=trainable)
    print(f"Soft prompt: {trainable:,} trainable parameters, test accuracy "
          f"{stage['test']['accuracy']:.4f}, macro F1 {stage['test']['macro_f1']:.4f}")
    return model, [stage]


def _save_plots(report, stages, run_dir):
    report.save_plots(run_dir)
    trained = [(s["name"], s["history"]) for s in stages if s["history"]]
    if trained:
        plot_training_curves(trained, os.path.join(run_dir, "training_curves.png"))


__all__ = [
    "DEPRECATED_SETTINGS", "METHODS", "ConfigError", "JobConfig", "NumericalError",
    "renamed_settings", "run_job",
]
