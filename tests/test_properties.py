"""Property-based tests (hypothesis) for the data loader and the config validator: whatever a file
holds, the loader returns exactly its valid records or a DataError naming file:line, and the
validator returns checked values or a ConfigError - never a traceback from deeper down."""

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import data
import grpo
import runtime
import train

text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
    min_size=1,
    max_size=30,
)
line_text = text.filter(lambda t: t.strip())
pair = st.tuples(st.sampled_from(["lex", "vec", "hyde"]), line_text).map(list)
record = st.fixed_dictionaries(
    {"query": line_text, "output": st.lists(pair, min_size=1, max_size=5)},
    optional={"category": text, "lang": st.sampled_from(["en", "de", "zh"])},
)
SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(records=st.lists(record, min_size=1, max_size=8), bom=st.booleans(), blanks=st.booleans())
def test_loader_returns_exactly_the_valid_records(tmp_path, records, bom, blanks):
    lines = [json.dumps(r, ensure_ascii=bool(len(r["query"]) % 2)) for r in records]
    body = ("\n\n" if blanks else "\n").join(lines) + "\n"
    path = tmp_path / "d.jsonl"
    path.write_text(("\ufeff" if bom else "") + body, encoding="utf-8")
    got = data.load_examples([path])
    assert [e.query for e in got] == [r["query"].strip() for r in records]
    assert [e.output for e in got] == [[(k, t.strip()) for k, t in r["output"]] for r in records]
    assert [e.extra for e in got] == [{k: v for k, v in r.items() if k not in ("query", "output")} for r in records]


@SETTINGS
@given(
    good=st.lists(record, max_size=4),
    junk=st.lists(
        st.one_of(
            text, st.builds(json.dumps, st.one_of(st.integers(), st.lists(st.integers()), st.dictionaries(text, text)))
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_any_bad_line_is_a_data_error_naming_file_and_line(tmp_path, good, junk):
    lines = [json.dumps(r) for r in good] + junk
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        got = data.load_examples([path])
    except data.DataError as err:
        assert err.problems and all(p.startswith(f"{path}:") for p in err.problems)
    else:  # every junk line happened to be blank or a valid record
        assert len(got) <= len(lines)


@SETTINGS
@given(
    queries=st.lists(line_text, min_size=1, max_size=30, unique_by=data.normalize_query),
    fraction=st.floats(0, 0.99),
    seed=st.integers(0, 2**31),
)
def test_split_is_a_deterministic_partition(queries, fraction, seed):
    examples = [data.Example(q, [("lex", q)]) for q in queries]
    train_a, valid_a = data.split(examples, fraction, seed)
    train_b, valid_b = data.split(list(reversed(examples)), fraction, seed)
    assert sorted(e.query for e in train_a + valid_a) == sorted(queries)
    assert {e.query for e in valid_a} == {e.query for e in valid_b} and {e.query for e in train_a} == {
        e.query for e in train_b
    }


# ----------------------------------------------------------------------------
# Config validator

any_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
    st.lists(st.one_of(text, st.integers()), max_size=3),
    st.dictionaries(text, st.integers(), max_size=2),
)


def _within(spec, value):
    if value is None:
        return spec.null
    if value in spec.also and not isinstance(value, bool):
        return True
    if spec.kind is int and not (isinstance(value, int) and not isinstance(value, bool)):
        return False
    if spec.kind is float and not (isinstance(value, float) and math.isfinite(value)):
        return False
    if spec.kind in (int, float):
        lo_ok = spec.lo is None or (value > spec.lo if spec.lo_open else value >= spec.lo)
        hi_ok = spec.hi is None or (value < spec.hi if spec.hi_open else value <= spec.hi)
        return lo_ok and hi_ok
    if spec.kind is bool:
        return isinstance(value, bool)
    if spec.kind is str:
        return isinstance(value, str) and bool(value.strip()) and (not spec.choices or value in spec.choices)
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v for v in value)


@pytest.mark.parametrize("schema", [train.SFT_SCHEMA, grpo.GRPO_SCHEMA], ids=["sft", "grpo"])
@settings(max_examples=300, deadline=None)
@given(data_=st.data())
def test_validator_accepts_only_values_in_range_and_says_why_otherwise(schema, data_):
    key = data_.draw(st.sampled_from(sorted(schema)))
    value = data_.draw(any_value)
    spec = schema[key]
    try:
        checked = spec.check(value)
    except ValueError as exc:
        assert str(exc) == spec.describe()
        with pytest.raises(runtime.ConfigError, match=f"--{key.replace('_', '-')}"):
            runtime.check_config({key: value}, schema, {key: f"--{key.replace('_', '-')}"})
    else:
        assert _within(spec, checked), (key, value, checked)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.sampled_from(sorted(train.SFT_DEFAULTS)), any_value, max_size=5))
def test_any_yaml_config_loads_checked_or_is_a_config_error(tmp_path, values):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values, allow_unicode=True))
    try:
        cfg = runtime.load_config(path, train.SFT_DEFAULTS, schema=train.SFT_SCHEMA)
    except runtime.ConfigError as err:
        assert str(path) in str(err)
    else:
        assert all(_within(train.SFT_SCHEMA[k], v) for k, v in cfg.items())
