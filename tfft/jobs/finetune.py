"""The main job: fine-tune a pretrained text backbone the way the Keras recipe reads.

Load the backbone, add the task layer, freeze the backbone and train the head
(on cached features: one backbone pass), then unfreeze the top transformer
blocks and fine-tune with a lower learning rate, evaluate each stage on the
test split, and export a SavedModel that takes raw strings.
"""

import dataclasses
import datetime
import json
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tfft.training import feature_cache
from tfft.backbones import load_backbone, parse_spec
from tfft.models.builder import build_model, check_labels
from tfft.data import TEXT_DATASETS, stratified_split
from tfft.evaluation import report_from_predictions
from tfft.training.callbacks import default_callbacks
from tfft.evaluation.plots import plot_training_curves
from tfft.export import export
from tfft.adapt.freeze import TopK, apply_freeze, trainable_summary
from tfft.training.presets import compile_model, get_preset, make_optimizer
from tfft.distribute.strategy import (
    STRATEGY_NAMES,
    chief_only_path,
    discard_worker_path,
    distribute_dataset,
    get_strategy,
    global_batch_size,
    is_chief,
    prepare_model,
)


class ConfigError(ValueError):
    """A run setting is invalid; the message names the setting and valid values."""


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Settings of a fine-tuning run (also the CLI's flags and config files' keys).

    Args:
        backbone: str. Backbone spec. Defaults to the offline all-MiniLM-L6-v2.
        dataset: str. A dataset in `tfft.data.TEXT_DATASETS`.
        sequence_length: int. Tokens per example.
        batch_size: int. Examples per batch.
        head_epochs: int. Epochs of head training on the frozen backbone.
        epochs: int. Epochs of fine-tuning with the top blocks unfrozen
            (0 skips that stage).
        unfreeze_top: int. Transformer blocks unfrozen in the second stage.
        head_learning_rate: float. Adam learning rate for the head stage.
        learning_rate: float. Peak AdamW learning rate for fine-tuning.
        val_fraction: float. Validation share of the stratified split.
        test_fraction: float. Test share of the stratified split.
        seed: int. Seed for the split, initialisation and shuffling.
        max_examples: int. Use a stratified subset of this many examples
            (None: all).
        export_dir: str. Model directory; the version goes below it (None
            skips the export).
        run_dir: str. Where the report, logs and checkpoints go. Defaults to
            `runs/<timestamp>`.
        feature_cache: bool. Train the head on cached backbone features.
        strategy: str. How to adapt the backbone: `"fine_tune"` (head on the
            frozen backbone, then the top blocks), `"prompt"` (zero-shot:
            label prompts embedded by the backbone become the head; no
            parameter updates) or `"soft_prompt"` (learnable prompt vectors
            before a frozen backbone, trained for `epochs`).
        distribution: str. A `tfft.get_strategy` name: `"auto"` (TPU,
            several GPUs, a TF_CONFIG cluster, else one device), `"tpu"`,
            `"mirrored"`, `"multi_worker"`, `"gpu"`, `"cpu"`, `"default"`.
            `batch_size` is per replica; the global batch is
            `batch_size * replicas`.
        tpu: str. TPU address for `distribution="tpu"` (`"local"` on a TPU VM).
        prompt_template: str. Label prompt for `strategy="prompt"`.
        prompt_tokens: int. Learnable prompt vectors for `"soft_prompt"`.
        prompt_learning_rate: float. Adam learning rate for `"soft_prompt"`.
    """

    backbone: str = "keras_hub:all_minilm_l6_v2"
    dataset: str = "bbc_news"
    sequence_length: int = 128
    batch_size: int = 32
    head_epochs: int = 30
    epochs: int = 1
    unfreeze_top: int = 2
    head_learning_rate: float = 3e-3
    learning_rate: float = 5e-5
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    max_examples: int = None
    export_dir: str = "saved_models/bbc_news_minilm"
    run_dir: str = None
    feature_cache: bool = True
    strategy: str = "fine_tune"
    distribution: str = "auto"
    tpu: str = None
    prompt_template: str = "This article is about {label}."
    prompt_tokens: int = 20
    prompt_learning_rate: float = 3e-2

    def __post_init__(self):
        for name, (kind, low) in _FIELD_RULES.items():
            _check_field(name, getattr(self, name), kind, low)
        if self.max_examples is not None and self.max_examples < 10:
            raise ConfigError(
                f"max_examples: expected an integer >= 10, or null for all. Received: "
                f"{self.max_examples!r}"
            )
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                "val_fraction + test_fraction must leave examples for training. Received: "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        if self.dataset not in TEXT_DATASETS:
            raise ConfigError(
                f"dataset: unknown dataset. Expected one of {sorted(TEXT_DATASETS)}. "
                f"Received: {self.dataset!r}"
            )
        try:
            parse_spec(self.backbone)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"backbone: {error}") from None
        if self.strategy not in ADAPTATION_STRATEGIES:
            raise ConfigError(
                f"strategy: unknown adaptation strategy. Expected one of "
                f"{list(ADAPTATION_STRATEGIES)}. Received: {self.strategy!r}"
            )
        if self.distribution not in STRATEGY_NAMES:
            raise ConfigError(
                f"distribution: unknown distribution strategy. Expected one of "
                f"{list(STRATEGY_NAMES)}. Received: {self.distribution!r}"
            )
        if self.strategy == "prompt" and "{label}" not in self.prompt_template:
            raise ConfigError(
                "prompt_template: must contain the {label} slot. Received: "
                f"{self.prompt_template!r}"
            )

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data, path=""):
        """Builds a config from a mapping (e.g. a parsed YAML file).

        Args:
            data: dict. Setting name to value.
            path: str. Where `data` sits in a larger file, for messages.
        """
        if not isinstance(data, dict):
            raise ConfigError(
                f"{path or 'config'}: expected a mapping of settings. Received: "
                f"{type(data).__name__}"
            )
        valid = sorted(f.name for f in dataclasses.fields(cls))
        unknown = sorted(str(k) for k in set(data) - set(valid))
        if unknown:
            where = ", ".join(f"{path}{k}" for k in unknown)
            raise ConfigError(f"Unknown setting(s) {unknown} at {where}. Valid settings: {valid}")
        try:
            return cls(**data)
        except ConfigError as error:
            if path:
                raise ConfigError(f"{path}{error}") from None
            raise


# name -> (kind, lowest allowed value)
_FIELD_RULES = {
    "backbone": ("str", None),
    "dataset": ("str", None),
    "sequence_length": ("int", 1),
    "batch_size": ("int", 1),
    "head_epochs": ("int", 1),
    "epochs": ("int", 0),
    "unfreeze_top": ("int", 0),
    "head_learning_rate": ("positive_float", None),
    "learning_rate": ("positive_float", None),
    "val_fraction": ("fraction", None),
    "test_fraction": ("fraction", None),
    "seed": ("int", 0),
    "max_examples": ("optional_int", None),
    "export_dir": ("optional_str", None),
    "run_dir": ("optional_str", None),
    "feature_cache": ("bool", None),
    "strategy": ("str", None),
    "distribution": ("str", None),
    "tpu": ("optional_str", None),
    "prompt_template": ("str", None),
    "prompt_tokens": ("int", 1),
    "prompt_learning_rate": ("positive_float", None),
}
ADAPTATION_STRATEGIES = ("fine_tune", "prompt", "soft_prompt")


def _check_field(name, value, kind, low):
    """Checks one setting's type and range; the message starts with its key."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "int" and (not is_int or value < low):
        what = "a positive integer" if low == 1 else "a non-negative integer"
        raise ConfigError(f"{name}: expected {what}. Received: {value!r}")
    if kind == "optional_int" and value is not None and not is_int:
        raise ConfigError(f"{name}: expected an integer or null. Received: {value!r}")
    if kind == "positive_float" and (
        not is_number or not value > 0 or value != value or value == float("inf")
    ):
        raise ConfigError(f"{name}: expected a positive finite number. Received: {value!r}")
    if kind == "fraction" and (not is_number or not 0.0 < value < 1.0):
        raise ConfigError(f"{name}: expected a number between 0 and 1. Received: {value!r}")
    if kind == "str" and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{name}: expected a non-empty string. Received: {value!r}")
    if kind == "optional_str" and value is not None and (
        not isinstance(value, str) or not value.strip()
    ):
        raise ConfigError(f"{name}: expected a non-empty string or null. Received: {value!r}")
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false. Received: {value!r}")


