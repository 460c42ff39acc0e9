"""Every registered method has examples and invalid cases in the shared test tables."""

from conftest import EXAMPLES, INVALID
from segprune import METHODS


def test_examples_cover_registry():
    assert set(EXAMPLES) == set(METHODS)
    assert set(INVALID) == set(METHODS)
    for name, config in EXAMPLES.items():
        assert isinstance(config, METHODS[name])
