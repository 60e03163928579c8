"""common.device: the default device is CUDA when present, else the CPU, and never Apple MPS (its results
differ from the CPU's), while an explicit request is honoured."""
import pytest
import torch

from common import device as dev


@pytest.fixture
def mac(monkeypatch):
    """A machine where MPS is available and CUDA is not, as on an Apple-silicon Mac."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_mps_is_not_the_default(mac):
    assert torch.backends.mps.is_available()
    assert dev.pick_device() == torch.device("cpu")
    assert dev.scaled(3, 300) == 3                       # CPU-sized workloads on a Mac
    assert not dev.is_cuda(dev.pick_device())


def test_explicit_mps_is_honoured(mac):
    assert dev.pick_device("mps").type == "mps"
    assert dev.pick_device(torch.device("cpu")) == torch.device("cpu")


def test_cuda_is_the_default_when_present(monkeypatch):
    """The same monkeypatching does reach pick_device: with CUDA present it is chosen, MPS or not."""
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.pick_device() == torch.device("cuda")
    assert dev.scaled(3, 300) == 300
