"""Asks for a TPU on a machine without one, for test_strategy.py (fresh process).

Connecting to a TPU changes TensorFlow's process-wide context, so this runs
apart from the test session. The TPU resolver is really called with
tpu="local" (it fails fast without TPU chips); only the device-file check is
pointed at a fake /dev/accel0 to make "auto" believe a TPU VM is here.
Prints one JSON object as its last line.
"""

import json

import tfft
from tfft import distribute
from tfft.distribute import strategy as strategy_lib

result = {}
try:
    strategy_lib.get_strategy("tpu", tpu="local", timeout=60)
    result["explicit"] = "no error"
except distribute.StrategyError as error:
    result["explicit"] = str(error)

real_glob = strategy_lib.glob.glob
strategy_lib.glob.glob = lambda pattern: (["/dev/accel0"] if pattern == "/dev/accel*"
                                          else real_glob(pattern))
print("detect:", strategy_lib.detect_tpu())
chosen = strategy_lib.get_strategy("auto", timeout=60)
result["auto_type"] = type(chosen).__name__
result["auto_replicas"] = chosen.num_replicas_in_sync
result["tfft"] = tfft.__version__
print(json.dumps(result))
