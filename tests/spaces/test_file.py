"""Space files: what each kind of entry does, and one-line errors naming file and key."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spaces import (
    CLUSTER_ON,
    Choice,
    Fixed,
    FloatRange,
    IntRange,
    SearchSpace,
    SpaceError,
    default_space,
    demo_space,
    load_space,
)

HYPOTHESIS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


class RandomTrial:
    """A duck-typed trial drawing uniformly (on the grid), to check suggestions stay inside."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.params: dict[str, Any] = {}

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        if step is None:
            value = self.rng.uniform(low, high)
        else:
            value = low + step * self.rng.randint(0, round((high - low) / step))
        self.params[name] = value
        return value

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int:
        value = self.rng.randrange(low, high + 1, step)
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        value = self.rng.choice(list(choices))
        self.params[name] = value
        return value


def test_demo_space_file() -> None:
    space = demo_space()
    assert space["distill.epochs"] == FloatRange(5, 30, step=5)
    assert space.profile_epochs == 15.0
    assert {k: v for k, v in space.items() if k != "distill.epochs"} == {
        k: v for k, v in default_space().items() if k != "distill.epochs"
    }


def test_every_kind_of_entry(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[workload]
model = "resnet18"

[space]
"quantize.mode" = "int8-static"
"prune.ratio" = { low = 0.3, high = 0.9, log = false }
"prune.criterion" = ["l2", "lamp"]
"distill.temperature" = 4
drop = ["cluster.k", "prune.steps"]
profile_epochs = 2.0

[search]
trials = 3
""",
    )
    space = load_space(path)
    assert space["quantize.mode"] == Fixed("int8-static")
    assert space["prune.ratio"] == FloatRange(0.3, 0.9)
    assert space["prune.criterion"] == Choice(("l2", "lamp"))
    assert space["distill.temperature"] == Fixed(4.0) and isinstance(
        space["distill.temperature"].value, float
    )
    assert "cluster.k" not in space and "prune.steps" not in space
    assert space.profile_epochs == 2.0
    assert space["distill.lr"] == default_space()["distill.lr"]  # untouched entries stay
    for seed in range(30):
        trial = RandomTrial(seed)
        config = space.suggest(trial)
        assert config.cluster.k == 0 and CLUSTER_ON not in trial.params  # dropped: clustering off
        assert config.quantize.mode == "int8-static" and config.prune.steps == 1
        assert 0.3 <= config.prune.ratio <= 0.9 and config.prune.criterion in ("l2", "lamp")


def test_top_level_and_dotted_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
prune.ratio = { high = 0.5 }
"quantize.mode" = ["none", "fp16"]

[distill]
alpha = 1.0

[search]
target = "size"
""",
    )
    space = load_space(path)
    assert space["prune.ratio"] == FloatRange(0.0, 0.5)  # low kept from the default space
    assert space["quantize.mode"] == Choice(("none", "fp16"))
    assert space["distill.alpha"] == Fixed(1.0)
    nested = _write(tmp_path, "[space.prune]\nratio = 0.5\nmethod = 'unstructured'\n")
    assert load_space(nested)["prune.method"] == Fixed("unstructured")


def test_range_options_come_from_the_base_unless_they_clash(tmp_path: Path) -> None:
    space = load_space(
        _write(
            tmp_path,
            """[space]
"distill.temperature" = { low = 2, high = 10 }
"distill.lr" = { low = 0.01, high = 0.1, step = 0.01 }
"distill.epochs" = { low = 1, high = 4 }
"cluster.k" = { low = 32 }
"prune.steps" = { low = 1, high = 9, step = 2 }
"quantize.calibration_samples" = { low = 64, high = 512 }
""",
        )
    )
    assert space["distill.temperature"] == FloatRange(2, 10, log=True)
    assert space["distill.lr"] == FloatRange(
        0.01, 0.1, step=0.01
    )  # explicit step drops the base's log
    assert space["distill.epochs"] == FloatRange(1, 4, step=0.5)
    assert space["cluster.k"] == IntRange(32, 256, log=True)
    assert space["prune.steps"] == IntRange(1, 9, step=2)
    assert space["quantize.calibration_samples"] == IntRange(
        64, 512
    )  # not in the base: a new range


