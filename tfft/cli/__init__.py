"""The `tfft` command line."""
