"""Hypothesis strategies shared by the property tests (the decoder and handler
fuzz tests, the compiled loop's equivalence tests)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

#: A key of the small datasets these strategies are used against.
K = "8a35eb59-62b3-481c-8875-1f248df4c952"
#: Enough examples to find what matters, without a deadline on a busy machine.
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Any value msgpack can carry, nested a little.
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=50)
    | st.binary(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)

#: Maps shaped like requests: each field present or not, right or anything.
request_like = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.just(1), msgpack_values),
        "id": st.one_of(st.integers(min_value=0, max_value=2**64 - 1), msgpack_values),
        "op": st.one_of(st.sampled_from(["get", "mget", "ping"]), msgpack_values),
        "key": st.one_of(st.just(K), st.text(max_size=40), msgpack_values),
        "keys": st.one_of(
            st.lists(st.one_of(st.just(K), st.text(max_size=40), msgpack_values), max_size=8), msgpack_values
        ),
    },
)
