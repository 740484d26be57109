"""Which peers and targets count as this host: the rule that decides who may use shared memory."""

import pytest

from lazarus.distributed.client import _host_of
from lazarus.distributed.server import _is_loopback_peer


@pytest.mark.parametrize("target, host", [("127.0.0.1:5000", "127.0.0.1"), ("localhost:5000", "localhost"),
                                          ("[::1]:5000", "::1"), ("dns:///example.org:443", "example.org"),
                                          ("10.0.0.7:50551", "10.0.0.7")])
def test_the_host_of_a_grpc_target_is_found_in_every_form(target, host):
    assert _host_of(target) == host


@pytest.mark.parametrize("peer, loopback", [("ipv4:127.0.0.1:41234", True), ("ipv6:[::1]:41234", True),
                                            ("ipv4:10.1.2.3:41234", False), ("ipv6:[fe80::1]:5", False),
                                            ("unix:/tmp/socket", False), ("", False)])
def test_only_loopback_peers_count_as_this_host(peer, loopback):
    assert _is_loopback_peer(peer) is loopback
