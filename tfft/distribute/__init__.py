"""tf.distribute for tfft: TPUs, several GPUs and several machines, never a home-made strategy.

- `tfft.distribute.strategy`: `get_strategy` (choosing the strategy), `detect_tpu`.
- `tfft.distribute.cluster`: `TF_CONFIG` (`parse_tf_config`), `task_info`, `is_chief`,
  the chief-only writes, each worker's own run folder (`worker_dir`) and
  `gather_from_workers`.
- `tfft.distribute.batching`: global/per-replica batch sizes, learning-rate scaling,
  `distribute_dataset`.
- `tfft.distribute.model`: `check_built_in_scope`, `prepare_model`.
"""

from tfft.distribute.batching import (
    distribute_dataset,
    global_batch_size,
    num_replicas,
    per_replica_batch_size,
    scale_learning_rate,
)
from tfft.distribute.cluster import (
    chief_only_path,
    chief_writes,
    discard_worker_path,
    gather_from_workers,
    is_chief,
    parse_tf_config,
    task_info,
    worker_dir,
)
from tfft.distribute.errors import StrategyError
from tfft.distribute.model import check_built_in_scope, prepare_model
from tfft.distribute.strategy import (
    STRATEGY_NAMES,
    KerasMirroredStrategy,
    KerasMultiWorkerMirroredStrategy,
    detect_tpu,
    get_strategy,
)

__all__ = [
    "STRATEGY_NAMES",
    "KerasMirroredStrategy",
    "KerasMultiWorkerMirroredStrategy",
    "StrategyError",
    "check_built_in_scope",
    "chief_only_path",
    "chief_writes",
    "detect_tpu",
    "discard_worker_path",
    "distribute_dataset",
    "gather_from_workers",
    "get_strategy",
    "global_batch_size",
    "is_chief",
    "num_replicas",
    "parse_tf_config",
    "per_replica_batch_size",
    "prepare_model",
    "scale_learning_rate",
    "task_info",
    "worker_dir",
]
