import hashlib

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _cache_dir(tmp_path_factory):
    """Measured decisions never reach the user's cache while testing."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("fxgrad-cache")
        mp.setenv("FXGRAD_CACHE_DIR", str(path))
        yield path


@pytest.fixture(autouse=True)
def _own_cache_dir(_cache_dir, request, monkeypatch):
    """Each test starts with an empty cache: what one test measured never decides another."""
    name = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    monkeypatch.setenv("FXGRAD_CACHE_DIR", str(_cache_dir / name))
