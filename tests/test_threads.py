"""The CPU threads torch computes on: one for a model too small to share its work, and restored after a block."""

import pytest
import torch

from components import threads
from components.modeling import load_base_model
from components.threads import cpu_threads, use_cpu_threads_for


def test_a_model_under_ten_million_parameters_on_the_cpu_computes_on_one_thread(tiny_model_dir, monkeypatch):
    with cpu_threads(3):
        assert torch.get_num_threads() == 3
        use_cpu_threads_for(load_base_model(str(tiny_model_dir)))
        assert torch.get_num_threads() == 1
        torch.set_num_threads(3)
        monkeypatch.setattr(threads, "ONE_THREAD_MAX_PARAMETERS", sum(p.numel() for p in load_base_model(str(tiny_model_dir)).parameters()))
        use_cpu_threads_for(load_base_model(str(tiny_model_dir)))  # exactly the limit: not under it
        assert torch.get_num_threads() == 3


def test_threads_are_restored_after_the_block_even_on_an_error():
    before = torch.get_num_threads()
    with pytest.raises(KeyError):
        with cpu_threads(before + 1):
            raise KeyError
    assert torch.get_num_threads() == before
