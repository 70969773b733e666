"""Fixtures: tiny generated image datasets and a tiny search space, all in tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_SPACE, write_class_folders


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_class_folders(tmp_path / "data")


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPACE)
    return path


# The test models are tiny: one intra-op thread is as fast and does not fight other processes.
os.environ["AUTOCLS_THREADS"] = "1"
torch.set_num_threads(1)
