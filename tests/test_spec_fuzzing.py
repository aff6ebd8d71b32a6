"""Property-based tests: malformed and adversarial spec files never crash, never run code.

Every generated file goes through `wcrnn sweep validate` (in-process, through the real CLI) and
must end in exit code 0 (it happens to be valid) or 2 with a one-line `error:` message that
names a field or the file, and never a traceback.
"""

import copy
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from wcrnn.cli import app

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
FIELDS = set(QUICKSTART) | {"tracking", "storage", "budget", "search", "scheduler", "resources", "lyapunov",
                            "checkpoints", "spec"}
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


def validate(path: Path):
    result = CliRunner().invoke(app, ["sweep", "validate", str(path)])
    # Click's runner catches exceptions: an unexpected one is a crash, whatever the exit code says.
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"crashed: {result.exception!r}") from result.exception
    assert "Traceback" not in result.output, result.output
    return result


LOCATED = re.compile(r"^error: ('[^']*'|\S[^:]*?)(\.\S+?)*: \S")  # "error: field.path: what is wrong"


def assert_rejected(result, *names):
    """Exit 2 and a short message that starts with a location, or names one of `names`."""
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert message.startswith("error:") and len(message) < 4000, message
    if names:
        assert LOCATED.match(message) or any(name in message for name in names), message


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["uniform", "loguniform", "int", "categorical", "rotational", "wcrnn", "adding", "1e400",
                     "../../etc/passwd", "$(touch PWNED)", "__import__('os')", "max", "min"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                                                  max_size=4),
                      max_leaves=12)


def paths(data, prefix=()):
    yield prefix
    if isinstance(data, dict):
        for key, value in data.items():
            yield from paths(value, prefix + (key,))


ALL_PATHS = [p for p in paths(QUICKSTART) if p]


@st.composite
def mutated_specs(draw):
    spec = copy.deepcopy(QUICKSTART)
    touched = []  # names an error message may point at
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        touched += [str(key) for key in path]
        parent = spec
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict):
            continue
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            parent.pop(path[-1], None)
        else:
            key = draw(st.text(min_size=1, max_size=12))
            touched += [key, repr(key)[:30]]  # odd keys are quoted in messages
            parent[key] = draw(values)
    return spec, touched


@FUZZ
@given(mutated_specs())
def test_mutated_specs_are_valid_or_rejected_with_a_field(tmp_path_factory, case):
    spec, touched = case
    file = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    file.write_text(yaml.safe_dump(spec, allow_unicode=True))
    result = validate(file)
    if result.exit_code != 0:
        assert_rejected(result, *FIELDS, str(file), *touched)


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes_are_rejected_cleanly(tmp_path_factory, content):
    file = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    file.write_bytes(content)
    result = validate(file)
    assert_rejected(result, str(file), *FIELDS)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_is_rejected_cleanly(tmp_path_factory, content):
    file = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    file.write_text(content)
    assert_rejected(validate(file), str(file), *FIELDS)


ADVERSARIAL = {
    "python object tag": "name: !!python/object/apply:os.system ['touch {marker}']\n",
    "python name tag": "name: !!python/name:os.system\n",
    "python module tag": "task: !!python/module:os\n",
    "custom tag": "name: !wcrnn/exec 'touch {marker}'\n",
    "deep list nesting": "name: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep mapping nesting": "name: x\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(300)) + "  " * 300 + "v: 1\n",
    "billion laughs": ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                       "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
                       "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
                       "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n"),
    "huge integer": "budget: {num_trials: " + "9" * 5000 + ", max_epochs: 2}\n",
    "float overflow": "budget: {num_trials: 1.0e400, max_epochs: 2}\n",
    "NaN bounds": "search_space: {r: {distribution: uniform, low: .nan, high: .nan}}\n",
    "infinite bound": "search_space: {lr: {distribution: loguniform, low: 1.0e-3, high: .inf}}\n",
    "top-level list": "- name: x\n",
    "empty file": "",
    "null bytes": "name: a\x00b\n",
    "duplicate keys": "name: a\nname: b\n",
}


@pytest.mark.parametrize("case", ADVERSARIAL, ids=list(ADVERSARIAL))
def test_adversarial_spec_files_are_rejected_and_run_nothing(tmp_path, case):
    marker = tmp_path / "PWNED"
    file = tmp_path / "spec.yaml"
    file.write_text(ADVERSARIAL[case].format(marker=marker) if "{marker}" in ADVERSARIAL[case] else ADVERSARIAL[case])
    result = validate(file)
    assert_rejected(result, str(file), *FIELDS)
    assert not marker.exists()


def test_an_enormous_file_is_refused_before_it_is_read(tmp_path):
    file = tmp_path / "spec.yaml"
    file.write_text("name: x\n" + "# padding\n" * 200_000)
    assert_rejected(validate(file), "bytes")


def test_huge_and_non_finite_numbers_in_overrides_are_rejected(tmp_path):
    spec = ROOT / "sweeps" / "quickstart.yaml"
    for override, field in [("budget.num_trials=1e400", "budget.num_trials"),
                            ("search_space.r.low=.nan", "search_space.r"),
                            ("budget.max_epochs=" + "9" * 400, "budget.max_epochs")]:
        result = CliRunner().invoke(app, ["sweep", "validate", str(spec), "--set", override])
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
        assert_rejected(result, field)
