"""The causal-LM task on a tiny random Llama: data, masking, LoRA, generation, export."""

import json
import os
import re

import keras
import numpy as np
import pytest

import tfft
from tfft._compat import dense_kernel_variable
from tfft.data.completions import (
    CompletionData,
    padding_fraction,
    read_completions,
    tokenize_completions,
)
from tfft.evaluation.causal_lm import completion_to_class, evaluate_completions
from tfft.export.generate import export_generate_model
from tfft.models.causal_lm import CausalLMTask, build_causal_lm

PAIRS = [("the review was good", " positive"), ("the film was bad", " negative"),
         ("the film was great", " positive"), ("the review was awful", " negative")]


def _inputs(task, texts):
    ids = task._tokenize_many(texts)
    width = max(len(x) for x in ids)
    token_ids = np.zeros((len(ids), width), "int32")
    mask = np.zeros((len(ids), width), bool)
    for i, x in enumerate(ids):
        token_ids[i, :len(x)] = x
        mask[i, :len(x)] = True
    return {"token_ids": token_ids, "padding_mask": mask}


# -- data --------------------------------------------------------------------------------


def test_read_completions_from_every_form(tmp_path):
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in PAIRS))
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("text\nthe film was good\nthe match was won\n")
    assert read_completions(str(jsonl)).prompts == [p for p, _ in PAIRS]
    assert read_completions(str(csv_path)).completions == ["the film was good",
                                                          "the match was won"]
    assert read_completions(str(csv_path)).is_plain_text
    assert read_completions(PAIRS).completions == [c for _, c in PAIRS]
    assert read_completions({"prompt": ["a"], "completion": ["b"]}).prompts == ["a"]
    assert read_completions(["plain text"]).prompts is None
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices({"prompt": ["a", "b"], "completion": ["c", "d"]})
    assert read_completions(ds).completions == ["c", "d"]


def test_data_without_a_completion_column_is_refused(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "answer": "there"}) + "\n")
    with pytest.raises(ValueError, match=r"no 'completion' column.*'answer'"):
        read_completions(str(path))
    with pytest.raises(ValueError, match="Unknown causal-LM data file type"):
        read_completions(str(tmp_path / "x.parquet"))


