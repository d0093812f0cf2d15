import pytest

from tests.tiny import build_tiny_model, build_tiny_tokenizer, require_shared


@pytest.fixture(scope="session")
def shared_dir():
    """The read-only ../shared folder beside the repository (real data, EEP files).

    Absent, the tests using it skip; under CI=true they fail, naming the path (see tests/tiny.py)."""
    return require_shared()


@pytest.fixture(scope="session")
def tiny_mixtral_path(tmp_path_factory):
    """A saved tiny random Mixtral with a tiny tokenizer in the same folder."""
    path = tmp_path_factory.mktemp("tiny_mixtral")
    build_tiny_tokenizer(path)
    build_tiny_model(path, "mixtral")
    return path
