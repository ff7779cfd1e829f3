from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bridge.images.address_policy import AddressPolicy, IPAddress, Verdict, embedded_ipv4, parse_host_address
from bridge.errors import ConfigError


@pytest.fixture(scope="module", autouse=True)
def no_network() -> Iterator[None]:
    """Every test here decides without a socket or a DNS lookup (metadata addresses are never connected to)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the address policy touched the network")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("socket", "create_connection", "getaddrinfo", "gethostbyname", "gethostbyname_ex"):
            patch.setattr(socket, name, refuse)
        yield


POLICY = AddressPolicy.from_entries(
    ["10.1.0.0/16", "fd12:3456::/32", "127.0.0.2", "2001:db8:1::5", "images.internal", "*.corp.example"]
)

# (URL host, the address it resolved to, or "" when the host is a literal that the test parses, reason)
CHECK_CASES = [
    # loopback
    ("127.0.0.1", "", "loopback"),
    ("127.255.255.254", "", "loopback"),
    ("[::1]", "", "loopback"),
    ("localhost", "127.0.0.1", "loopback"),
    ("localhost", "::1", "loopback"),
    # odd IPv4 spellings of loopback
    ("127.1", "", "loopback"),
    ("127.0.1", "", "loopback"),
    ("0177.0.0.1", "", "loopback"),
    ("0x7f000001", "", "loopback"),
    ("0x7f.1", "", "loopback"),
    ("2130706433", "", "loopback"),
    ("017700000001", "", "loopback"),
    ("127.0.0.1.", "", "loopback"),
    # private
    ("10.0.0.1", "", "private"),
    ("172.16.0.1", "", "private"),
    ("172.31.255.255", "", "private"),
    ("192.168.1.1", "", "private"),
    ("0xa.1", "", "private"),
    ("3232235777", "", "private"),
    ("[fc00::1]", "", "private"),
    ("[fd12::1]", "", "private"),
    ("images.example.com", "10.0.0.5", "private"),
    # link-local
    ("169.254.1.1", "", "link-local"),
    ("[fe80::1%eth0]", "", "link-local"),
    ("[fe80::1%25eth0]", "", "link-local"),
    ("host.example", "fe80::1%eth0", "link-local"),
    # cloud metadata
    ("169.254.169.254", "", "cloud metadata"),
    ("metadata.google.internal", "169.254.169.254", "cloud metadata"),
    ("0xa9fea9fe", "", "cloud metadata"),
    ("2852039166", "", "cloud metadata"),
    ("169.254.170.2", "", "cloud metadata"),
    ("169.254.170.23", "", "cloud metadata"),
    ("[fd00:ec2::254]", "", "cloud metadata"),
    ("[fd20:ce::254]", "", "cloud metadata"),
    ("100.100.100.200", "", "cloud metadata"),
    ("192.0.0.192", "", "cloud metadata"),
    ("168.63.129.16", "", "cloud metadata"),
    ("[::ffff:169.254.169.254]", "", "cloud metadata"),
    ("[64:ff9b::a9fe:a9fe]", "", "cloud metadata"),
    ("[2002:a9fe:a9fe::1]", "", "cloud metadata"),
    # shared address space (CGNAT)
    ("100.64.0.1", "", "shared (CGNAT)"),
    ("100.127.255.255", "", "shared (CGNAT)"),
    # multicast and broadcast
    ("224.0.0.1", "", "multicast"),
    ("239.255.255.250", "", "multicast"),
    ("[ff02::1]", "", "multicast"),
    ("255.255.255.255", "", "broadcast"),
    ("4294967295", "", "broadcast"),
    # reserved and special-purpose
    ("240.0.0.1", "", "reserved"),
    ("255.255.255.254", "", "reserved"),
    ("0.1.2.3", "", "this network"),
    ("[::2]", "", "this network"),
    ("192.0.0.8", "", "IETF protocol assignment"),
    ("192.0.2.1", "", "documentation"),
    ("198.51.100.7", "", "documentation"),
    ("203.0.113.9", "", "documentation"),
    ("[2001:db8::1]", "", "documentation"),
    ("198.18.0.1", "", "benchmarking"),
    ("198.19.255.255", "", "benchmarking"),
    ("0.0.0.0", "", "unspecified"),
    ("0", "", "unspecified"),
    ("[::]", "", "unspecified"),
    ("[::ffff:0.0.0.0]", "", "unspecified"),
    ("[fec0::1]", "", "site-local"),
    ("[100::1]", "", "discard-only"),
    ("[2001:100::1]", "", "not globally routable"),
    # IPv6 forms that embed an IPv4 address
    ("[::ffff:127.0.0.1]", "", "loopback"),
    ("[::ffff:7f00:1]", "", "loopback"),
    ("[::127.0.0.1]", "", "loopback"),
    ("[::10.0.0.1]", "", "private"),
    ("[2002:7f00:1::]", "", "loopback"),
    ("[64:ff9b::127.0.0.1]", "", "loopback"),
    ("[64:ff9b:1::a00:1]", "", "private"),
    ("[2001:0:4136:e378:8000:63bf:80ff:fffe]", "", "loopback"),  # Teredo client 127.0.0.1
    ("[::ffff:8.8.8.8]", "", "allowed"),
    ("[2002:808:808::1]", "", "allowed"),
    ("[64:ff9b::8.8.8.8]", "", "allowed"),
    ("[2001:0:4136:e378:8000:63bf:f7f7:f7f7]", "", "allowed"),  # Teredo client 8.8.8.8
    # public
    ("8.8.8.8", "", "allowed"),
    ("1.1.1.1", "", "allowed"),
    ("[2606:4700:4700::1111]", "", "allowed"),
    ("example.com", "93.184.216.34", "allowed"),
    ("134744072", "", "allowed"),
    ("0x8.0x8.0x8.0x8", "", "allowed"),
    # the allow-list
    ("10.1.2.3", "", "allow-listed"),
    ("internal.example", "10.1.255.255", "allow-listed"),
    ("10.2.0.1", "", "private"),
    ("127.0.0.2", "", "allow-listed"),
    ("[::ffff:127.0.0.2]", "", "allow-listed"),
    ("[64:ff9b::7f00:2]", "", "allow-listed"),
    ("127.0.0.3", "", "loopback"),
    ("[fd12:3456::1]", "", "allow-listed"),
    ("[2001:db8:1::5]", "", "allow-listed"),
    ("[2001:db8:1::6]", "", "documentation"),
    ("images.internal", "192.168.5.5", "allow-listed"),
    ("IMAGES.Internal.", "127.0.0.1", "allow-listed"),
    ("a.corp.example", "10.9.9.9", "allow-listed"),
    ("a.b.corp.example", "169.254.169.254", "allow-listed"),
    ("corp.example", "10.9.9.9", "private"),
    ("evilcorp.example", "10.9.9.9", "private"),
    ("images.internal.evil.example", "10.0.0.1", "private"),
]


def address_of(host: str, resolved: str) -> IPAddress:
    address = ip_address(resolved) if resolved else parse_host_address(host)
    assert address is not None, f"{host!r} is not an IP literal"
    return address


@pytest.mark.parametrize(("host", "resolved", "reason"), CHECK_CASES)
def test_check(host: str, resolved: str, reason: str) -> None:
    verdict = POLICY.check(host, address_of(host, resolved))

    assert verdict == Verdict(reason in ("allowed", "allow-listed"), reason)


@pytest.mark.parametrize(("host", "resolved", "reason"), CHECK_CASES)
def test_without_allow_list_only_allow_listed_verdicts_change(host: str, resolved: str, reason: str) -> None:
    verdict = AddressPolicy().check(host, address_of(host, resolved))

    if reason == "allow-listed":
        assert not verdict.allowed
    else:
        assert verdict == Verdict(reason == "allowed", reason)


def test_check_cases_cover_every_reason() -> None:
    reasons = {reason for _, _, reason in CHECK_CASES}

    assert reasons == {
        "loopback", "private", "link-local", "cloud metadata", "shared (CGNAT)", "multicast", "broadcast",
        "reserved", "this network", "IETF protocol assignment", "documentation", "benchmarking", "unspecified",
        "site-local", "discard-only", "not globally routable", "allowed", "allow-listed",
    }
    assert len(CHECK_CASES) >= 50


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("10.1.258", "10.1.1.2"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0177.1", "127.0.0.1"),
    ("00000177.0.0.01", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0x7F.0x0.0X0.0x1", "127.0.0.1"),
    ("0x0000007f.1", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0X7F000001", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("4294967295", "255.255.255.255"),
    ("[127.0.0.1]", "127.0.0.1"),
    ("::1", "::1"),
    ("[::1]", "::1"),
    ("[fe80::1%eth0]", "fe80::1"),
    ("fe80::1%25eth0", "fe80::1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("[2001:DB8::A]", "2001:db8::a"),
])
def test_parse_host_address(host: str, expected: str) -> None:
    assert parse_host_address(host) == ip_address(expected)


@pytest.mark.parametrize("host", [
    "localhost", "example.com", "images.internal", "", ".", "..", "256.0.0.1", "1.2.3.4.5", "1..1", "127.0.0.1..",
    "4294967296", "1.16777216", "1.2.65536", "08", "0x", "0x.1", "0xg", "-1", "+1", "1.2.3.4 ", " 1.2.3.4",
    "\u0661\u0662\u0667.0.0.1", "127.0.0.1:80", "[::1", "::1]", "[]", ":::", "[::ffff:0x7f.1]", "1.2.3.4/8",
])
def test_parse_host_address_of_a_name_or_junk_is_none(host: str) -> None:
    assert parse_host_address(host) is None


@pytest.mark.parametrize(("address", "expected"), [
    ("::ffff:127.0.0.1", "127.0.0.1"),  # IPv4-mapped
    ("::10.0.0.1", "10.0.0.1"),  # IPv4-compatible
    ("::0.0.0.2", "0.0.0.2"),
    ("2002:a9fe:a9fe::", "169.254.169.254"),  # 6to4
    ("2002:808:808:1:2:3:4:5", "8.8.8.8"),
    ("64:ff9b::a9fe:a9fe", "169.254.169.254"),  # NAT64
    ("64:ff9b:1:abcd::7f00:1", "127.0.0.1"),  # local-use NAT64
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45"),  # Teredo (RFC 4380 example)
])
def test_embedded_ipv4(address: str, expected: str) -> None:
    assert embedded_ipv4(IPv6Address(address)) == IPv4Address(expected)


@pytest.mark.parametrize("address", ["::", "::1", "fe80::1", "2001:db8::1", "2606:4700:4700::1111", "64:ff9c::1"])
def test_embedded_ipv4_of_a_plain_ipv6_address_is_none(address: str) -> None:
    assert embedded_ipv4(IPv6Address(address)) is None


def test_from_entries() -> None:
    policy = AddressPolicy.from_entries(
        ["10.0.0.0/8", "fd00::/8", "127.0.0.1", "::1", "0x7f.2", "images.internal", "*.Corp.Example.", " x.test "]
    )

    assert policy.allowed_networks == (
        ip_network("10.0.0.0/8"), ip_network("fd00::/8"), ip_network("127.0.0.1/32"), ip_network("::1/128"),
        ip_network("127.0.0.2/32"),
    )
    assert policy.allowed_hosts == frozenset({"images.internal", "*.corp.example", "x.test"})


def test_from_entries_of_nothing_allows_nothing_extra() -> None:
    assert AddressPolicy.from_entries([]) == AddressPolicy()


@pytest.mark.parametrize("entry", [
    "garbage!", "", "   ", "10.0.0.0/33", "10.0.0.1/8", "::1/129", "fd00::/x", "example.com/images",
    "http://images.internal", "10.0.0.256", "1.2.3.4.5", "*.", "*", "*.*.example", "-bad.example", "bad-.example",
    "a..b", "images\u00e9.example", "a" * 64 + ".example",
])
def test_from_entries_rejects_a_bad_entry_in_one_line(entry: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AddressPolicy.from_entries(["10.0.0.0/8", entry])

    message = str(caught.value)
    assert repr(entry) in message
    assert "\n" not in message


# Properties

ipv4_addresses = st.ip_addresses(v=4)


@given(st.text())
def test_parse_host_address_never_raises(host: str) -> None:
    assert isinstance(parse_host_address(host), (IPv4Address, IPv6Address, type(None)))


@given(st.text(alphabet="0123456789abcdefxX.:[]%"))
def test_parse_host_address_never_raises_on_address_like_text(host: str) -> None:
    assert isinstance(parse_host_address(host), (IPv4Address, IPv6Address, type(None)))


@st.composite
def ipv6_forms(draw: st.DrawFn, address: IPv4Address) -> IPv6Address:
    """One of the IPv6 addresses that carry `address`."""
    n = int(address)
    forms = {
        "mapped": lambda: 0xFFFF << 32 | n,
        "6to4": lambda: 0x2002 << 112 | n << 80 | draw(st.integers(0, 2**80 - 1)),
        "nat64": lambda: int(IPv6Address("64:ff9b::")) | n,
        "local nat64": lambda: int(IPv6Address("64:ff9b:1::")) | draw(st.integers(0, 2**48 - 1)) << 32 | n,
        "teredo": lambda: 0x20010000 << 96 | draw(st.integers(0, 2**64 - 1)) << 32 | n ^ 0xFFFFFFFF,
    }
    if n > 1:  # :: and ::1 are the IPv6 unspecified and loopback addresses, not IPv4-compatible ones
        forms["compatible"] = lambda: n
    form = IPv6Address(forms[draw(st.sampled_from(sorted(forms)))]())
    assert embedded_ipv4(form) == address
    return form


@given(st.data(), ipv4_addresses, st.none() | st.tuples(ipv4_addresses, st.integers(0, 32)))
def test_ipv6_forms_get_the_verdict_of_their_ipv4_address(
    data: st.DataObject, address: IPv4Address, allowed: tuple[IPv4Address, int] | None
) -> None:
    networks = () if allowed is None else (ipaddress.IPv4Network(allowed, strict=False),)
    policy = AddressPolicy(allowed_networks=networks)
    form = data.draw(ipv6_forms(address))

    assert policy.check("host.example", form) == policy.check("host.example", address)


@given(ipv4_addresses)
def test_integer_and_hex_spellings_parse_to_the_address(address: IPv4Address) -> None:
    n = int(address)

    assert parse_host_address(str(n)) == address
    assert parse_host_address(hex(n)) == address
    assert parse_host_address(f"0X{n:X}") == address


@given(ipv4_addresses, st.integers(1, 4), st.lists(st.sampled_from(["%d", "0%o", "0x%x", "0X%X"]), min_size=4,
                                                   max_size=4))
def test_every_inet_aton_spelling_parses_to_the_address(address: IPv4Address, count: int, formats: list[str]) -> None:
    # count parts: the first count - 1 are single bytes, the last holds the remaining bytes.
    packed = address.packed
    values = [*packed[:count - 1], int.from_bytes(packed[count - 1:], "big")]
    spelling = ".".join(fmt % value for fmt, value in zip(formats, values))

    assert parse_host_address(spelling) == address
