"""Smoke test of the kv demo with redis-py, the most common Python Redis client.

    python3 examples/kv/tests/redis_py_smoke.py [port ...]      (default: 6379 6380 6381)

Writes through every node, reads them back through every other node, and exercises
pipelines, expiry and counters. Exits non-zero on the first mismatch.
"""

import sys
import time

import redis


def main(ports):
    clients = {p: redis.Redis(host="localhost", port=p) for p in ports}
    resp2 = {p: redis.Redis(host="localhost", port=p, protocol=2) for p in ports}

    # The example from the documentation, against each node.
    for p, r in clients.items():
        r.set("user_id", "12345")
        assert r.get("user_id") == b"12345", p

    # A write through one node is visible through every other (reads are linearizable).
    for i, (p, r) in enumerate(clients.items()):
        r.set(f"from:{p}", f"value-{i}")
    for p, r in clients.items():
        for q in ports:
            assert r.get(f"from:{q}") == f"value-{ports.index(q)}".encode(), (p, q)

    r = clients[ports[0]]
    assert r.incr("py:counter") == 1
    assert r.incrby("py:counter", 41) == 42
    assert r.decr("py:counter") == 41
    assert r.append("py:s", "ab") == 2 and r.append("py:s", "cd") == 4
    assert r.strlen("py:s") == 4
    r.mset({"py:a": "1", "py:b": "2"})
    assert r.mget(["py:a", "py:missing", "py:b"]) == [b"1", None, b"2"]
    assert r.exists("py:a", "py:b", "py:missing") == 2
    assert r.setnx("py:a", "x") is False and r.setnx("py:new", "y") is True
    assert r.getset("py:a", "10") == b"1"
    r.set("py:ttl", "v", ex=100)
    assert 99 <= r.ttl("py:ttl") <= 100
    assert r.persist("py:ttl") and r.ttl("py:ttl") == -1
    r.set("py:short", "v", px=300)
    time.sleep(0.6)  # let a 300 ms expiry pass: waiting on the clock is the point here
    assert r.get("py:short") is None
    assert r.delete("py:a", "py:b", "py:missing") == 2
    assert sorted(r.keys("py:*")) == sorted([b"py:counter", b"py:s", b"py:new", b"py:ttl"])
    assert set(r.scan_iter(match="py:*", count=2)) == {b"py:counter", b"py:s", b"py:new", b"py:ttl"}

    # Pipelines keep their order.
    pipe = r.pipeline(transaction=False)
    for i in range(100):
        pipe.set("py:pipe", str(i))
        pipe.get("py:pipe")
    results = pipe.execute()
    assert results[1::2] == [str(i).encode() for i in range(100)]

    # RESP2 clients work too; INFO reports the cluster.
    for p, r2 in resp2.items():
        assert r2.get("user_id") == b"12345", p
        info = r2.info("replication")
        assert info["raft_role"] in ("leader", "follower"), info
    assert r.dbsize() >= 8
    print(f"redis-py smoke test passed against ports {ports}")


if __name__ == "__main__":
    main([int(p) for p in sys.argv[1:]] or [6379, 6380, 6381])
