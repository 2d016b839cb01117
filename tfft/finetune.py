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

from tfft import feature_cache
from tfft.backbones import load_backbone, parse_spec
from tfft.backbones.registry import ALIASES
from tfft.builders import build_model, check_labels
from tfft.data import TEXT_DATASETS, stratified_split
from tfft.export import export
from tfft.freeze import TopK, apply_freeze, trainable_summary
from tfft.presets import compile_model, get_preset, make_optimizer


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

    def __post_init__(self):
        positive = ("sequence_length", "batch_size", "head_epochs")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer. Received: {name}={value!r}")
        for name in ("epochs", "unfreeze_top", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(
                    f"{name} must be a non-negative integer. Received: {name}={value!r}"
                )
        for name in ("head_learning_rate", "learning_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"{name} must be a positive number. Received: {name}={value!r}")
        if self.max_examples is not None and (
            not isinstance(self.max_examples, int) or self.max_examples < 10
        ):
            raise ConfigError(
                f"max_examples must be an integer >= 10, or None for all. Received: "
                f"max_examples={self.max_examples!r}"
            )
        if self.dataset not in TEXT_DATASETS:
            raise ConfigError(
                f"Unknown dataset. Expected one of {sorted(TEXT_DATASETS)}. "
                f"Received: dataset={self.dataset!r}"
            )
        try:
            parse_spec(self.backbone)
        except (ValueError, TypeError) as error:
            raise ConfigError(str(error)) from None

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data):
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(
                f"Unknown setting(s) {sorted(unknown)}. Valid settings: "
                f"{sorted(f.name for f in dataclasses.fields(cls))}"
            )
        return cls(**data)


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


def _history(history):
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _evaluate(probs, labels, class_names):
    from tfft.evaluation import report_from_predictions

    return report_from_predictions(labels, probs, task="multiclass", class_names=class_names)


def finetune(config=None, verbose="auto", **overrides):
    """Runs the main job: head on a frozen backbone, then top-k fine-tuning.

    Args:
        config: FinetuneConfig or dict. Defaults to `FinetuneConfig()`.
        verbose: Keras verbosity for progress bars.
        **overrides: settings that replace those in `config`.

    Returns:
        The report dict (also written to `run_dir/report.json`): per-stage
        test accuracy and macro F1, histories, the final `"test"` metrics and
        `"export_path"`.

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
            raise ConfigError(f"The export directory {config.export_dir!r} is a file.")

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

    backbone = load_backbone(config.backbone, sequence_length=config.sequence_length)
    model = build_model(backbone, task="multiclass", num_classes=num_classes,
                        freeze="feature_extraction", compile=False)
    pre = backbone.preprocessor
    bs = config.batch_size

    def make_ds(x):
        return text_dataset(x, None, pre, bs)

    from tfft.evaluation.callbacks import default_callbacks

    os.makedirs(run_dir, exist_ok=True)
    stages = []

    # Stage 1: feature extraction. The frozen backbone runs once per example.
    counts = trainable_summary(model)
    print(f"Stage 1/2 head: backbone frozen, {counts['trainable']:,} trainable / "
          f"{counts['frozen']:,} frozen parameters")
    t0 = time.time()
    prep = {"preprocessor": pre.get_config() if pre is not None else None}
    if config.feature_cache:
        train_f, hit_t = feature_cache.cached_features(model, train.x, make_ds, prep,
                                                       verbose=verbose)
        val_f, hit_v = feature_cache.cached_features(model, val.x, make_ds, prep,
                                                     verbose=verbose)
        head = feature_cache.head_model(model)
        head.compile(optimizer=keras.optimizers.Adam(config.head_learning_rate),
                     loss="sparse_categorical_crossentropy",
                     metrics=["sparse_categorical_accuracy"])
        feature_seconds = time.time() - t0
        hist = head.fit(
            np.asarray(train_f), train.y, validation_data=(np.asarray(val_f), val.y),
            epochs=config.head_epochs, batch_size=bs, verbose=verbose,
            callbacks=default_callbacks(os.path.join(run_dir, "head"), patience=5,
                                        backup=False),
        )
    else:
        hit_t = hit_v = False
        feature_seconds = 0.0
        compile_model(model, preset="head", task="multiclass",
                      learning_rate=config.head_learning_rate)
        hist = model.fit(
            text_dataset(train.x, train.y, pre, bs, shuffle=True, seed=config.seed),
            validation_data=text_dataset(val.x, val.y, pre, bs),
            epochs=config.head_epochs, verbose=verbose,
            callbacks=default_callbacks(os.path.join(run_dir, "head"), patience=5,
                                        backup=False),
        )
    test_probs = model.predict(make_ds(test.x), verbose=verbose)
    report = _evaluate(test_probs, test.y, data.class_names)
    stages.append({
        "name": "head", "freeze": "feature_extraction", "seconds": time.time() - t0,
        "feature_seconds": feature_seconds, "feature_cache_hit": bool(hit_t and hit_v),
        "trainable_params": counts["trainable"], "history": _history(hist),
        "test": {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]},
    })
    print(f"Stage 1/2 head: test accuracy {report['accuracy']:.4f}, "
          f"macro F1 {report['macro_f1']:.4f}")

    # Stage 2: unfreeze the top blocks, fine-tune with a lower learning rate.
    if config.epochs > 0 and config.unfreeze_top > 0:
        t0 = time.time()
        apply_freeze(model, TopK(config.unfreeze_top))
        counts = trainable_summary(model)
        print(f"Stage 2/2 fine-tune: top {config.unfreeze_top} blocks unfrozen, "
              f"{counts['trainable']:,} trainable / {counts['frozen']:,} frozen parameters")
        steps = config.epochs * int(np.ceil(len(train) / bs))
        preset = get_preset("transformer", learning_rate=config.learning_rate)
        model.compile(optimizer=make_optimizer(preset, total_steps=steps),
                      loss="sparse_categorical_crossentropy",
                      metrics=["sparse_categorical_accuracy"])
        hist = model.fit(
            text_dataset(train.x, train.y, pre, bs, shuffle=True, seed=config.seed),
            validation_data=text_dataset(val.x, val.y, pre, bs), epochs=config.epochs,
            verbose=verbose,
            callbacks=default_callbacks(os.path.join(run_dir, "fine_tune"), patience=2,
                                        backup=False),
        )
        test_probs = model.predict(make_ds(test.x), verbose=verbose)
        report = _evaluate(test_probs, test.y, data.class_names)
        stages.append({
            "name": "fine_tune", "freeze": f"top_k:{config.unfreeze_top}",
            "seconds": time.time() - t0, "trainable_params": counts["trainable"],
            "history": _history(hist),
            "test": {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]},
        })
        print(f"Stage 2/2 fine-tune: test accuracy {report['accuracy']:.4f}, "
              f"macro F1 {report['macro_f1']:.4f}")

    export_path = None
    if config.export_dir:
        sample = np.asarray(test.x[:8]).astype(str)
        export_path = export(
            model, config.export_dir, preprocessor=pre, class_names=data.class_names,
            task="multiclass", sample_inputs=sample,
            metadata={
                "backbone": config.backbone, "dataset": config.dataset,
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
        "seconds": time.time() - started,
    }
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2)
    report_path = os.path.join(run_dir, "report.json")
    with open(report_path + ".tmp", "w") as f:
        json.dump(result, f, indent=2, default=str)
    os.replace(report_path + ".tmp", report_path)
    _save_plots(report, stages, run_dir)
    print(f"Report written to {report_path} ({result['seconds']:.0f} s in all)")
    result["model"] = model
    return result


def _save_plots(report, stages, run_dir):
    from tfft.evaluation.plots import plot_training_curves

    report.save_plots(run_dir)
    plot_training_curves([(s["name"], s["history"]) for s in stages],
                         os.path.join(run_dir, "training_curves.png"))


__all__ = ["ALIASES", "ConfigError", "FinetuneConfig", "finetune", "text_dataset"]
