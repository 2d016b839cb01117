"""The main job: fine-tune a pretrained backbone the way the Keras recipe reads.

A thin composition of the library's parts: config -> data (the user's file,
folder or TFDS name, or a bundled dataset; given splits, else a stratified
split) -> `tfft.build_model` for the task (multiclass, binary, multilabel,
regression) -> head stage on cached backbone features (`tfft.fit_cached`) ->
unfreeze stage (`tfft.fine_tune` with the top blocks open; for images the
BatchNorm layers stay frozen, in inference mode) -> evaluation on the test
split after each stage -> a SavedModel that takes raw strings or encoded
images. `tfft finetune` on the command line runs the same job.
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

from tfft.adapt.freeze import TopK, TopKFrozenBatchNorm, trainable_summary
from tfft.backbones import load_backbone
from tfft.data import TEXT_DATASETS
from tfft.data.user_data import DataSpec, load_data_spec, split_indices
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
from tfft.export import encode_image, export_saved_model
from tfft.jobs.causal_lm import DEFAULT_CAUSAL_LM, CausalLMJobConfig, run_causal_lm_job
from tfft.jobs.config import (
    AUTO,
    CAUSAL_LM_TASK,
    DEFAULT_BACKBONES,
    DEFAULT_DATASET,
    DENSE_VISION_TASKS,
    DEPRECATED_SETTINGS,
    METHODS,
    ConfigError,
    JobConfig,
    check_writable,
    renamed_settings,
)
from tfft.jobs.dense_vision import DenseVisionJobConfig, run_dense_vision_job
from tfft.jobs.state import RunState, new_run_dir, resumable_stage
from tfft.models.builder import build_model, check_labels
from tfft.prompting import (
    build_soft_prompt_classifier,
    build_zero_shot_model,
    count_trainable_params,
)
from tfft.prompting.few_shot import check_few_shot_data, few_shot_fit, sample_shots
from tfft.training.callbacks import EpochSeeding, TrainingDivergedError, default_callbacks
from tfft.training.feature_cache import fit_cached
from tfft.training.recipes import completed_epochs, epoch_datasets, fine_tune
from tfft.utils.files import write_json_atomic

logger = logging.getLogger(__name__)

CLASSIFICATION = ("multiclass", "binary")
# In default export folder names: saved_models/bbc_news_minilm as before.
SHORT_BACKBONE_NAMES = {"all_minilm_l6_v2": "minilm"}
EXPORT_SAMPLES = 8


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
    `learning_rate` (images: `TopKFrozenBatchNorm` and Adam from
    `learning_rate` with cosine decay). Re-running the same call on the same `run_dir`
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

    The data is `config.data` (a file, folder or TFDS name, see
    `JobConfig`) or a bundled `config.dataset`, for `config.task`; the
    backbone (`"auto"`: MiniLM for texts, EfficientNet-Lite0 for images)
    must take the data's modality. Bad data (a missing column, one class
    only, an empty file, a label outside `class_names`, an unreadable image)
    raises a ValueError naming it before anything is written.

    Args:
        config: JobConfig or dict. Defaults to `JobConfig()`.
        verbose: Keras verbosity for progress bars.
        **overrides: settings that replace those in `config` (`strategy` is
            a deprecated alias of `method`).

    Returns:
        The report dict (also written to `run_dir/report.json`): per-stage
        test metrics, histories, the final `"test"` metrics (`accuracy` and
        `macro_f1` for classification, plus `micro_f1`, `hamming_loss`,
        `threshold` and `per_label_f1` for multilabel; `mae`, `rmse`, `r2`
        and `mse` for regression), `"data"` (name, task, modality, classes,
        split sizes, skipped records),
        `"export_path"` and `"replicas"` (the strategy's replicas in sync),
        plus the trained `"model"` and its raw-input
        `"preprocessor"` (not in the JSON file).

    Example:

    >>> report = tfft.run_job(max_examples=300, epochs=1)
    >>> report["test"]["macro_f1"]

    With `task="causal_lm"` the settings of `tfft.jobs.causal_lm.CausalLMJobConfig`
    that the main job lacks (`lora_rank`, `lora_mlp`, `chat_template`,
    `gradient_checkpointing`, `lr_schedule`) are accepted too.
    """
    config, causal_settings = _causal_lm_settings(config, overrides)
    config = _as_config(config, overrides)
    if config.task == CAUSAL_LM_TASK:
        return _causal_lm_job(config, verbose, causal_settings)
    if config.task in DENSE_VISION_TASKS:
        return _dense_vision_job(config, verbose)
    check_writable(config.run_dir or "runs", "run directory")
    if config.export_dir and config.export_dir != AUTO:
        _check_export_dir(config.export_dir)
    # Before any other TensorFlow work: TPU and multi-worker set-up must come first.
    strategy = get_strategy(config.distribution, tpu=config.tpu)
    chief = is_chief(strategy)
    started = time.time()
    keras.utils.set_random_seed(config.seed)
    data, train, val, test = _split(config)
    modality = train.modality
    if config.method != "fine_tune" and modality != "text":
        raise ConfigError(
            f"method: {config.method!r} needs texts (label prompts); the data holds "
            f"{modality}s. Use method fine_tune."
        )
    if config.method == "few_shot":
        train = _few_shot_train(config, train, strategy)
    print(f"tfft finetune: {data.name} ({config.task}, {modality}s; {_describe_labels(data)}),"
          f" split train/val/test = {len(train)}/{len(val)}/{len(test)} (seed {config.seed})")
    if data.skipped:
        print(f"tfft finetune: skipped {data.skipped} bad record(s) (on_error: skip)")

    backbone_spec = (DEFAULT_BACKBONES[modality] if config.backbone == AUTO
                     else config.backbone)
    options = {"sequence_length": config.sequence_length} if modality == "text" else {}
    with strategy.scope():
        backbone = load_backbone(backbone_spec, **options)
    if backbone.info.modality != modality:
        raise ConfigError(
            f"backbone: {backbone_spec!r} takes {backbone.info.modality}s but the data "
            f"holds {modality}s. Use {'an image' if modality == 'image' else 'a text'} "
            "backbone (e.g. "
            f"{DEFAULT_BACKBONES[modality]}) or backbone: auto."
        )
    class_names = _task_class_names(config.task, data)
    task = build_model(backbone, task=config.task, num_classes=max(len(class_names or []), 1),
                       freeze="feature_extraction", compile=False, strategy=strategy,
                       class_names=class_names)
    export_dir = config.export_dir
    if export_dir == AUTO:
        short = SHORT_BACKBONE_NAMES.get(backbone.name, backbone.name)
        export_dir = os.path.join("saved_models", _slug(f"{data.name}_{short}"))
        _check_export_dir(export_dir)
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
               batch_size=batch_size, modality=modality)

    os.makedirs(work_dir, exist_ok=True)
    write_json_atomic(os.path.join(work_dir, "config.json"), config.to_dict())
    state._write()
    unfinished = _agree_on_progress(state, work_dir, strategy)

    model = task
    if config.method == "prompt":
        model, stages = _prompt_stage(run)
    elif config.method == "soft_prompt":
        model, stages = _soft_prompt_stage(run)
    elif config.method == "few_shot":
        model, stages = _few_shot_stage(run)
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

    # The DataSpec fields (source, columns, task ...) first: `tfft evaluate` reads the
    # data back from them and rebuilds this split.
    spec = data_spec(config)
    data_info = {
        **(spec.to_dict() if spec else {}),
        "name": data.name, "source": config.data or (config.dataset or DEFAULT_DATASET),
        "task": config.task, "modality": modality, "class_names": class_names,
        "sizes": {"train": len(train), "val": len(val), "test": len(test)},
        "splits_given": data.splits_given, "skipped": int(data.skipped),
    }
    export_path = None
    if export_dir and chief:
        export_path = export_saved_model(
            model, export_dir, preprocessor=backbone.preprocessor,
            class_names=class_names, task=config.task, modality=modality,
            sample_inputs=_export_samples(test.x, modality), threshold=config.threshold,
            jit_compile=config.export_jit_compile,
            metadata={
                "backbone_spec": backbone_spec, "dataset": data.name, "data": data_info,
                "split": {"seed": config.seed, "val_fraction": config.val_fraction,
                          "test_fraction": config.test_fraction,
                          "max_examples": config.max_examples},
                "sequence_length": config.sequence_length if modality == "text" else None,
                "evaluation": report.to_dict(),
            },
        )
        kind = "raw strings" if modality == "text" else "JPEG/PNG bytes"
        print(f"Exported SavedModel ({kind} in) to {export_path}")

    result = {
        "config": config.to_dict(),
        "run_dir": os.path.abspath(run_dir),
        "backbone_spec": backbone_spec,
        "data": data_info,
        "stages": stages,
        "test": summarize_test_report(report, config.threshold),
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


# Causal-LM job settings with no main-job counterpart; `run_job` passes them through.
_CAUSAL_LM_ONLY = tuple(
    sorted({f.name for f in dataclasses.fields(CausalLMJobConfig)}
           - {f.name for f in dataclasses.fields(JobConfig)}))


def _causal_lm_settings(config, overrides):
    """Takes the causal-LM-only settings out of `config` (a dict) and `overrides`.

    Returns `(config, settings)`; `overrides` loses those keys in place. They
    are refused, by name, when the task is not `causal_lm`.
    """
    given = dict(config) if isinstance(config, dict) else {}
    task = overrides.get("task", given.get("task", getattr(config, "task", JobConfig.task)))
    found = sorted(k for k in _CAUSAL_LM_ONLY if k in given or k in overrides)
    if not found:
        return config, {}
    if task != CAUSAL_LM_TASK:
        raise ConfigError(f"Setting(s) {found} apply to task: causal_lm only. Received: "
                          f"task={task!r}.")
    settings = {k: given.pop(k) for k in found if k in given}
    settings.update({k: overrides.pop(k) for k in found if k in overrides})
    return (given if isinstance(config, dict) else config), settings


def _causal_lm_job(config, verbose, settings=None):
    """`task="causal_lm"`: LoRA fine-tuning of a causal LM (`tfft.jobs.causal_lm`).

    `settings`: the causal-LM-only ones (`_CAUSAL_LM_ONLY`).
    """
    export_dir = config.export_dir
    if export_dir == AUTO:
        stem = os.path.splitext(os.path.basename(config.data.rstrip("/")))[0]
        export_dir = os.path.join("saved_models", _slug(f"{stem}_causal_lm"))
    defaults = JobConfig()
    # The causal-LM job's own split shares unless the caller set others.
    fractions = {name: getattr(config, name) for name in ("val_fraction", "test_fraction")
                 if getattr(config, name) != getattr(defaults, name)}
    return run_causal_lm_job(CausalLMJobConfig(
        data=config.data, val_data=config.val_data, test_data=config.test_data,
        backbone=DEFAULT_CAUSAL_LM if config.backbone == AUTO else config.backbone,
        sequence_length=max(config.sequence_length, 2), batch_size=config.batch_size,
        epochs=max(config.epochs, 1), seed=config.seed, max_examples=config.max_examples,
        # The job's default rate suits full fine-tuning; LoRA takes a larger one.
        learning_rate=(2e-4 if config.learning_rate == defaults.learning_rate
                       else config.learning_rate),
        export_dir=export_dir, run_dir=config.run_dir, **fractions, **(settings or {}),
    ), verbose=verbose)


def _dense_vision_job(config, verbose):
    """Detection / segmentation: the two-stage job of `tfft.jobs.dense_vision`."""
    export_dir = None if config.export_dir == AUTO else config.export_dir
    settings = {"task": config.task, "data": config.data, "val_data": config.val_data,
                "test_data": config.test_data, "batch_size": config.batch_size,
                "epochs": max(config.epochs, 1), "seed": config.seed,
                "max_examples": config.max_examples, "export_dir": export_dir,
                "run_dir": config.run_dir}
    if config.backbone != AUTO:
        settings["backbone"] = config.backbone
    if config.class_names:
        settings["class_names"] = tuple(config.class_names)
    if config.image_size:
        settings["image_size"] = tuple(config.image_size)
    return run_dense_vision_job(DenseVisionJobConfig(**settings),
                                verbose=0 if verbose == "auto" else verbose)


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


@dataclasses.dataclass
class _Data:
    """What the job knows about its data as a whole (the splits hold the examples)."""

    name: str
    task: str
    class_names: list
    y: np.ndarray
    skipped: int = 0
    splits_given: list = dataclasses.field(default_factory=list)


def _load_parts(config):
    """`{"all": data}`, or the given splits `{"train": ..., "val": ..., "test": ...}`."""
    if config.data is None:
        return {"all": TEXT_DATASETS[config.dataset or DEFAULT_DATASET]()}
    return load_data_spec(data_spec(config))


def data_spec(config: JobConfig) -> DataSpec | None:
    """The `tfft.data.DataSpec` of a job's own data (None for a bundled dataset)."""
    if config.data is None:
        return None
    return DataSpec(
        source=config.data, val_source=config.val_data, test_source=config.test_data,
        text_column=config.text_column, label_column=config.label_column, task=config.task,
        label_separator=config.label_separator,
        class_names=None if config.class_names is None else tuple(config.class_names),
        on_error=config.on_error,
        image_size=None if config.image_size is None else tuple(config.image_size),
        encoding=config.encoding,
    )


def _subset(data, config):
    """`max_examples` of `data` (stratified for classes), or all of it."""
    if not config.max_examples or config.max_examples >= len(data):
        return data
    keep, _, _ = split_indices(data.y, config.task, 0.0,
                                1.0 - config.max_examples / len(data), config.seed)
    return data.take(keep)


def _split(config):
    """The data's summary and its train/val/test parts, checked against the task."""
    parts = _load_parts(config)
    for part in parts.values():
        _check_labels(part, config)
    if "all" in parts:
        whole = parts["all"]
        _check_classes(whole, config)
        data = _subset(whole, config)
        train_idx, val_idx, test_idx = split_indices(
            data.y, config.task, config.val_fraction, config.test_fraction, config.seed)
        train, val, test = data.take(train_idx), data.take(val_idx), data.take(test_idx)
        given = []
    else:
        given = sorted(parts)
        train = _subset(parts["train"], config)
        _check_classes(train, config)
        val, test = parts.get("val"), parts.get("test")
        if val is None or test is None:
            # Carve what is missing out of the training data.
            train_idx, val_idx, test_idx = split_indices(
                train.y, config.task, 0.0 if val is not None else config.val_fraction,
                0.0 if test is not None else config.test_fraction, config.seed)
            val = train.take(val_idx) if val is None else val
            test = train.take(test_idx) if test is None else test
            train = train.take(train_idx)
        for name, part in (("val", val), ("test", test)):
            if list(part.class_names) != list(train.class_names):
                raise ValueError(
                    f"The {name} data's classes {list(part.class_names)} differ from the "
                    f"training data's {list(train.class_names)}: pass class_names to fix "
                    "their order."
                )
            if part.modality != train.modality:
                raise ValueError(
                    f"The {name} data holds {part.modality}s but the training data "
                    f"{train.modality}s."
                )
    names = list(train.class_names)
    check_labels(train.y, config.task, max(len(names), 1))
    skipped = sum(int(part.skipped) for part in parts.values())
    name = config.dataset or train.name or DEFAULT_DATASET
    if config.data is not None:
        name = _data_name(config.data, train.name)
    y_all = np.concatenate([train.y, val.y, test.y])
    return _Data(name, config.task, names, y_all, skipped, given), train, val, test


def _check_labels(data, config):
    """The labels fit the task: the message says what was found and which task fits it."""
    y = np.asarray(data.y)
    task = config.task
    if task == "regression":
        if y.ndim != 1 or y.dtype.kind not in "iuf":
            raise ValueError(
                f"task regression needs one numeric target per example; the data "
                f"{data.name!r} has labels of shape {y.shape} and dtype {y.dtype}."
            )
        if not np.all(np.isfinite(y)):
            raise ValueError(f"The regression targets of {data.name!r} hold NaN or infinity.")
        return
    if task == "multilabel":
        if y.ndim != 2:
            raise ValueError(
                f"task multilabel needs several labels per example (label_separator); "
                f"the data {data.name!r} has one label per example: use task multiclass."
            )
        return
    if y.ndim != 1 or (y.dtype.kind == "f" and not data.class_names):
        raise ValueError(
            f"task {task} needs one class label per example; the data {data.name!r} has "
            f"{'several labels per example (use task multilabel)' if y.ndim == 2 else 'numeric targets (use task regression)'}."  # noqa: E501
        )


def _check_classes(data, config):
    """Enough classes (or label values, or distinct targets) to learn from."""
    y = np.asarray(data.y)
    where = config.data or data.name
    if config.task == "regression":
        if len(np.unique(y)) < 2:
            raise ValueError(
                f"Every regression target in {where} is {y[0]!r}: there is nothing to learn."
            )
        return
    if config.task == "multilabel":
        if len(data.class_names) < 2:
            raise ValueError(
                f"{where} holds one label only ({data.class_names}): a multilabel job needs "
                "at least two."
            )
        return
    found = sorted({data.class_names[i] for i in np.unique(y)})
    if len(found) < 2:
        raise ValueError(
            f"{where} holds one class only ({found[0]!r}): a classifier needs examples of "
            "at least two classes."
        )
    if config.task == "binary" and len(data.class_names) != 2:
        raise ValueError(
            f"task binary needs exactly 2 classes; {where} has {len(data.class_names)}: "
            f"{list(data.class_names)[:10]}. Use task multiclass."
        )


def _data_name(source, fallback):
    base = os.path.basename(os.path.normpath(source)) or fallback
    for ext in (".gz", ".bz2", ".zip", ".csv", ".tsv", ".jsonl", ".json"):
        base = base.removesuffix(ext)
    return base or fallback or "data"


def _slug(text):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _check_export_dir(path):
    check_writable(path, "export directory")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"export_dir: {path!r} is a file, not a directory.")


