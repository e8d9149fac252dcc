"""The config builder's TOML (testkit/config.py) reads back as the tables it was built from."""

from __future__ import annotations

import tomllib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from testkit.config import BrokerConfig

keys = st.text(min_size=1, max_size=12)
scalars = st.one_of(
    st.text(max_size=20),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.lists(st.dictionaries(keys, scalars, max_size=3), max_size=3),
)


@given(st.dictionaries(keys, st.dictionaries(keys, values, max_size=4), max_size=4))
def test_any_tables_read_back_unchanged(tables: dict[str, dict[str, Any]]) -> None:
    config = BrokerConfig(port=1)
    config.tables = tables
    assert tomllib.loads(config.to_toml()) == tables
