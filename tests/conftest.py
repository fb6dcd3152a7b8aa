"""Tests mirror the source layout (tests/core, tests/pipelines, …); the shared fixtures (fixtures_tiny.py,
fixtures_modern.py, fixtures_any.py, toy.py, web_helpers.py) stay here, importable from every folder."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(1)