def _task_class_names(task, data):
    """The names the head, report and export use: none for a regression."""
    return None if task == "regression" else list(data.class_names)


def _describe_labels(data):
    if data.task == "regression":
        return f"targets {float(np.min(data.y)):g} to {float(np.max(data.y)):g}"
    shown = ", ".join(data.class_names[:10]) + (" ..." if len(data.class_names) > 10 else "")
    word = "labels" if data.task == "multilabel" else "classes"
    return f"{len(data.class_names)} {word}: {shown}"


def _raw_inputs(x, modality):
    """Texts as str arrays; images as uint8 RGB arrays (grey images get three channels)."""
    if modality == "text":
        return np.asarray(x).astype(str)
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def _export_samples(x, modality):
    """A few test inputs as the served signature takes them, for the export's check."""
    x = _raw_inputs(x[:EXPORT_SAMPLES], modality)
    if modality == "text":
        return x
    return np.array([encode_image(image) for image in x.astype(np.uint8)], dtype=object)


def summarize_test_report(report: Any, threshold: float = 0.5) -> dict[str, Any]:
    """The headline test metrics of a report, by task (the `"test"` of report.json).

    Classification keeps `accuracy` and `macro_f1` (stable keys); multilabel
    adds `micro_f1`, `hamming_loss`, the decision `threshold` and
    `per_label_f1`; regression gives `mae`, `rmse`, `r2` and `mse`.
    """
    m = report.metrics
    if report.task == "regression":
        return {key: m[key] for key in ("mae", "rmse", "r2", "mse")}
    summary = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
    if report.task == "multilabel":
        summary.update(
            micro_f1=m["micro_f1"], hamming_loss=m["hamming_loss"], threshold=threshold,
            per_label_f1={name: row["f1"] for name, row in m["per_class"].items()},
        )
    return summary


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
    modality: str = "text"
    last_report: Any = None

    def batches(self, x, y=None, batch_size=None):
        """Preprocessed batches (the backbone's inputs) of raw texts or images, in order."""
        return self.task.make_dataset(_raw_inputs(x, self.modality), y,
                                      batch_size=batch_size or self.batch_size)

    def task_batches(self, x, y=None, batch_size=None):
        """Batches for a model's own `fit`/`predict`, in order.

        Tokenised texts, which the Task recognises as preprocessed. Images
        stay raw: the Task preprocesses a dataset of images itself, and it
        cannot tell preprocessed pixels from raw ones.
        """
        if self.modality == "text":
            return self.batches(x, y, batch_size)
        x = _raw_inputs(x, self.modality)
        data = tf.data.Dataset.from_tensor_slices(x if y is None else (x, np.asarray(y)))
        return data.batch(batch_size or self.batch_size)

    def evaluate(self, model):
        """The test report of `model`; remembered for `final_report`."""
        probs = model.predict(self.task_batches(self.test.x), verbose=self.verbose)
        report = report_from_predictions(
            self.test.y, np.asarray(probs, dtype=np.float64), task=self.config.task,
            class_names=_task_class_names(self.config.task, self.data),
            threshold=self.config.threshold)
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
            "test": summarize_test_report(report, self.config.threshold),
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
                make_dataset=run.task_batches, seed=config.seed, strategy=run.strategy,
            )
        feature_seconds, hit = 0.0, False
    _check_finite(history, "head", run.run_dir, config.head_learning_rate)
    return run.record("head", started, history, freeze="feature_extraction",
                      feature_seconds=feature_seconds, feature_cache_hit=bool(hit),
                      trainable_params=counts["trainable"])