def test_fixed_budget_is_the_profiles_budget(tmp_path: Path) -> None:
    assert load_space(_write(tmp_path, '"distill.epochs" = 10\n')).profile_epochs == 10.0
    assert (
        load_space(_write(tmp_path, '"distill.epochs" = 10\nprofile_epochs = 3\n')).profile_epochs
        == 3.0
    )
    base = SearchSpace({}, profile_epochs=7)
    assert load_space(_write(tmp_path, ""), base=base) == base


def test_cluster_k_fixed_or_listed(tmp_path: Path) -> None:
    assert load_space(_write(tmp_path, '"cluster.k" = 0\n'))["cluster.k"] == Fixed(0)
    space = load_space(_write(tmp_path, '"cluster.k" = [0, 32, 64]\n'))
    assert space["cluster.k"] == Choice((0, 32, 64))
    assert {space.suggest(RandomTrial(seed)).cluster.k for seed in range(40)} == {0, 32, 64}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('"prune.ratoi" = 0.5', r"unknown setting 'prune.ratoi'; valid settings: depth.fraction, depth.cut, prune.ratio, "),
        ("[space]\nname = 'x'", "unknown setting 'name'"),
        ('"prune.ratio" = { low = 0.9, high = 0.3 }', r"prune.ratio: `low <= high`"),
        ('"prune.criterion" = []', "prune.criterion has an empty list of choices"),
        ('"prune.ratio" = 0.99', r"prune.ratio .*\[0.0, 0.95\]"),
        ('"prune.ratio" = { low = 0.5, high = 1.5 }', r"prune.ratio .*\[0.0, 0.95\]"),
        ('"prune.criterion" = ["l2", "l9"]', "prune.criterion.*'l9'"),
        ('"quantize.mode" = "int4"', "quantize.mode.*'int4'"),
        ('"prune.steps" = 2.5', "prune.steps must be an integer, but got 2.5"),
        ('"prune.steps" = { low = 1, high = 4.0 }', "prune.steps high must be an integer"),
        ('"prune.method" = 3', "prune.method must be a string"),
        ('"distill.alpha" = true', "distill.alpha must be a number"),
        ('"prune.ratio" = "0.5"', "prune.ratio must be a number"),
        ('"prune.round_to" = [1, "8"]', "prune.round_to choices must be an integer"),
        (
            '"prune.ratio" = 1979-05-27',
            "prune.ratio takes a value, a list of choices or a range table",
        ),
        ('"prune.method" = { low = 1, high = 2 }', "prune.method: a string setting takes a value"),
        ('"prune.ratio" = { low = 0.1, hi = 0.5 }', "prune.ratio: unknown range option.*hi"),
        (
            '"quantize.calibration_samples" = { low = 64 }',
            "calibration_samples: the range needs high",
        ),
        (
            '"distill.lr" = { low = 0.01, high = 0.1, log = true, step = 0.01 }',
            "distill.lr: .*not both",
        ),
        (
            '"distill.epochs" = { low = 1, high = 2, step = 0.3 }',
            "distill.epochs: high - low must be a multiple",
        ),
        ('"cluster.k" = { low = 0 }', "cluster.k: a log range needs low >= 1"),
        ('"cluster.k" = { low = 0, log = false }', "cluster.k as a range"),
        ('drop = ["prune.foo"]', "drop names unknown setting 'prune.foo'"),
        ('drop = "cluster.k"', "drop must be a list"),
        ('"cluster.k" = 16\ndrop = ["cluster.k"]', "cluster.k is both set and dropped"),
        ("profile_epochs = 0", "profile_epochs must be a number > 0"),
        ("profile_epochs = 'long'", "profile_epochs must be a number > 0"),
        (
            '"quantize.mode" = "int8-qat"\n"distill.epochs" = { low = 0 }',
            "int8-qat needs distillation",
        ),
        ("space = 3", "space must be a table"),
        ('"prune.ratio" = 0.5\nprune.ratio = 0.6', "prune.ratio is set twice"),
    ],
)
def test_bad_entry_is_one_line_naming_the_file(tmp_path: Path, text: str, words: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpaceError, match=words) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(SpaceError, match=r"cannot read space file .*missing.toml: No such file"):
        load_space(tmp_path / "missing.toml")
    with pytest.raises(SpaceError, match="cannot read space file"):
        load_space(tmp_path)
    with pytest.raises(SpaceError, match=r"TOML syntax error: .*line 2") as info:
        load_space(_write(tmp_path, '"prune.ratio" = 0.5\n"prune.ratio = \n'))
    assert "\n" not in str(info.value)
    binary = tmp_path / "weights.toml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SpaceError, match="not UTF-8"):
        load_space(binary)


