"""Device resolution shared by the stages."""
import pytest
import torch

from data.environment import resolve_device


def test_auto_resolves_to_an_available_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_by_name():
    with pytest.raises(ValueError, match="'cuda'.*no CUDA device"):
        resolve_device("cuda")


def test_a_device_torch_does_not_know_is_refused():
    with pytest.raises(ValueError, match="'gpu0' is not a torch device"):
        resolve_device("gpu0")
