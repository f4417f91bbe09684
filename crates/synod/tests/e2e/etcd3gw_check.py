"""Drives Synod's JSON gateway with Python's etcd3gw (a client nobody here wrote).

Usage: python3 etcd3gw_check.py HOST PORT. Exits non-zero with a message on the first mismatch.
"""
import sys
import threading
import time

import etcd3gw

host, port = sys.argv[1], int(sys.argv[2])
client = etcd3gw.client(host=host, port=port)

status = client.status()
assert status["version"].startswith("3.6."), status
assert len(client.members()) == 1, client.members()

assert client.put("foo", "bar") is True
assert client.get("foo") == [b"bar"], client.get("foo")
client.put("dir/a", "1")
client.put("dir/b", "2")
assert sorted(value for value, _ in client.get_prefix("dir/")) == [b"1", b"2"]
assert client.create("fresh", "x") is True
assert client.create("fresh", "y") is False, "create is a compare-and-put on a missing key"
assert client.replace("foo", "bar", "baz") is True
assert client.replace("foo", "bar", "qux") is False
assert client.get("foo") == [b"baz"]
assert client.delete("foo") is True
assert client.get("foo") == []
assert client.delete_prefix("dir/") is True

lease = client.lease(ttl=60)
client.put("leased", "v", lease=lease)
assert 0 < lease.ttl() <= 60, lease.ttl()
assert lease.keys() == [b"leased"], lease.keys()
assert lease.refresh() == 60
assert lease.revoke() is True
assert client.get("leased") == []

events, cancel = client.watch_prefix("w/")


def writer():
    time.sleep(0.5)
    client.put("w/1", "one")


threading.Thread(target=writer).start()
event = next(events)
assert event["kv"]["key"] == b"w/1", event
assert event["kv"]["value"] == b"one", event
cancel()

lock = client.lock("the-lock", ttl=30)
assert lock.acquire() is True
assert lock.is_acquired() is True
assert lock.release() is True

print("etcd3gw ok")
