"""Sampling at the paper's scale (50K samples, every 10 NFE) over many processes, GPUs and machines.

The run is a set of work items (blocks of consecutive sample indices) whose seeds and conditioning are functions
of the index alone; each process takes its items (from torchrun's ``RANK``/``WORLD_SIZE`` or ``--shard i/N``),
skips the ones whose file exists, and writes the others atomically. The result is the same for any number of
processes, and an interrupted run resumes by rerunning the same command with any number of processes.
"""
from .merge import merge_run, to_nhwc_rgb
from .ranks import Shard, assign, close_group, open_group, parse_shard, shard_from_env
from .store import ConfigMismatchError, IncompleteRunError, SampleStore, config_hash, differing_keys
from .worker import NOISE_MODES, SampleJob, run_shard

__all__ = ["merge_run", "to_nhwc_rgb", "Shard", "assign", "close_group", "open_group", "parse_shard",
           "shard_from_env", "ConfigMismatchError", "IncompleteRunError", "SampleStore", "config_hash",
           "differing_keys", "NOISE_MODES", "SampleJob", "run_shard"]
