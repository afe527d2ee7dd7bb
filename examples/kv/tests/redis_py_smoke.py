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

    types_and_transactions(clients, ports)
    print(f"redis-py smoke test passed against ports {ports}")


def types_and_transactions(clients, ports):
    """Hashes, lists, sets, the newer string and key commands, and MULTI/EXEC/WATCH across nodes."""
    r, other = clients[ports[0]], clients[ports[-1]]
    r.delete(*[f"py:{k}" for k in "h l set str ex m1 m2 m3 m9 f bits copy tx txh".split()])
    assert r.hset("py:h", mapping={"a": "1", "b": "2"}) == 2
    assert r.hgetall("py:h") == {b"a": b"1", b"b": b"2"}
    assert r.hincrby("py:h", "a", 5) == 6 and r.hincrbyfloat("py:h", "b", 0.5) == 2.5
    assert r.hmget("py:h", ["a", "zz"]) == [b"6", None]
    assert r.hlen("py:h") == 2 and r.hexists("py:h", "a") and r.hstrlen("py:h", "a") == 1
    assert sorted(r.hkeys("py:h")) == [b"a", b"b"] and r.hsetnx("py:h", "a", "x") == 0
    assert r.hdel("py:h", "a", "b") == 2 and not r.exists("py:h")
    assert r.rpush("py:l", "a", "b") == 2 and r.lpush("py:l", "z") == 3
    assert r.lrange("py:l", 0, -1) == [b"z", b"a", b"b"] and r.llen("py:l") == 3
    assert r.lpop("py:l") == b"z" and r.rpop("py:l") == b"b" and r.lindex("py:l", 0) == b"a"
    assert r.sadd("py:set", "x", "y") == 2 and r.smembers("py:set") == {b"x", b"y"}
    assert r.sismember("py:set", "x") and r.scard("py:set") == 2 and r.srem("py:set", "x") == 1
    assert r.type("py:set") == b"set" and r.type("py:l") == b"list" and r.type("py:none") == b"none"
    try:
        r.get("py:set")
        raise AssertionError("GET of a set must fail")
    except redis.ResponseError as e:
        assert str(e).startswith("WRONGTYPE"), e
    r.set("py:str", "Hello World")
    assert r.getrange("py:str", 0, 4) == b"Hello" and r.setrange("py:str", 6, "Redis") == 11
    assert r.getdel("py:str") == b"Hello Redis" and r.get("py:str") is None
    r.execute_command("SETEX", "py:ex", 100, "v")
    assert r.getex("py:ex", persist=True) == b"v" and r.ttl("py:ex") == -1
    assert r.msetnx({"py:m1": "1", "py:m2": "2"}) and not r.msetnx({"py:m2": "x", "py:m3": "y"})
    assert r.incrbyfloat("py:f", 1.5) == 1.5
    assert r.setbit("py:bits", 7, 1) == 0 and r.getbit("py:bits", 7) == 1 and r.bitcount("py:bits") == 1
    r.mset({"py:lcs1": "ohmytext", "py:lcs2": "mynewtext"})
    assert r.lcs("py:lcs1", "py:lcs2") == b"mytext"
    assert r.rename("py:m1", "py:m9") and r.renamenx("py:m9", "py:m2") is False
    assert r.copy("py:m9", "py:copy") and r.get("py:copy") == b"1"
    assert r.expire("py:copy", 100, nx=True) and not r.expire("py:copy", 200, nx=True)
    assert r.expiretime("py:copy") > 0 and r.unlink("py:copy") == 1 and r.touch("py:m9") == 1
    assert r.config_set("hash-max-ziplist-entries", 64)
    assert r.config_get("hash-max-ziplist-entries") == {"hash-max-ziplist-entries": "64"}

    # A transaction is applied whole; WATCH sees a change made through another node.
    with r.pipeline(transaction=True) as pipe:
        pipe.set("py:tx", "1").incr("py:tx").hset("py:txh", "f", "v")
        assert pipe.execute() == [True, 2, 1]
    with r.pipeline(transaction=True) as pipe:
        pipe.watch("py:tx")
        other.set("py:tx", "changed elsewhere")
        pipe.multi()
        pipe.set("py:tx", "mine")
        try:
            pipe.execute()
            raise AssertionError("EXEC must abort when a watched key changed")
        except redis.WatchError:
            pass
    assert r.get("py:tx") == b"changed elsewhere"


if __name__ == "__main__":
    main([int(p) for p in sys.argv[1:]] or [6379, 6380, 6381])
