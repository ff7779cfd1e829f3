"""--model-server as a gRPC target: one address, a list resolved once, or a DNS name gRPC follows."""

import socket

import pytest

from bridge.errors import ConfigError
from bridge.model.servers import channel_target, valid_model_servers


def resolver(table):
    def resolve(host, port, type=None):  # noqa: A002 - getaddrinfo's name
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
                for address in table[host]]
    return resolve


@pytest.mark.parametrize("value", ["127.0.0.1:8500", "tfserving:8500", "[::1]:8500", "a:1,b:2,10.0.0.3:8500",
                                   "dns:///tfserving-headless:8500", "dns:///tfserving.ns.svc.cluster.local:8500"])
def test_these_are_model_servers(value):
    assert valid_model_servers(value)


@pytest.mark.parametrize("value", ["", "tfserving", "host:0", "host:70000", "a:1,", ",a:1", "a:1, b:2",
                                   "dns:///", "dns:///name", "dns:///a:1,b:2", "http://tfserving:8501", 5])
def test_these_are_not(value):
    assert not valid_model_servers(value)


def test_one_address_and_a_dns_name_go_to_grpcs_own_resolver_unchanged():
    assert channel_target("tfserving:8500", resolver({})) == "tfserving:8500"
    assert channel_target("dns:///tfserving-headless:8500", resolver({})) == "dns:///tfserving-headless:8500"


def test_a_list_becomes_the_fixed_addresses_of_its_names_without_repeats():
    resolve = resolver({"a": ["10.0.0.1", "10.0.0.2"], "b": ["10.0.0.2"]})
    assert channel_target("a:8500,b:8500,127.0.0.1:9000", resolve) == \
        "ipv4:10.0.0.1:8500,10.0.0.2:8500,127.0.0.1:9000"
    assert channel_target("[::1]:1,[fd00::2]:2", resolve) == "ipv6:[::1]:1,[fd00::2]:2"


def test_a_list_that_cannot_be_one_target_is_a_configuration_error():
    with pytest.raises(ConfigError, match="cannot resolve 'nowhere'"):
        channel_target("127.0.0.1:1,nowhere:2", resolver({}))
    with pytest.raises(ConfigError, match="mixes IPv4 and IPv6"):
        channel_target("127.0.0.1:1,[::1]:2", resolver({}))
