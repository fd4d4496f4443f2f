"""The one connection counter (xrayvision.connections), used by the DICOM port and the HTTP server."""
from __future__ import annotations

import threading

from xrayvision.connections import EXEMPT, HOST, TOTAL, ConnectionCounter, address_key


def test_address_key_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert address_key("192.0.2.7") == "192.0.2.7"
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"  # a dual-stack socket's view of an IPv4 peer
    assert address_key("not-an-address") == "not-an-address"


def test_per_key_and_total_caps_and_release() -> None:
    counter = ConnectionCounter(per_key=2, total=3)
    assert [counter.admit("a"), counter.admit("a"), counter.admit("a")] == [None, None, HOST]
    assert counter.admit("b") is None
    assert counter.admit("c") == TOTAL
    assert (counter.held(), counter.held("a"), counter.held("b")) == (3, 2, 1)
    counter.release("a")
    assert counter.admit("c") is None
    counter.release("never-admitted")  # nothing to give back, and nothing goes negative
    assert counter.held() == 3


def test_exempt_key_and_no_total() -> None:
    counter = ConnectionCounter(per_key=1)
    assert [counter.admit(EXEMPT) for _ in range(5)] == [None] * 5  # limited by the total only, and there is none
    assert [counter.admit("a"), counter.admit("a")] == [None, HOST]


def test_counts_stay_exact_across_threads() -> None:
    counter = ConnectionCounter(per_key=10**6, total=10**6)

    def churn() -> None:
        for _ in range(2000):
            assert counter.admit("k") is None
            counter.release("k")

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.held() == counter.held("k") == 0