def _fine_tune_stage(run):
    """Stage 2: top blocks unfrozen at a lower rate, resumable.

    Texts: the transformer preset (AdamW, warmup to `learning_rate`, linear
    decay). Images: Adam from `learning_rate` with cosine decay (the
    `plain_cnn` preset), every BatchNorm layer frozen in inference mode
    (`TopKFrozenBatchNorm`), as in Keras' transfer-learning guide.
    """
    config = run.config
    started = time.time()
    if run.modality == "text":
        policy, preset = TopK(config.unfreeze_top), "transformer"
    else:
        policy, preset = TopKFrozenBatchNorm(config.unfreeze_top), "plain_cnn"
    print(f"Stage 2/2 fine-tune: top {config.unfreeze_top} blocks unfrozen"
          f"{'' if run.modality == 'text' else ' (BatchNorm frozen)'}, peak learning "
          f"rate {config.learning_rate:g}")
    # Early stopping would keep state a resumed run cannot recover; the best
    # epoch is still checkpointed.
    callbacks = default_callbacks(os.path.join(run.run_dir, "fine_tune"), patience=2,
                                  early_stopping=False, backup=False)
    with _numerical_faults("fine_tune", run.run_dir, config.learning_rate):
        [(_, history)] = fine_tune(
            run.task, (run.train.x, run.train.y), (run.val.x, run.val.y),
            epochs=config.epochs, freeze_epochs=0, unfreeze=policy,
            preset=preset, fine_tune_lr=config.learning_rate, callbacks=callbacks,
            verbose=run.verbose, batch_size=run.batch_size, make_dataset=run.task_batches,
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
    return run.record("fine_tune", started, history,
                      freeze=f"{policy.name}:{config.unfreeze_top}",
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


def _few_shot_train(config, train, strategy):
    """`shots` training examples per class, checked before anything is written."""
    if strategy.num_replicas_in_sync > 1:
        raise ConfigError("method: few_shot trains on one device; use distribution: default "
                          f"(the strategy has {strategy.num_replicas_in_sync} replicas).")
    if config.task != "multiclass":
        raise ConfigError(f"method: few_shot trains a multiclass classifier; the task is "
                          f"{config.task!r}. Use task multiclass or another method.")
    train = train.take(sample_shots(train.y, config.shots, config.seed))
    # Fewer than 2 examples of a class, one class only: the message names class and count.
    check_few_shot_data(np.asarray(train.x).astype(str).tolist(), train.y,
                        list(train.class_names))
    return train


def _few_shot_stage(run):
    """Few-shot: contrastive fine-tuning on pairs of the shots, then the head from prompts."""
    config = run.config
    started = time.time()
    print(f"Few-shot: {config.shots} examples per class ({len(run.train)} in all), "
          f"{config.epochs} contrastive epoch(s) of the whole encoder, head from "
          f"{config.prompt_template!r}")
    with _numerical_faults("few_shot", run.run_dir, config.learning_rate):
        try:
            model = few_shot_fit(
                run.backbone, np.asarray(run.train.x).astype(str).tolist(), run.train.y,
                class_names=list(run.data.class_names), freeze="full", epochs=config.epochs,
                learning_rate=config.learning_rate, template=config.prompt_template,
                seed=config.seed, verbose=0 if run.verbose == 0 else 1,
            )
        except FloatingPointError as error:
            raise NumericalError(_fault_message(str(error), "few_shot", run.run_dir,
                                                config.learning_rate)) from error
    trainable = trainable_summary(model)["trainable"]
    stage = run.record("few_shot", started, None, model=model, freeze="full",
                       shots=config.shots, train_examples=len(run.train),
                       trainable_params=trainable)
    print(f"Few-shot: test accuracy {stage['test']['accuracy']:.4f}, macro F1 "
          f"{stage['test']['macro_f1']:.4f}")
    return model, [stage]


def _save_plots(report, stages, run_dir):
    report.save_plots(run_dir)
    trained = [(s["name"], s["history"]) for s in stages if s["history"]]
    if trained:
        plot_training_curves(trained, os.path.join(run_dir, "training_curves.png"))


__all__ = [
    "DEPRECATED_SETTINGS", "METHODS", "ConfigError", "JobConfig", "NumericalError",
    "data_spec", "renamed_settings", "run_job",
    "summarize_test_report",
]
