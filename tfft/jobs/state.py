"""What a run directory records, so that a killed job resumes where it stopped."""

from __future__ import annotations

import json
import os

from tfft.jobs.config import DEPRECATED_SETTINGS, ConfigError
from tfft.utils.files import write_json_atomic


class RunState:
    """What a run directory records about finished stages, for resuming."""

    def __init__(self, run_dir, config):
        self.path = os.path.join(run_dir, "state.json")
        self.weights_dir = os.path.join(run_dir, "stage_weights")
        self.data = {"config": config.to_dict(), "stages": []}
        if os.path.exists(self.path):
            with open(self.path) as f:
                saved = json.load(f)
            # Run directories written before the rename keep resuming.
            for old, new in DEPRECATED_SETTINGS.items():
                if old in saved["config"]:
                    saved["config"].setdefault(new, saved["config"].pop(old))
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
        write_json_atomic(self.path, self.data, default=str)


def resumable_stage(state, name, label, model, run, on_reload=None):
    """Runs a stage, or reloads its weights when the run directory says it finished.

    `on_reload()` is called after a reload (the weights changed outside any stage).
    """
    done = state.stage(name)
    if done:
        model.load_weights(state.weights_path(name))
        if on_reload is not None:
            on_reload()
        print(f"{label}: already finished in {os.path.dirname(state.path)}, weights reloaded")
    else:
        done = run()
        state.finish_stage(done, model)
    print(f"{label}: test accuracy {done['test']['accuracy']:.4f}, "
          f"macro F1 {done['test']['macro_f1']:.4f}")
    return done
