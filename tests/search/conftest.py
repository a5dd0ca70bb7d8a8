"""Fixtures shared by the search tests: the demo teacher trained once per session (for the
end-to-end searches), a local Ray (for the Ray backend's searches) and the hand-made study
storage of the report / show / export / list tests, built once per test module."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.search.study_fixtures import HandMadeStudy, hand_made_storage


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[HandMadeStudy, HandMadeStudy]:
    """``(hand, hopeless)``: one journal holding them and a ``foreign`` study."""
    return hand_made_storage(tmp_path_factory)


@pytest.fixture(scope="module")
def hand(studies: tuple[HandMadeStudy, HandMadeStudy]) -> HandMadeStudy:
    """The study with feasible trials and exportable artifacts."""
    return studies[0]


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo teacher's cache folder, trained once for the whole session (as the first search
    would); tests copy it to ``<cwd>/studies/.cache``."""
    from search.workloads import WorkloadSpec, load_workload

    studies = tmp_path_factory.mktemp("demo-teacher") / "studies"
    load_workload(WorkloadSpec(), device=torch.device("cpu"), studies_dir=studies, progress=False)
    return studies / ".cache"


@pytest.fixture
def search_folder(
    tmp_path: Path, demo_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[str], Path]:
    """``search_folder(space_text)``: tmp_path as the cwd, holding the cached demo teacher and
    ``tiny.toml`` with ``space_text``."""

    def make(space_text: str) -> Path:
        shutil.copytree(demo_cache, tmp_path / "studies" / ".cache")
        (tmp_path / "tiny.toml").write_text(space_text)
        monkeypatch.chdir(tmp_path)
        return tmp_path

    return make


@pytest.fixture
def local_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A 2-CPU local Ray without dashboard for the test, always shut down afterwards.

    Its token authentication is off, said explicitly: with RAY_AUTH_MODE unset, whether a local
    Ray runs in token mode depends on a token at hand (~/.ray/auth_token) and on what earlier
    Ray sessions of this process left in Ray's once-read config; after the cluster test's token
    session and two local ones, the GCS wanted a token the driver did not send."""
    import ray
    from ray._raylet import AuthenticationTokenLoader, Config

    from search.backends.ray_tune import worker_runtime_env

    def reread() -> None:
        Config.initialize("")  # Ray reads RAY_AUTH_MODE once: read it again
        AuthenticationTokenLoader.instance().reset_cache()

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    reread()
    try:
        # The runtime env lets the workers import this checkout when it is not pip-installed.
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=worker_runtime_env())
        try:
            yield
        finally:
            ray.shutdown()
    finally:
        monkeypatch.delenv("RAY_AUTH_MODE")
        reread()