def test_loss_weights_cover_the_completion_and_end_token_only():
    data = CompletionData(prompts=["p p p"], completions=["c c"])

    def tokenize(texts):
        return [[ord(ch) for ch in t.split()[0]] * len(t.split()) for t in texts]

    ex = tokenize_completions(data, tokenize, max_length=16, end_token_id=2)
    # prompt 3 tokens, completion 2, end 1 -> 6 ids, 5 targets; targets 2..4 weighted
    np.testing.assert_array_equal(ex.weights[0], [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ex.targets[0][2:], [ord("c"), ord("c"), 2])


def test_a_prompt_longer_than_the_context_is_refused_by_name():
    data = CompletionData(prompts=["x " * 20], completions=["y"])
    with pytest.raises(ValueError, match=r"Example 0: the prompt is 20 tokens.*at most 8"):
        tokenize_completions(data, lambda ts: [t.split() for t in ts], max_length=8)


def test_length_bucketing_keeps_padding_small():
    lengths = list(np.random.default_rng(0).integers(4, 120, 200))
    bucketed = padding_fraction(lengths, 8, 128, pad_to_multiple=1)
    naive = 1 - sum(lengths) / (128 * len(lengths))
    assert bucketed < 0.05 < naive


# -- the task ------------------------------------------------------------------------------


def test_build_model_gives_a_lora_causal_lm_task(make_lm):
    task = tfft.build_model(make_lm(), task="causal_lm", freeze="lora:4")
    assert isinstance(task, CausalLMTask) and isinstance(task, keras.Model)
    assert task.freeze_policy.rank == 4 and task.preprocessor is not None
    lora = task.lora_layers()
    assert {layer.path.rsplit("/", 1)[-1] for layer in lora} == {
        "query", "key", "value", "attention_output"}
    expected = sum(int(np.prod(layer.lora_kernel_a.shape) + np.prod(layer.lora_kernel_b.shape))
                   for layer in lora)
    assert task.trainable_parameter_count() == expected
    mlp = build_causal_lm(make_lm(), freeze="lora:4", lora_mlp=True)
    assert len(mlp.lora_layers()) == len(lora) + 3 * 2


@pytest.mark.parametrize("freeze, message", [
    ("lora:0", "positive int rank. Received: rank=0"),
    ("lora:x", "needs an integer after ':'. Received: freeze='lora:x'"),
    ("top_k:1", r"task='causal_lm' trains with one of .*Received: freeze='top_k:1'"),
])
def test_bad_freeze_is_refused(freeze, message, make_lm):
    with pytest.raises(ValueError, match=message):
        tfft.build_model(make_lm(), task="causal_lm", freeze=freeze)


def test_an_encoder_backbone_is_refused():
    import keras_hub

    bert = keras_hub.models.BertBackbone(vocabulary_size=10, num_layers=1, num_heads=1,
                                         hidden_dim=4, intermediate_dim=8,
                                         max_sequence_length=8)
    with pytest.raises(ValueError, match=r"causal \(GPT-style\).*Received: BertBackbone"):
        tfft.build_model(bert, task="causal_lm")
    # Encoder and image specs are named as such, before any download is tried.
    for spec in ("minilm", "keras_app:MobileNetV2", "offline:efficientnet_lite0",
                 "tfhub:https://tfhub.dev/x"):
        with pytest.raises(ValueError, match=rf"{re.escape(spec)}' names an encoder or image"):
            tfft.build_model(spec, task="causal_lm")


def test_lora_training_changes_only_adapters_and_lowers_the_loss(make_lm):
    task = build_causal_lm(make_lm(), freeze="lora:4", learning_rate=5e-2)
    base = {v.path: v.numpy().copy() for v in task.backbone.weights if "lora" not in v.path}
    before = task.perplexity(PAIRS)["loss"]
    task.fit(PAIRS * 4, epochs=4, batch_size=4, verbose=0, seed=0)
    after = task.perplexity(PAIRS)["loss"]
    assert after < before - 0.05
    for v in task.backbone.weights:
        if "lora" not in v.path:
            np.testing.assert_array_equal(v.numpy(), base[v.path], err_msg=v.path)
    assert any(np.any(layer.lora_kernel_b.numpy()) for layer in task.lora_layers())


def test_fit_traces_the_train_step_once(make_lm, count_train_step_traces):
    task = build_causal_lm(make_lm(), freeze="lora:4", learning_rate=5e-2)
    traces = count_train_step_traces(task)
    task.fit(PAIRS, epochs=1, batch_size=4, verbose=0, seed=0)
    # The optimizer is built before fit: built inside the first trace, its new
    # variables would make tf.function trace the whole step a second time.
    assert len(traces) == 1
    assert task.optimizer.built
    # In one tf.function (tfft.training.make_single_train_function), not Keras' two.
    assert hasattr(task.train_function, "traced")


def test_gradient_checkpointing_recomputes_blocks_and_trains_to_the_same_weights(
        tmp_path, make_lm):
    def train(checkpointing):
        lm = make_lm()
        traced = []
        for block in lm.backbone.transformer_layers:
            # Count the Python calls of each block: once per trace without
            # checkpointing, once more (the recomputation) with it.
            original = block.call
            object.__setattr__(block, "call", lambda *a, _call=original, **k: (
                traced.append(1), _call(*a, **k))[1])
        task = build_causal_lm(lm, freeze="lora:4", learning_rate=2e-2,
                               gradient_checkpointing=checkpointing)
        traced.clear()
        task.fit(PAIRS * 2, epochs=2, batch_size=8, verbose=0, shuffle=False)
        return task, len(traced), [v.numpy() for v in task.trainable_variables]

    plain, plain_calls, plain_weights = train(False)
    checked, checked_calls, checked_weights = train(True)
    blocks = len(plain.backbone.transformer_layers)
    # The same number of traces, each calling every block twice instead of once.
    assert plain_calls > 0 and plain_calls % blocks == 0
    assert checked_calls == 2 * plain_calls
    for a, b in zip(plain_weights, checked_weights, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-6)
    assert any(np.any(layer.lora_kernel_b.numpy()) for layer in checked.lora_layers())
    # Generation and reloading are unaffected; the setting is kept in the file.
    prompt = [p for p, _ in PAIRS][:2]
    assert checked.generate(prompt, max_new_tokens=3) == plain.generate(prompt,
                                                                        max_new_tokens=3)
    checked.save(str(tmp_path / "task.keras"))
    back = keras.saving.load_model(str(tmp_path / "task.keras"))
    assert back.gradient_checkpointing is True
    with pytest.raises(ValueError, match="gradient_checkpointing must be True or False"):
        build_causal_lm(make_lm(), gradient_checkpointing="yes")


def test_total_steps_gives_a_warmup_then_a_cosine_to_zero(make_lm):
    from tfft.jobs.causal_lm import CausalLMJobConfig

    task = build_causal_lm(make_lm(), freeze="lora:2", compile=False)
    task.compile(learning_rate=1e-3, total_steps=50)
    rate = task.optimizer.learning_rate
    schedule = keras.optimizers.schedules.deserialize(
        task.optimizer.get_config()["learning_rate"])
    values = [float(schedule(step)) for step in (0, 5, 27, 50)]
    assert values[0] == 0.0 and values[1] == pytest.approx(1e-3)
    assert 0.4e-3 < values[2] < 0.6e-3 and values[3] == pytest.approx(0.0, abs=1e-9)
    assert float(rate) == 0.0  # the optimizer's own clock starts at the warmup
    with pytest.raises(ValueError, match="total_steps must be a positive int"):
        task.compile(total_steps=0)
    with pytest.raises(ValueError, match=r"lr_schedule: expected one of \['cosine', "
                       r"'constant'\]. Received: lr_schedule='linear'"):
        CausalLMJobConfig(data="x.jsonl", lr_schedule="linear")


def test_adapters_save_alone_load_on_a_fresh_base_and_merge(tmp_path, make_lm, copy_lm):
    lm = make_lm()
    fresh = copy_lm(lm)
    task = build_causal_lm(lm, freeze="lora:4", learning_rate=2e-2)
    task.fit(PAIRS * 2, epochs=2, batch_size=4, verbose=0)
    x = _inputs(task, [p for p, _ in PAIRS])
    want = np.asarray(task(x))
    path = task.save_adapters(str(tmp_path / "adapters.npz"))
    with np.load(path) as saved:  # the adapters alone, no base weight
        stored = sum(saved[k].size for k in saved.files if k != "meta")
    assert stored == task.trainable_parameter_count()
    loaded = build_causal_lm(fresh, freeze="full", compile=False)
    loaded.load_adapters(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), want, atol=1e-5)
    merged = task.merge()
    assert not merged.lora_layers()
    np.testing.assert_allclose(np.asarray(merged(x)), want, atol=1e-4)


