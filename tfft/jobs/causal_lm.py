"""The causal-LM fine-tuning job: `tfft finetune --task causal_lm --data train.jsonl`.

LoRA fine-tuning of a causal LM (default: the offline SmolLM2-135M-Instruct)
on prompt/completion pairs or plain text, then held-out perplexity, a label
report when the completions are a small set of labels, the adapters alone
(`run_dir/adapters.npz`) and a SavedModel with a `generate` signature. All
settings and the data are checked before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import keras

from tfft.data.completions import CompletionData, read_completions
from tfft.data.splits import carve_split
from tfft.evaluation.causal_lm import evaluate_completions
from tfft.export.generate import export_generate_model
from tfft.jobs.state import new_run_dir
from tfft.models.causal_lm import build_causal_lm
from tfft.utils.checks import check_split_fractions
from tfft.utils.files import write_json_atomic

DEFAULT_CAUSAL_LM = "offline:smollm2"
LR_SCHEDULES = ("cosine", "constant")
# Completions count as labels when this few distinct ones cover the data.
MAX_LABELS = 20


@dataclasses.dataclass(frozen=True)
class CausalLMJobConfig:
    """Settings of a causal-LM fine-tuning job.

    Args:
        data: str. Training data: a `.jsonl`/`.json`/`.csv` file with
            `prompt` and `completion` columns (or `text`).
        backbone: str. Causal LM spec. Defaults to `"offline:smollm2"`.
        val_data: str. Held-out file; defaults to `val_fraction` of `data`.
        test_data: str. Test file; defaults to `test_fraction` of `data`.
        lora_rank: int. LoRA rank. Defaults to 8.
        lora_mlp: bool. LoRA on the MLP projections too. Defaults to False.
        chat_template: bool. Apply the model's chat template. Defaults to False.
        sequence_length: int. Longest training example in tokens. Defaults to 256.
        gradient_checkpointing: bool. Recompute each transformer block's
            activations in the backward pass (less memory, more time).
            Defaults to False.
        batch_size: int. Defaults to 8.
        epochs: int. Defaults to 1.
        learning_rate: float. AdamW learning rate. Defaults to 2e-4.
        lr_schedule: str. `"cosine"` (a tenth of the steps of linear warmup,
            then a cosine to zero) or `"constant"`. Defaults to `"cosine"`.
        val_fraction, test_fraction: float. Shares split off `data`.
        seed: int. Split and shuffle seed. Defaults to 0.
        max_examples: int. Use the first this many training examples.
        export_dir: str or None. SavedModel directory (None: no export).
        run_dir: str. Report and adapters; defaults to a new `runs/...`.
    """

    data: str
    backbone: str = DEFAULT_CAUSAL_LM
    val_data: str | None = None
    test_data: str | None = None
    lora_rank: int = 8
    lora_mlp: bool = False
    chat_template: bool = False
    sequence_length: int = 256
    gradient_checkpointing: bool = False
    batch_size: int = 8
    epochs: int = 1
    learning_rate: float = 2e-4
    lr_schedule: str = "cosine"
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    max_examples: int | None = None
    export_dir: str | None = None
    run_dir: str | None = None

    def __post_init__(self):
        for name in ("lora_rank", "sequence_length", "batch_size", "epochs"):
            value = getattr(self, name)
            low = 2 if name == "sequence_length" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"{name}: expected an integer >= {low}. Received: {name}={value!r}"
                )
        if not isinstance(self.data, str) or not self.data:
            raise ValueError(f"data: expected a file path. Received: data={self.data!r}")
        if isinstance(self.learning_rate, bool) or not isinstance(
                self.learning_rate, (int, float)) or self.learning_rate <= 0:
            raise ValueError(f"learning_rate: expected a number > 0. Received: "
                             f"{self.learning_rate!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule: expected one of {list(LR_SCHEDULES)}. Received: "
                             f"lr_schedule={self.lr_schedule!r}")
        for name in ("lora_mlp", "chat_template", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false. Received: "
                                 f"{name}={getattr(self, name)!r}")
        check_split_fractions(self.val_fraction, self.test_fraction)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _take(data, index):
    return CompletionData(
        completions=[data.completions[i] for i in index],
        prompts=None if data.prompts is None else [data.prompts[i] for i in index])


def _split(config):
    train = read_completions(config.data)
    val = read_completions(config.val_data) if config.val_data else None
    test = read_completions(config.test_data) if config.test_data else None
    rest, val_idx, test_idx = carve_split(
        len(train), config.val_fraction, config.test_fraction, config.seed,
        carve_val=val is None, carve_test=test is None, max_train=config.max_examples)
    if test_idx is not None:
        test = _take(train, test_idx)
    if val_idx is not None:
        val = _take(train, val_idx)
    if len(rest) == 0:
        raise ValueError(f"data: no training examples are left after the split. Received "
                         f"{len(train)} examples in {config.data!r}.")
    return _take(train, rest), val, test


def _labels_of(data):
    """The completions as class labels, when they are a small set of short strings."""
    if data is None or data.prompts is None:
        return None
    labels = sorted({c.strip() for c in data.completions})
    if len(labels) > MAX_LABELS or any(len(label.split()) > 3 for label in labels):
        return None
    return labels


def run_causal_lm_job(config: CausalLMJobConfig | dict, verbose: str | int = "auto"
                      ) -> dict[str, Any]:
    """Runs a causal-LM LoRA fine-tuning job; returns the report (also `report.json`)."""
    if isinstance(config, dict):
        config = CausalLMJobConfig(**config)
    train, val, test = _split(config)  # bad data fails here, before anything is written
    keras.utils.set_random_seed(config.seed)
    started = time.time()
    task = build_causal_lm(config.backbone, freeze=f"lora:{config.lora_rank}",
                           sequence_length=config.sequence_length,
                           chat_template=config.chat_template, lora_mlp=config.lora_mlp,
                           gradient_checkpointing=config.gradient_checkpointing,
                           compile=False)
    examples = task.tokenize_data(train)  # prompts longer than the context fail here
    if config.export_dir and os.path.exists(config.export_dir) and not os.path.isdir(
            config.export_dir):
        raise ValueError(f"export_dir: {config.export_dir!r} is a file, not a directory.")
    print(f"tfft finetune: causal LM {config.backbone}, LoRA rank {config.lora_rank}: "
          f"{task.trainable_parameter_count():,} trainable of {task.parameter_count():,} "
          f"parameters; {len(train)} training examples")
    run_dir = config.run_dir or new_run_dir("runs")
    os.makedirs(run_dir, exist_ok=True)
    write_json_atomic(os.path.join(run_dir, "config.json"), config.to_dict())
    batches = task.make_dataset(examples, batch_size=config.batch_size, shuffle=True,
                                seed=config.seed)
    steps = sum(1 for _ in batches) * config.epochs if config.lr_schedule == "cosine" else None
    task.compile(learning_rate=config.learning_rate, total_steps=steps)
    history = task.fit(batches,
                       validation_data=val, batch_size=config.batch_size,
                       epochs=config.epochs, verbose=verbose)
    report: dict[str, Any] = {
        "task": "causal_lm", "backbone_spec": config.backbone, "run_dir": run_dir,
        "trainable_parameters": task.trainable_parameter_count(),
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "train_examples": len(train),
    }
    held_out = test if test is not None else val
    test_report: dict[str, Any] = {}
    if held_out is not None:
        test_report.update(task.perplexity(held_out, batch_size=config.batch_size))
        labels = _labels_of(held_out)
        if labels is not None:
            scored = evaluate_completions(task, held_out.prompts, held_out.completions,
                                          class_names=labels, batch_size=config.batch_size)
            for key in ("accuracy", "macro_f1", "exact_match", "unparsed"):
                test_report[key] = scored.metrics[key]
    report["test"] = test_report
    report["adapters"] = task.save_adapters(os.path.join(run_dir, "adapters.npz"))
    report["export_path"] = (export_generate_model(task, config.export_dir)
                             if config.export_dir else None)
    report["seconds"] = round(time.time() - started, 1)
    write_json_atomic(os.path.join(run_dir, "report.json"), json.loads(json.dumps(report)))
    report["model"] = task
    return report
