"""Feature vectorisation for the River models: numbers pass, booleans are 0/1, text is one-hot,
everything else (None, NaN, infinities, lists, nested objects) is dropped; the input is not touched."""

from __future__ import annotations

import copy
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from feedback_loop.routing.vectorize import vectorize


def test_each_type_becomes_its_numeric_form():
    out = vectorize({"age": 42, "ratio": 0.25, "plan": "pro", "vip": True, "churned": False})
    assert out == {"age": 42.0, "ratio": 0.25, "plan=pro": 1.0, "vip": 1.0, "churned": 0.0}
    assert all(type(v) is float for v in out.values())


def test_non_finite_and_non_scalar_values_are_dropped():
    out = vectorize({"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf"), "none": None,
                     "list": [1, 2], "obj": {"a": 1}, "keep": -3})
    assert out == {"keep": -3.0}


def test_text_is_one_hot_with_the_value_in_the_name():
    assert vectorize({"city": "Paris"}) == {"city=Paris": 1.0}
    assert vectorize({"city": ""}) == {"city=": 1.0}


def test_empty_features_give_an_empty_vector():
    assert vectorize({}) == {}


def test_the_input_dict_is_left_unchanged():
    features = {"a": 1, "b": "x", "c": None, "d": float("nan"), "e": [1], "f": True}
    before = copy.deepcopy(features)
    vectorize(features)
    assert features.keys() == before.keys()
    for k, v in before.items():
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(features[k])
        else:
            assert features[k] == v and type(features[k]) is type(v)


json_values = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(),
                        st.text(max_size=5), st.lists(st.integers(), max_size=2))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(alphabet="abcxyz_", min_size=1, max_size=4), json_values, max_size=8))
def test_every_output_value_is_a_finite_float(features):
    # names without "=" so a one-hot entry cannot collide with a numeric feature's name
    out = vectorize(features)
    assert all(type(v) is float and math.isfinite(v) for v in out.values())
    for name, value in features.items():
        if isinstance(value, bool):
            assert out[name] == float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            assert out[name] == float(value)
        elif isinstance(value, str):
            assert out[f"{name}={value}"] == 1.0