def test_keras_round_trip(tmp_path, make_lm):
    task = build_causal_lm(make_lm(), freeze="lora:2", learning_rate=2e-2)
    task.fit(PAIRS, epochs=1, batch_size=4, verbose=0)
    x = _inputs(task, ["the film was good"])
    task.save(str(tmp_path / "task.keras"))
    back = keras.saving.load_model(str(tmp_path / "task.keras"))
    assert isinstance(back, CausalLMTask) and back.freeze_policy.rank == 2
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(task(x)), atol=1e-5)
    # The adapters come back unmerged: base kernels and A, B as trained.
    assert len(back.lora_layers()) == len(task.lora_layers())
    for mine, theirs in zip(task.lora_layers(), back.lora_layers(), strict=True):
        assert np.any(mine.lora_kernel_b.numpy())
        for name in ("lora_kernel_a", "lora_kernel_b"):
            np.testing.assert_array_equal(getattr(theirs, name).numpy(),
                                          getattr(mine, name).numpy())
        np.testing.assert_array_equal(dense_kernel_variable(theirs).numpy(),
                                      dense_kernel_variable(mine).numpy())
    assert sorted(w.path for w in back.trainable_weights) == sorted(
        w.path for w in task.trainable_weights)
    assert back.generate("the film", max_new_tokens=3) == task.generate("the film",
                                                                        max_new_tokens=3)


