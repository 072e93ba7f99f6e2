"""HOST:PORT: one parser (rokv.hostport) for endpoints, metrics addresses and
listening addresses, ASCII digits only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rokv.endpoints import check_endpoint
from rokv.hostport import parse_address, parse_addresses, parse_port, show_address, split_host_port

GOOD = {
    "127.0.0.1:9555": ("127.0.0.1", 9555),
    "  metrics.example:1 ": ("metrics.example", 1),
    "*:65535": ("*", 65535),
    "[::1]:9555": ("::1", 9555),
    "[fe80::1%eth0]:80": ("fe80::1%eth0", 80),
}

BAD = [
    ("h:５５５５", "port '５５５５' is not a port number from 1 to 65535"),  # fullwidth digits
    ("h:٩٥", "from 1 to 65535"),  # Arabic-Indic digits
    ("h:99999", "from 1 to 65535"),
    ("h:0", "from 1 to 65535"),
    ("h:+80", "from 1 to 65535"),
    ("h:", "from 1 to 65535"),
    ("h:http", "from 1 to 65535"),
    ("nohost", "needs a host and a port"),
    (":9555", "needs a host and a port"),
    ("::1:9555", "an IPv6 address goes in brackets"),
    ("[::1:9555", "not an IPv6 address in brackets"),
    ("[nonsense]:9555", "'[nonsense]' is not an IPv6 address in brackets"),
    ("[::1]x:9555", "not an IPv6 address in brackets"),
    ("a b:80", "holds white space"),
    ("user@h:80", "is not a host name or address"),
    ("h/x:80", "is not a host name or address"),
]


@pytest.mark.parametrize(("text", "expected"), GOOD.items())
def test_good_addresses_parse_to_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    assert parse_address(show_address(*expected)) == expected


@pytest.mark.parametrize(("text", "says"), BAD)
def test_bad_addresses_are_refused_with_the_text_and_the_reason(text: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_address(text)
    assert says in str(info.value) and repr(text) in str(info.value)


@pytest.mark.parametrize("text", [*GOOD, *(text for text, _ in BAD)])
def test_an_endpoint_and_a_metrics_address_follow_the_same_rules(text: str) -> None:
    """check_endpoint's tcp:// address goes through the same parser: the same
    text is accepted or refused alike, with the same reason."""
    address = text.strip()
    try:
        parse_address(address)
    except ValueError as exc:
        with pytest.raises(ValueError) as info:
            check_endpoint(f"tcp://{address}")
        reason = str(exc).split(": ", 1)[1].rsplit(" (expected", 1)[0]
        assert str(info.value) == f"endpoint {'tcp://' + address!r}: {reason}"
    else:
        assert check_endpoint(f"tcp://{address}") == f"tcp://{address}"


@given(st.text(alphabet=st.characters(categories=["Nd"]), min_size=1, max_size=6))
def test_a_port_is_ascii_digits_from_1_to_65535(digits: str) -> None:
    ok = digits.isascii() and len(digits) <= 5 and 1 <= int(digits) <= 65535
    if ok:
        assert parse_port(digits) == int(digits)
        assert split_host_port(f"h:{digits}") == ("h", int(digits))
    else:
        with pytest.raises(ValueError, match="from 1 to 65535"):
            split_host_port(f"h:{digits}")


def test_defaults_fill_a_host_or_a_port_left_out_only_when_given() -> None:
    assert split_host_port(":8080", default_host="127.0.0.1") == ("127.0.0.1", 8080)
    assert split_host_port("0.0.0.0", default_port=8080) == ("0.0.0.0", 8080)
    assert split_host_port("[::]", default_port=8080) == ("::", 8080)
    assert split_host_port("", default_host="127.0.0.1", default_port=8080) == ("127.0.0.1", 8080)
    for text in (":8080", "0.0.0.0", "[::]"):
        with pytest.raises(ValueError, match="needs a host and a port"):
            split_host_port(text)


def test_a_list_of_addresses_is_comma_separated_and_not_empty() -> None:
    assert parse_addresses("a:1, [::1]:2,") == [("a", 1), ("::1", 2)]
    with pytest.raises(ValueError, match="names no HOST:PORT"):
        parse_addresses(" , ")
