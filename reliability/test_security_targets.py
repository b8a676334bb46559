"""IPv6 forms that embed an IPv4 address (issue 16, item 4), judged by that IPv4 address.

``http://[::127.0.0.1]/``, ``[::7f00:1]``, NAT64 ``[64:ff9b::7f00:1]``, ``[64:ff9b:1::a00:1]``,
6to4 ``[2002:7f00:1::]`` passed the allowlist as webhook targets and Mastodon media: Python
calls them global, yet a NAT64 gateway, a 6to4 or Teredo relay, or the host's own stack may
deliver them to 127.0.0.1 or 10.0.0.1. One table drives three checks of each form: the
address judgement, saving a webhook account (422 on ``url``), and connecting (the transport
every publisher and media download uses refuses before any packet is sent).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import httpx
import pytest

from atomq.core.errors import InvalidInputError
from atomq.features.posts.netguard import GuardedTransport, HostPolicy, blocked, check_url, embedded_ipv4
from reliability.report import report

#: (form, IPv6 literal, the IPv4 address it carries, allowed with ATOMQ_POSTS_ALLOWED_HOSTS=*)
TABLE: list[tuple[str, str, str, bool]] = [
    ("IPv4-compatible, dotted", "::127.0.0.1", "127.0.0.1", False),
    ("IPv4-compatible, hex", "::7f00:1", "127.0.0.1", False),
    ("IPv4-compatible, metadata", "::a9fe:a9fe", "169.254.169.254", False),
    ("IPv4-compatible, public", "::8.8.8.8", "8.8.8.8", True),
    ("IPv4-mapped", "::ffff:127.0.0.1", "127.0.0.1", False),
    ("IPv4-mapped, public", "::ffff:8.8.8.8", "8.8.8.8", True),
    ("IPv4-translated", "::ffff:0:7f00:1", "127.0.0.1", False),
    ("NAT64 well-known", "64:ff9b::7f00:1", "127.0.0.1", False),
    ("NAT64 well-known, private", "64:ff9b::a00:1", "10.0.0.1", False),
    ("NAT64 well-known, metadata", "64:ff9b::169.254.169.254", "169.254.169.254", False),
    ("NAT64 well-known, public", "64:ff9b::808:808", "8.8.8.8", True),
    ("NAT64 local-use, /96 layout", "64:ff9b:1::a00:1", "10.0.0.1", False),
    ("NAT64 local-use, /48 layout", "64:ff9b:1:a00:0:100::", "10.0.0.1", False),
    ("NAT64 local-use, public inside", "64:ff9b:1::808:808", "8.8.8.8", False),  # local-use: never global
    ("6to4", "2002:7f00:1::", "127.0.0.1", False),
    ("6to4, private", "2002:a00:1::1", "10.0.0.1", False),
    ("6to4, public", "2002:808:808::1", "8.8.8.8", True),
    ("Teredo, loopback client", "2001:0:808:808:0:0:80ff:fffe", "127.0.0.1", False),
    ("Teredo, documentation client", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "192.0.2.45", False),
    ("Teredo, public server and client", "2001:0:808:808:0:0:f7f7:f7f7", "8.8.8.8", True),
    ("plain IPv6, public", "2606:4700::1111", "", True),
    ("plain IPv6, loopback", "::1", "", False),
]


@pytest.mark.parametrize(("form", "literal", "inner", "allowed"), TABLE, ids=[row[0] for row in TABLE])
def test_each_ipv6_form_is_judged_by_the_ipv4_address_it_carries(form, literal, inner, allowed):
    address = ipaddress.ip_address(literal)
    carried = [str(a) for a in embedded_ipv4(address)]
    if inner:
        assert inner in carried, (form, carried)
    else:
        assert carried == [], (form, carried)
    policy = HostPolicy.parse(["*"])
    assert policy.admits(literal, address) is allowed, form
    url = f"http://[{literal}]/hook"
    if allowed:
        assert check_url(url, policy, field="url") == url
    else:
        with pytest.raises(InvalidInputError) as caught:
            check_url(url, policy, field="url")
        assert caught.value.field == "url" and "not an allowed target" in caught.value.message


def test_an_explicit_entry_for_the_ipv4_network_admits_its_ipv6_forms():
    policy = HostPolicy.parse(["10.0.0.0/8"])
    for literal in ("64:ff9b::a00:1", "::ffff:10.0.0.1", "2002:a00:1::1", "::10.0.0.1"):
        assert policy.admits(literal, ipaddress.ip_address(literal)), literal
    assert not policy.admits("::7f00:1", ipaddress.ip_address("::7f00:1"))


def test_publishers_refuse_to_connect_to_any_embedded_form_and_the_api_refuses_to_save_it(api):
    transport = GuardedTransport(HostPolicy.parse(["*"]))
    refused = 0
    with httpx.Client(transport=transport, timeout=2) as client:
        for form, literal, _, allowed in TABLE:
            if allowed:
                continue
            with pytest.raises(httpx.HTTPError) as caught:
                client.get(f"http://[{literal}]:9/hook")
            assert blocked(caught.value), (form, caught.value)
            refused += 1
    saved = 0
    for form, literal, _, allowed in TABLE:
        if allowed:
            continue
        response = api.post(
            "/api/v1/accounts",
            json={
                "platform": "webhook",
                "handle": f"h{saved}",
                "url": f"http://[{literal}]/hook",
                "credentials": {"secret": "s"},
            },
            headers=api.auth("write"),
        )
        assert response.status_code == 422 and response.json()["error"]["field"] == "url", (
            form,
            response.text,
        )
        saved += 1
    report("security_targets", forms=len(TABLE), refused_at_connect=refused, refused_at_save=saved)


@pytest.fixture
def database_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'atomq.db'}"