# -- generation ------------------------------------------------------------------------------


def test_generate_is_batched_greedy_and_stops(make_lm):
    task = build_causal_lm(make_lm(), freeze="lora:2", compile=False)
    prompts = ["the review was good", "the film", "a match was won the answer is"]
    batched = task.generate(prompts, max_new_tokens=6)
    assert batched == [task.generate(p, max_new_tokens=6) for p in prompts]
    shorter = task.generate(prompts, max_new_tokens=2)
    assert all(long.startswith(short) for long, short in zip(batched, shorter, strict=True))
    assert shorter != batched
    stop = batched[0][2:4]
    assert task.generate(prompts[0], max_new_tokens=6, stop=stop) == batched[0][
        :batched[0].find(stop)]
    sampled = task.generate(prompts, max_new_tokens=4, sampler="top_p", temperature=0.7, seed=1)
    assert len(sampled) == 3 and all(isinstance(s, str) for s in sampled)
    seen = []
    task.generate(prompts, max_new_tokens=2, callback=lambda i, text: seen.append(i))
    assert sorted(seen) == [0, 1, 2]


def test_generate_refuses_bad_arguments(make_lm):
    task = build_causal_lm(make_lm(), freeze="lora:2", compile=False, context_length=64)
    with pytest.raises(ValueError, match=r"Unknown sampler.*Received: sampler='beam'"):
        task.generate("the film", sampler="beam")
    with pytest.raises(ValueError, match=r"Prompt 0 is \d+ tokens.*context is 64"):
        task.generate("the film " * 40, max_new_tokens=8)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        task.generate("the film", max_new_tokens=0)


def test_completions_as_labels_are_scored_with_the_sklearn_report(make_lm):
    assert completion_to_class(" Positive.", ["negative", "positive"]) == 1
    assert completion_to_class("maybe", ["negative", "positive"]) is None
    task = build_causal_lm(make_lm(), freeze="lora:2", compile=False)
    report = evaluate_completions(task, [p for p, _ in PAIRS], [c for _, c in PAIRS])
    assert set(report.metrics) >= {"accuracy", "macro_f1", "exact_match", "unparsed"}
    assert 0.0 <= report.metrics["accuracy"] <= 1.0


# -- export --------------------------------------------------------------------------------


def test_cli_finetunes_exports_and_generates(tmp_path, make_lm, capsys):
    from tfft.cli.main import main
    from tfft.models.causal_lm import CausalLMTask

    preset = str(tmp_path / "tiny_preset")
    make_lm().save_to_preset(preset)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in PAIRS * 5))
    export, run_dir = tmp_path / "export", tmp_path / "run"
    assert main(["finetune", "--task", "causal_lm", "--backbone", preset, "--data", str(data),
                 "--lora-rank", "2", "--sequence-length", "32", "--epochs", "1",
                 "--learning-rate", "0.02", "--gradient-checkpointing",
                 "--export-dir", str(export), "--run-dir", str(run_dir)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert json.loads((run_dir / "config.json").read_text())["gradient_checkpointing"] is True
    assert report["test"]["tokens"] > 0 and "accuracy" in report["test"]
    assert main(["generate", "--model", str(export), "--max-new-tokens", "4",
                 "the film", "the review was good"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    # The same adapters on a fresh base generate the same completions in-process.
    fresh = build_causal_lm(preset, freeze="lora:2", sequence_length=32, compile=False)
    assert isinstance(fresh, CausalLMTask)
    fresh.load_adapters(report["adapters"])
    assert [x["completion"] for x in lines] == fresh.generate(
        ["the film", "the review was good"], max_new_tokens=4)


def test_run_job_passes_the_causal_lm_settings_through(tmp_path, make_lm):
    import tfft
    from tfft.jobs.config import ConfigError

    preset = str(tmp_path / "tiny_preset")
    make_lm().save_to_preset(preset)
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "completion": c}) for p, c in PAIRS * 5))
    run_dir = tmp_path / "run"
    report = tfft.run_job(task="causal_lm", backbone=preset, data=str(data), epochs=1,
                          sequence_length=32, lora_rank=2, lora_mlp=True,
                          lr_schedule="constant", test_fraction=0.2, export_dir=None,
                          run_dir=str(run_dir), verbose=0)
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["lora_rank"], saved["lora_mlp"], saved["lr_schedule"]) == (2, True, "constant")
    assert saved["test_fraction"] == 0.2 and saved["val_fraction"] == 0.1  # the job's own
    task = report["model"]
    assert task.freeze_policy.rank == 2
    # Attention and MLP projections: 4 + 3 per block of the tiny Llama's 2.
    assert len(task.lora_layers()) == 7 * len(task.backbone.transformer_layers)
    # Constant: still the full rate after the last step (the cosine ends at zero).
    assert float(task.optimizer.learning_rate) == pytest.approx(2e-4)
    with pytest.raises(ConfigError, match=r"\['lora_mlp'\] apply to task: causal_lm only"):
        tfft.run_job(task="multiclass", lora_mlp=True)