def _check_writable(path, what):
    """Fails before any work when `path` cannot be created or written."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if os.path.exists(probe) and not os.path.isdir(probe):
        raise ConfigError(f"The {what} {path!r} is inside a file ({probe!r}), not a directory.")
    try:
        # os.access says yes to root everywhere; a real probe directory does not lie.
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".tfft-write-probe-"))
    except OSError as error:
        raise ConfigError(
            f"The {what} {path!r} is not writable ({error.strerror} in {probe!r}). "
            "Choose a directory you can write to."
        ) from None


def text_dataset(texts, labels, preprocessor, batch_size, shuffle=False, seed=0):
    """A batched tf.data pipeline tokenising raw strings in parallel."""
    inputs = tf.data.Dataset.from_tensor_slices(np.asarray(texts, dtype=object).astype(str))
    ds = inputs if labels is None else tf.data.Dataset.zip(
        inputs, tf.data.Dataset.from_tensor_slices(np.asarray(labels))
    )
    if shuffle:
        ds = ds.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if labels is None:
        ds = ds.map(preprocessor, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(lambda x, y: (preprocessor(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def epoch_datasets(texts, labels, preprocessor, batch_size, epochs, seed, first_epoch=0):
    """Training batches whose order depends only on (seed, epoch).

    Each epoch gets its own permutation, so a run resumed at epoch k sees
    exactly the batches an uninterrupted run sees from epoch k on (a
    reshuffling `tf.data` iterator would restart its sequence instead).
    """
    texts = np.asarray(texts, dtype=object).astype(str)
    labels = np.asarray(labels)
    parts = []
    for epoch in range(first_epoch, epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(texts))
        parts.append(
            tf.data.Dataset.from_tensor_slices((texts[order], labels[order])).batch(batch_size)
        )
    ds = parts[0]
    for part in parts[1:]:
        ds = ds.concatenate(part)
    ds = ds.map(lambda x, y: (preprocessor(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


class EpochSeeding(keras.callbacks.Callback):
    """Sets every dropout seed from (seed, epoch) at the start of each epoch.

    Keras keeps dropout RNG state in variables that weight checkpoints do not
    save; deriving it from the epoch makes a resumed run draw the same masks
    as an uninterrupted one.
    """

    def __init__(self, seed):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch, logs=None):
        states = [v for v in self.model.variables if v.path.endswith("seed_generator_state")]
        for index, state in enumerate(states):
            value = np.random.default_rng([self.seed, epoch, index]).integers(0, 2**30, 2)
            value[1] = 0
            state.assign(value.astype(state.dtype))


class NumericalError(RuntimeError):
    """Training produced a NaN or infinite loss."""


def _check_finite(history, stage, run_dir, learning_rate):
    losses = history.history.get("loss", [])
    if losses and all(np.isfinite(losses)):
        return
    raise NumericalError(
        f"The {stage} stage stopped on a NaN or infinite loss (losses per epoch: {losses}). "
        f"The last good weights are kept in {os.path.join(run_dir, stage, 'checkpoints')}. "
        f"Likely causes: a learning rate too high for this model ({learning_rate:g}; try "
        "10x lower), or float16 overflow under mixed precision (use mixed_bfloat16 or float32)."
    )


def _history(history):
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _evaluate(probs, labels, class_names):
    return report_from_predictions(labels, probs, task="multiclass", class_names=class_names)


class _RunState:
    """What a run directory records about finished stages, for resuming."""

    def __init__(self, run_dir, config):
        self.path = os.path.join(run_dir, "state.json")
        self.weights_dir = os.path.join(run_dir, "stage_weights")
        self.data = {"config": config.to_dict(), "stages": []}
        if os.path.exists(self.path):
            with open(self.path) as f:
                saved = json.load(f)
            ignore = {"run_dir", "export_dir"}
            old = {k: v for k, v in saved["config"].items() if k not in ignore}
            new = {k: v for k, v in config.to_dict().items() if k not in ignore}
            if old != new:
                changed = sorted(k for k in new if old.get(k) != new[k])
                raise ConfigError(
                    f"The run directory {run_dir!r} holds a run with other settings "
                    f"({', '.join(changed)} differ). Resume it with the same settings, or "
                    "pass a new --run-dir."
                )
            self.data = saved

    def stage(self, name):
        return next((s for s in self.data["stages"] if s["name"] == name), None)

    def weights_path(self, name):
        return os.path.join(self.weights_dir, f"{name}.weights.h5")

    def finish_stage(self, record, model):
        os.makedirs(self.weights_dir, exist_ok=True)
        # Weights first, then the record that points at them: a kill in between
        # only means the stage runs again.
        tmp = self.weights_path(record["name"]) + ".tmp.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, self.weights_path(record["name"]))
        self.data["stages"].append(record)
        self._write()

    def _write(self):
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.data, f, indent=2, default=str)
        os.replace(self.path + ".tmp", self.path)


def finetune(config=None, verbose="auto", **overrides):
    """Runs the main job: head on a frozen backbone, then top-k fine-tuning.

    Re-running the same command on the same `run_dir` resumes: finished
    stages are reloaded from `run_dir/stage_weights/`, and an interrupted
    fine-tuning stage continues from its last completed epoch
    (`keras.callbacks.BackupAndRestore`), ending with the weights an
    uninterrupted run would have.

    Args:
        config: FinetuneConfig or dict. Defaults to `FinetuneConfig()`.
        verbose: Keras verbosity for progress bars.
        **overrides: settings that replace those in `config`.

    Returns:
        The report dict (also written to `run_dir/report.json`): per-stage
        test accuracy and macro F1, histories, the final `"test"` metrics and
        `"export_path"`, plus the trained `"model"`.

    Example:

    >>> report = tfft.finetune(max_examples=300, epochs=1)
    >>> report["test"]["macro_f1"]
    """
    if config is None:
        config = FinetuneConfig(**overrides)
    elif isinstance(config, dict):
        config = FinetuneConfig.from_dict({**config, **overrides})
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    run_dir = config.run_dir or os.path.join(
        "runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    )
    _check_writable(run_dir, "run directory")
    if config.export_dir:
        _check_writable(config.export_dir, "export directory")
        if os.path.exists(config.export_dir) and not os.path.isdir(config.export_dir):
            raise ConfigError(f"export_dir: {config.export_dir!r} is a file, not a directory.")
    # Before any other TensorFlow work: TPU and multi-worker set-up must come first.
    strategy = get_strategy(config.distribution, tpu=config.tpu)
    chief = is_chief(strategy)
    final_run_dir = run_dir
    run_dir = chief_only_path(run_dir, strategy)
    state = _RunState(run_dir, config)

    started = time.time()
    keras.utils.set_random_seed(config.seed)
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
    num_classes = len(data.class_names)
    check_labels(train.y, "multiclass", num_classes)
    print(
        f"tfft finetune: {config.dataset} ({num_classes} classes: "
        f"{', '.join(data.class_names)}), split train/val/test = "
        f"{len(train)}/{len(val)}/{len(test)} (seed {config.seed})"
    )

    with strategy.scope():
        backbone = load_backbone(config.backbone, sequence_length=config.sequence_length)
    model = build_model(backbone, task="multiclass", num_classes=num_classes,
                        freeze="feature_extraction", compile=False, strategy=strategy)
    pre = backbone.preprocessor
    bs = global_batch_size(config.batch_size, strategy)
    if strategy.num_replicas_in_sync > 1:
        print(f"Batch: {config.batch_size} per replica x {strategy.num_replicas_in_sync} "
              f"replicas = {bs}")

    def make_ds(x):
        return text_dataset(x, None, pre, bs)

    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2)
    state._write()
    kwargs = dict(config=config, model=model, pre=pre, train=train, val=val, test=test,
                  data=data, run_dir=run_dir, verbose=verbose, make_ds=make_ds,
                  strategy=strategy, batch_size=bs)

    if config.strategy == "prompt":
        model, stages = _prompt_stage(**kwargs, backbone=backbone)
    elif config.strategy == "soft_prompt":
        model, stages = _soft_prompt_stage(**kwargs, backbone=backbone)
    else:
        stages = [_resumable_stage(state, "head", "Stage 1/2 head", model,
                                   lambda: _head_stage(**kwargs))]
        if config.epochs > 0 and config.unfreeze_top > 0:
            apply_freeze(model, TopK(config.unfreeze_top))
            stages.append(_resumable_stage(state, "fine_tune", "Stage 2/2 fine-tune", model,
                                           lambda: _fine_tune_stage(**kwargs)))
    report = _evaluate(model.predict(make_ds(test.x), verbose=verbose), test.y,
                       data.class_names)

    export_path = None
    if config.export_dir and chief:
        sample = np.asarray(test.x[:8]).astype(str)
        export_path = export(
            model, config.export_dir, preprocessor=pre, class_names=data.class_names,
            task="multiclass", sample_inputs=sample,
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
        "run_dir": os.path.abspath(final_run_dir),
        "stages": stages,
        "test": {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]},
        "test_report": report.to_dict(),
        "export_path": export_path,
        "seconds": time.time() - started,
    }
    model.save_weights(os.path.join(run_dir, "final.weights.h5"))
    report_path = os.path.join(run_dir, "report.json")
    with open(report_path + ".tmp", "w") as f:
        json.dump(result, f, indent=2, default=str)
    os.replace(report_path + ".tmp", report_path)
    _save_plots(report, stages, run_dir)
    if chief:
        print(f"Report written to {report_path} ({result['seconds']:.0f} s in all)")
    else:
        discard_worker_path(run_dir, strategy)
    result["model"] = model
    return result


def _resumable_stage(state, name, label, model, run):
    """Runs a stage, or reloads its weights when the run directory says it finished."""
    done = state.stage(name)
    if done:
        model.load_weights(state.weights_path(name))
        print(f"{label}: already finished in {os.path.dirname(state.path)}, weights reloaded")
    else:
        done = run()
        state.finish_stage(done, model)
    print(f"{label}: test accuracy {done['test']['accuracy']:.4f}, "
          f"macro F1 {done['test']['macro_f1']:.4f}")
    return done


def _head_stage(config, model, pre, train, val, test, data, run_dir, verbose, make_ds,
                strategy, batch_size):
    """Stage 1: the frozen backbone runs once per example; the head trains."""
    counts = trainable_summary(model)
    print(f"Stage 1/2 head: backbone frozen, {counts['trainable']:,} trainable / "
          f"{counts['frozen']:,} frozen parameters")
    t0 = time.time()
    callbacks = default_callbacks(os.path.join(run_dir, "head"), patience=5, backup=False)
    if config.feature_cache:
        prep = {"preprocessor": pre.get_config() if pre is not None else None}
        train_f, hit_t = feature_cache.cached_features(model, train.x, make_ds, prep,
                                                       verbose=verbose)
        val_f, hit_v = feature_cache.cached_features(model, val.x, make_ds, prep,
                                                     verbose=verbose)
        feature_seconds = time.time() - t0
        with strategy.scope():
            head = feature_cache.head_model(model)
            head.compile(optimizer=keras.optimizers.Adam(config.head_learning_rate),
                         loss="sparse_categorical_crossentropy",
                         metrics=["sparse_categorical_accuracy"])
        prepare_model(head, strategy)
        hist = head.fit(
            np.asarray(train_f), train.y, validation_data=(np.asarray(val_f), val.y),
            epochs=config.head_epochs, batch_size=batch_size, verbose=verbose,
            callbacks=callbacks,
        )
    else:
        hit_t = hit_v = False
        feature_seconds = 0.0
        with strategy.scope():
            compile_model(model, preset="head", task="multiclass",
                          learning_rate=config.head_learning_rate)
        hist = model.fit(
            distribute_dataset(text_dataset(train.x, train.y, pre, batch_size, shuffle=True,
                                            seed=config.seed), strategy),
            validation_data=distribute_dataset(
                text_dataset(val.x, val.y, pre, batch_size), strategy),
            epochs=config.head_epochs, verbose=verbose, callbacks=callbacks,
        )
    _check_finite(hist, "head", run_dir, config.head_learning_rate)
    report = _evaluate(model.predict(make_ds(test.x), verbose=verbose), test.y,
                       data.class_names)
    return {
        "name": "head", "freeze": "feature_extraction", "seconds": time.time() - t0,
        "feature_seconds": feature_seconds, "feature_cache_hit": bool(hit_t and hit_v),
        "trainable_params": counts["trainable"], "history": _history(hist),
        "test": {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]},
    }


def _fine_tune_stage(config, model, pre, train, val, test, data, run_dir, verbose, make_ds,
                     strategy, batch_size):
    """Stage 2: top blocks unfrozen, lower learning rate, resumable per epoch."""
    t0 = time.time()
    counts = trainable_summary(model)
    print(f"Stage 2/2 fine-tune: top {config.unfreeze_top} blocks unfrozen, "
          f"{counts['trainable']:,} trainable / {counts['frozen']:,} frozen parameters")
    steps_per_epoch = int(np.ceil(len(train) / batch_size))
    preset = get_preset("transformer", learning_rate=config.learning_rate)
    with strategy.scope():
        model.compile(
            optimizer=make_optimizer(preset, total_steps=config.epochs * steps_per_epoch),
            loss="sparse_categorical_crossentropy", metrics=["sparse_categorical_accuracy"],
        )
    stage_dir = os.path.join(run_dir, "fine_tune")
    # Early stopping would keep state a resumed run cannot recover; the best
    # epoch is still checkpointed.
    callbacks = default_callbacks(stage_dir, patience=2, early_stopping=False, backup=True)
    first_epoch = _completed_epochs(os.path.join(stage_dir, "backup"))
    if first_epoch:
        print(f"Stage 2/2 fine-tune: resuming after epoch {first_epoch} from {stage_dir}")
    train_ds = epoch_datasets(train.x, train.y, pre, batch_size, config.epochs,
                              config.seed, first_epoch=min(first_epoch, config.epochs - 1))
    hist = model.fit(
        distribute_dataset(train_ds, strategy),
        validation_data=distribute_dataset(text_dataset(val.x, val.y, pre, batch_size),
                                           strategy),
        epochs=config.epochs, steps_per_epoch=steps_per_epoch, verbose=verbose,
        callbacks=[EpochSeeding(config.seed), *callbacks],
    )
    _check_finite(hist, "fine_tune", run_dir, config.learning_rate)
    report = _evaluate(model.predict(make_ds(test.x), verbose=verbose), test.y,
                       data.class_names)
    return {
        "name": "fine_tune", "freeze": f"top_k:{config.unfreeze_top}",
        "seconds": time.time() - t0, "trainable_params": counts["trainable"],
        "resumed_from_epoch": first_epoch, "history": _history(hist),
        "test": {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]},
    }


def _prompt_stage(config, model, pre, train, val, test, data, run_dir, verbose, make_ds,
                  strategy, batch_size, backbone):
    """Zero-shot: label prompts embedded by the backbone become the head."""
    from tfft.prompting import build_zero_shot_model

    t0 = time.time()
    with strategy.scope():
        model = build_zero_shot_model(backbone, data.class_names,
                                      template=config.prompt_template)
    model.tfft_backbone = backbone
    print(f"Prompt: zero-shot with {config.prompt_template!r}, no parameter updates")
    report = _evaluate(model.predict(make_ds(test.x), verbose=verbose), test.y,
                       data.class_names)
    stage = {
        "name": "prompt", "freeze": "feature_extraction", "template": config.prompt_template,
        "seconds": time.time() - t0, "trainable_params": 0, "history": {},
        "test": {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]},
    }
    print(f"Prompt: test accuracy {report['accuracy']:.4f}, macro F1 {report['macro_f1']:.4f}")
    return model, [stage]


def _soft_prompt_stage(config, model, pre, train, val, test, data, run_dir, verbose, make_ds,
                       strategy, batch_size, backbone):
    """Soft prompts: learnable vectors before the frozen backbone, plus a head."""
    from tfft.prompting import build_soft_prompt_classifier, count_trainable_params

    t0 = time.time()
    with strategy.scope():
        tuned = build_soft_prompt_classifier(backbone, num_classes=len(data.class_names),
                                             num_tokens=config.prompt_tokens)
        tuned.compile(keras.optimizers.Adam(config.prompt_learning_rate),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["sparse_categorical_accuracy"])
        inputs = {k: keras.Input(shape=v.shape[1:], dtype=v.dtype, name=k)
                  for k, v in backbone.model.input.items()}
        model = keras.Model(inputs, keras.layers.Softmax(dtype="float32")(tuned(inputs)))
    model.tfft_backbone = backbone
    trainable = count_trainable_params(tuned)
    epochs = max(config.epochs, 1)
    steps = int(np.ceil(len(train) / batch_size))
    hist = tuned.fit(
        distribute_dataset(epoch_datasets(train.x, train.y, pre, batch_size, epochs,
                                          config.seed), strategy),
        validation_data=distribute_dataset(text_dataset(val.x, val.y, pre, batch_size),
                                           strategy),
        epochs=epochs, steps_per_epoch=steps, verbose=verbose,
        callbacks=[EpochSeeding(config.seed),
                   *default_callbacks(os.path.join(run_dir, "soft_prompt"), patience=2,
                                      early_stopping=False, backup=False)],
    )
    _check_finite(hist, "soft_prompt", run_dir, config.prompt_learning_rate)
    report = _evaluate(model.predict(make_ds(test.x), verbose=verbose), test.y,
                       data.class_names)
    stage = {
        "name": "soft_prompt", "freeze": "soft_prompt", "seconds": time.time() - t0,
        "prompt_tokens": config.prompt_tokens, "trainable_params": trainable,
        "history": _history(hist),
        "test": {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]},
    }
    print(f"Soft prompt: {trainable:,} trainable parameters, test accuracy "
          f"{report['accuracy']:.4f}, macro F1 {report['macro_f1']:.4f}")
    return model, [stage]


def _completed_epochs(backup_dir):
    """Epochs BackupAndRestore recorded as finished (0 when starting fresh)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        # BackupAndRestore records the number of finished epochs.
        return int(json.load(f).get("epoch", 0))


def _save_plots(report, stages, run_dir):
    report.save_plots(run_dir)
    trained = [(s["name"], s["history"]) for s in stages if s["history"]]
    if trained:
        plot_training_curves(trained, os.path.join(run_dir, "training_curves.png"))


__all__ = [
    "ConfigError", "EpochSeeding", "FinetuneConfig", "NumericalError", "epoch_datasets",
    "finetune", "text_dataset",
]