FLOAT_KEYS = ["prune.ratio", "distill.alpha", "distill.lr", "distill.temperature"]
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@HYPOTHESIS
@given(key=st.sampled_from(FLOAT_KEYS), a=finite, b=finite)
def test_random_reversed_range_is_rejected(tmp_path: Path, key: str, a: float, b: float) -> None:
    low, high = max(a, b), min(a, b)
    if low == high:
        return
    path = _write(tmp_path, f'"{key}" = {{ low = {low!r}, high = {high!r}, log = false }}\n')
    with pytest.raises(SpaceError, match=key) as info:
        load_space(path)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


@HYPOTHESIS
@given(a=st.floats(0.0, 0.95), b=st.floats(0.0, 0.95), seed=st.integers(0, 2**16))
def test_random_narrowed_ratio_is_kept_and_respected(
    tmp_path: Path, a: float, b: float, seed: int
) -> None:
    low, high = min(a, b), max(a, b)
    space = load_space(_write(tmp_path, f'"prune.ratio" = {{ low = {low!r}, high = {high!r} }}\n'))
    assert space["prune.ratio"] == FloatRange(low, high)
    trial = RandomTrial(seed)
    config = space.suggest(trial)
    assert low <= config.prune.ratio <= high
    assert space.config_from_params(trial.params) == config


@HYPOTHESIS
@given(
    value=st.one_of(
        st.floats(max_value=-1e-9, allow_nan=False), st.floats(min_value=0.9500001, allow_nan=False)
    )
)
def test_random_ratio_outside_the_allowed_range_is_rejected(tmp_path: Path, value: float) -> None:
    low, high = min(value, 0.5), max(value, 0.5)
    for text in (
        f'"prune.ratio" = {value!r}',
        f'"prune.ratio" = {{ low = {low!r}, high = {high!r} }}',
    ):
        path = _write(tmp_path, text)
        with pytest.raises(SpaceError, match="prune.ratio") as info:
            load_space(path)
        assert str(info.value).startswith(f"{path}: ")


@HYPOTHESIS
@given(low=st.integers(-5, 120), high=st.integers(-5, 120))
def test_random_int_ranges_are_accepted_exactly_when_valid(
    tmp_path: Path, low: int, high: int
) -> None:
    path = _write(tmp_path, f'"prune.steps" = {{ low = {low}, high = {high} }}\n')
    if 1 <= low <= high <= 100:
        assert load_space(path)["prune.steps"] == IntRange(low, high)
    else:
        with pytest.raises(SpaceError, match="prune.steps"):
            load_space(path)


def test_a_mode_kept_out_of_the_default_space_is_chosen_in_a_space_file(tmp_path: Path) -> None:
    # New modes stay out of the default choices (existing default-space studies must resume);
    # a space file opts in by name.
    default = default_space()["quantize.mode"]
    assert isinstance(default, Choice) and "int8-static-percentile" not in default.choices
    path = tmp_path / "space.toml"
    path.write_text('[space]\n"quantize.mode" = ["int8-static", "int8-static-percentile"]\n')
    assert load_space(path)["quantize.mode"] == Choice(("int8-static", "int8-static-percentile"))


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "studies" / "benchmarks").glob("*.toml")), ids=lambda p: p.name
)
def test_the_benchmark_space_files_load(path: Path) -> None:
    # The commands in BENCHMARKS.md pass these files; a typo would only show hours into a run.
    space = load_space(path)
    assert space["distill.epochs"].low > 0  # type: ignore[union-attr]