def test_cli_refuses_bad_data_and_writes_nothing(tmp_path, capsys):
    from tfft.cli.main import main

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "hi", "answer": "there"}) + "\n")
    run_dir = tmp_path / "run"
    assert main(["finetune", "--task", "causal_lm", "--data", str(data),
                 "--run-dir", str(run_dir)]) == 2
    assert "no 'completion' column" in capsys.readouterr().err
    assert not run_dir.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--task", "causal_lm", "--data", str(data), "--lora-rank", "0"])
    assert exit_info.value.code == 2
    assert "expected a positive integer. Received: '0'" in capsys.readouterr().err


def test_a_failed_export_verification_writes_nothing(tmp_path, monkeypatch, make_lm):
    import tfft.export.generate as generate_module

    task = build_causal_lm(make_lm(), freeze="lora:2", compile=False)
    def fail(*args, **kwargs):
        raise generate_module.GenerateExportError("generates differently")

    # Fails inside the staging folder, after it was created.
    monkeypatch.setattr(generate_module, "generate_function", fail)
    with pytest.raises(generate_module.GenerateExportError, match="generates differently"):
        export_generate_model(task, str(tmp_path / "lm"), sample_prompts=["the film"])
    assert not os.path.exists(tmp_path / "lm") or os.listdir(tmp_path / "lm") == []


def test_score_completions_sums_the_candidate_token_log_probabilities(make_lm):
    task = build_causal_lm(make_lm(), freeze="lora:2", compile=False)
    prompts = ["the film was", "the review was good"]
    candidates = [" good", " bad awful"]
    scores = task.score_completions(prompts, candidates, batch_size=3)
    assert scores.shape == (2, 2)
    for i, prompt in enumerate(prompts):
        for j, candidate in enumerate(candidates):
            # By hand: one forward pass over prompt + candidate, tokenised apart.
            p_ids = task._tokenize_many([prompt])[0]
            c_ids = task._tokenize_many([candidate])[0]
            ids = np.array([p_ids + c_ids], "int32")
            logits = np.asarray(task({"token_ids": ids, "padding_mask": ids >= 0}))[0]
            log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            want = sum(log_probs[len(p_ids) - 1 + k, token] for k, token in enumerate(c_ids))
            assert scores[i, j] == pytest.approx(want, abs=1e-4)
    with pytest.raises(ValueError, match="candidates must be a non-empty list"):
        task.score_completions(prompts, [])


def test_a_keras_file_saved_before_unmerged_adapters_still_loads(tmp_path, make_lm,
                                                                  monkeypatch):
    from tfft.models.task import _LoRAState

    task = build_causal_lm(make_lm(), freeze="lora:2", learning_rate=2e-2)
    task.fit(PAIRS, epochs=1, batch_size=4, verbose=0)
    x = _inputs(task, ["the film was good"])
    # What older files hold: no unmerged adapter entries, the kernels merged by Keras.
    with monkeypatch.context() as patch:
        patch.setattr(_LoRAState, "save_own_variables", lambda self, store: None)
        task.save(str(tmp_path / "old.keras"))
    back = keras.saving.load_model(str(tmp_path / "old.keras"))
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(task(x)), atol=1e-5)
    assert not any(np.any(layer.lora_kernel_b.numpy()) for layer in back.lora_layers())
