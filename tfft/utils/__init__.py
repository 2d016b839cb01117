"""Helpers shared by every layer of tfft: file writes, checks, layer walks, the network probe.

- `tfft.utils.files`: `write_json_atomic`, `write_bytes_atomic`, `staged_directory`,
  `private_staging`, `rename_directory_exclusive`, `replace_directory`.
- `tfft.utils.checks`: `check_int`, `check_positive_number`.
- `tfft.utils.walk`: `walk_layers`, `leaf_layers`.
- `tfft.utils.network`: `require_network`, `network_reachable`, `NetworkUnavailableError`.
"""
