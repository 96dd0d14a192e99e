from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import RunningServer, run_server

pytest_plugins = ["pytester"]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real ``fieldlink serve`` (HTTPS + redirect port + worker) shared by a whole session."""
    with run_server(tmp_path_factory.mktemp("server-var")) as running:
        yield running
