from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests that tear the shared lab down must run after every test that uses it.
    items.sort(key=lambda item: item.get_closest_marker("lab_teardown") is not None)
