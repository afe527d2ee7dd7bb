"""redis-py against a secured kv node: TLS, requirepass, users with roles.

    python3 examples/kv/tests/redis_py_security.py <port> <ca.pem> <requirepass>

The node must run with TLS (client certificates optional) and the users of .ci/kv-security.
Exits non-zero on the first mismatch.
"""

import sys

import redis


def main(port, ca, requirepass):
    def client(**kw):
        return redis.Redis(host="localhost", port=port, ssl=True, ssl_ca_certs=ca, **kw)

    # No credentials: every command is refused with NOAUTH (redis-py raises AuthenticationError).
    try:
        client(protocol=2).get("k")
        raise AssertionError("a command before AUTH succeeded")
    except redis.exceptions.AuthenticationError as e:
        assert "Authentication required" in str(e), e

    # requirepass: AUTH <password> (RESP2) and HELLO 3 AUTH default <password> (RESP3).
    for proto in (2, 3):
        r = client(password=requirepass, protocol=proto)
        assert r.set(f"py:{proto}", "v") is True
        assert r.get(f"py:{proto}") == b"v"
        assert r.acl_whoami() in ("default", b"default")

    # A wrong password.
    try:
        client(password="wrong", protocol=2).ping()
        raise AssertionError("a wrong password was accepted")
    except redis.exceptions.AuthenticationError as e:
        assert "WRONGPASS" in str(e) or "invalid" in str(e), e

    # A writer writes; a reader reads and is refused writes with NOPERM.
    writer = client(username="bob", password="bob-password", protocol=3)
    assert writer.set("py:w", "1") is True
    assert writer.acl_whoami() in ("bob", b"bob")
    reader = client(username="alice", password="alice-password", protocol=3)
    assert reader.get("py:w") == b"1"
    try:
        reader.set("py:w", "2")
        raise AssertionError("a reader wrote")
    except redis.exceptions.NoPermissionError as e:
        assert "NOPERM" in str(e) or "no permissions" in str(e), e
    assert writer.get("py:w") == b"1"
    print("redis-py: TLS, AUTH, HELLO AUTH, NOAUTH, WRONGPASS, NOPERM, ACL WHOAMI ok")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3])
