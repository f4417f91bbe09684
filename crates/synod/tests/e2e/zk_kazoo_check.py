"""kazoo (Python's ZooKeeper client, nobody here wrote it) and its recipes against a Synod
member's ZooKeeper port: operations, Stat, errors, watches, ephemerals, ACLs and the recipes
kazoo ships. Prints "kazoo ok" when every check passed.

    python3 zk_kazoo_check.py HOST:PORT[,HOST:PORT...]
"""

import socket
import struct
import sys
import threading
import time

from kazoo.client import KazooClient
from kazoo.exceptions import (BadArgumentsError, BadVersionError, NoAuthError,
                              NoChildrenForEphemeralsError, NodeExistsError,
                              NoNodeError, NotEmptyError)
from kazoo.security import READ_ACL_UNSAFE, make_digest_acl

hosts = sys.argv[1]


def client(**options):
    zk = KazooClient(hosts=hosts, timeout=10, **options)
    zk.start(timeout=10)
    return zk


def raises(error, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except error:
        return
    raise AssertionError(f"{call.__name__}{args} did not raise {error.__name__}")


class RawZk:
    """ZooKeeper's wire protocol by hand (a session, getData), to see the order frames arrive in."""

    GET_DATA = 4
    WATCH_EVENT_XID = -1

    def __init__(self, address):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        # ConnectRequest: protocol version, last zxid seen, timeout, session id, password.
        self.send(struct.pack(">iqiqi", 0, 0, 10000, 0, 16) + bytes(16))
        self.recv()
        self.xid = 0

    def send(self, body):
        self.sock.sendall(struct.pack(">i", len(body)) + body)

    def exactly(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("the server closed the connection")
            data += chunk
        return data

    def recv(self):
        (length,) = struct.unpack(">i", self.exactly(4))
        return self.exactly(length)

    def get_data(self, path, watch):
        """Returns the watch events that arrived before the reply, and the data it carries."""
        self.xid += 1
        encoded = path.encode()
        self.send(struct.pack(">iii", self.xid, self.GET_DATA, len(encoded)) + encoded
                  + struct.pack(">?", watch))
        events = 0
        while True:
            frame = self.recv()
            xid, _zxid, err = struct.unpack(">iqi", frame[:16])
            if xid == self.WATCH_EVENT_XID:
                events += 1
                continue
            assert xid == self.xid and err == 0, (xid, err)
            (length,) = struct.unpack(">i", frame[16:20])
            return events, frame[20:20 + length]

    def close(self):
        self.sock.close()


def wait_for(condition, what, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


zk = client()
other = client()
# What an earlier run may have left (its private node needs alice to delete it).
cleaner = client(auth_data=[("digest", "alice:secret")])
if cleaner.exists("/kz"):
    cleaner.delete("/kz", recursive=True)
cleaner.stop()
cleaner.close()

# The built-in tree.
assert "zookeeper" in zk.get_children("/"), zk.get_children("/")
assert zk.exists("/zookeeper/config") is not None

# Create, read, Stat.
assert zk.create("/kz", b"v0") == "/kz"
data, stat = zk.get("/kz")
assert data == b"v0"
assert (stat.version, stat.cversion, stat.aversion) == (0, 0, 0), stat
assert stat.czxid == stat.mzxid == stat.pzxid and stat.ephemeralOwner == 0
assert stat.dataLength == 2 and stat.numChildren == 0
assert abs(stat.ctime / 1000 - time.time()) < 60, stat.ctime
stat2 = zk.set("/kz", b"v1")
assert stat2.version == 1 and stat2.mzxid > stat.mzxid and stat2.czxid == stat.czxid
raises(BadVersionError, zk.set, "/kz", b"v2", version=0)
assert zk.set("/kz", b"v2", version=1).version == 2

# Errors, in ZooKeeper's order.
raises(NodeExistsError, zk.create, "/kz", b"")
raises(NoNodeError, zk.create, "/missing/child", b"")
raises(NoNodeError, zk.get, "/missing")
raises(NoNodeError, zk.delete, "/missing")
assert zk.exists("/missing") is None
raises(BadArgumentsError, zk.delete, "/zookeeper")

# Children: sequence numbers count creations; cversion counts creations and deletions.
first = zk.create("/kz/item-", b"", sequence=True)
second = zk.create("/kz/item-", b"", sequence=True)
assert (first, second) == ("/kz/item-0000000000", "/kz/item-0000000001"), (first, second)
zk.create("/kz/plain", b"")
zk.delete(first)
third = zk.create("/kz/item-", b"", sequence=True)
assert third == "/kz/item-0000000003", third
children, parent_stat = zk.get_children("/kz", include_data=True)
assert sorted(children) == ["item-0000000001", "item-0000000003", "plain"], children
assert parent_stat.numChildren == 3 and parent_stat.cversion == 5, parent_stat
raises(NotEmptyError, zk.delete, "/kz")


# Ephemerals belong to their session and go with it.
session_id = zk.client_id[0]
zk.create("/kz/ephemeral", b"", ephemeral=True)
assert zk.exists("/kz/ephemeral").ephemeralOwner == session_id
raises(NoChildrenForEphemeralsError, zk.create, "/kz/ephemeral/child", b"")
short = client()
short.create("/kz/short-lived", b"", ephemeral=True)
gone = threading.Event()
assert other.exists("/kz/short-lived", watch=lambda event: gone.set()) is not None
short.stop()
short.close()
assert gone.wait(10), "the ephemeral of a closed session did not go"
assert other.exists("/kz/short-lived") is None

# Watches: data, children, exists (fires on creation); each once.
events = []
zk.get("/kz", watch=events.append)
zk.get_children("/kz", watch=events.append)
zk.exists("/kz/later", watch=events.append)
other.set("/kz", b"changed")
other.create("/kz/later", b"")
wait_for(lambda: len(events) == 3, f"three watch events, got {events}")
kinds = sorted((e.type, e.path) for e in events)
assert kinds == [("CHANGED", "/kz"), ("CHILD", "/kz"), ("CREATED", "/kz/later")], kinds
other.set("/kz", b"again")
time.sleep(0.3)
assert len(events) == 3, f"a one-shot watch fired twice: {events}"

# A client sees the event before the data that changed. kazoo runs watch callbacks on a thread
# of its own, so the order of a callback and a call's return is kazoo's scheduling, not the
# server's: the frames are read off the wire here, by hand.
raw = RawZk(hosts.split(",")[0])
raw.get_data("/kz", watch=True)
other.set("/kz", b"ordered")
events_before = 0
deadline = time.time() + 10
while True:
    events, data = raw.get_data("/kz", watch=False)
    events_before += events
    if data == b"ordered":
        break
    assert time.time() < deadline, "the member never showed the new data"
    time.sleep(0.01)
assert events_before == 1, f"{events_before} watch events before the reply showing the change"
raw.close()

# Transactions: all or nothing, results per operation.
tx = zk.transaction()
tx.create("/kz/tx-a", b"a")
tx.set_data("/kz", b"tx")
tx.check("/kz/plain", 0)
results = tx.commit()
assert results[0] == "/kz/tx-a" and results[2] is True, results
tx = zk.transaction()
tx.create("/kz/tx-b", b"b")
tx.check("/kz/plain", 7)
results = tx.commit()
assert [type(r).__name__ for r in results] == ["RolledBackError", "BadVersionError"], results
assert zk.exists("/kz/tx-b") is None

# ACLs: digest identities and world; NoAuth for the others.
secret = client()
secret.add_auth("digest", "alice:secret")
secret.create("/kz/private", b"mine", acl=[make_digest_acl("alice", "secret", all=True)])
assert secret.get("/kz/private")[0] == b"mine"
raises(NoAuthError, other.get, "/kz/private")
raises(NoAuthError, other.get_acls, "/kz/private")
secret.create("/kz/shown", b"", acl=[make_digest_acl("alice", "secret", all=True), READ_ACL_UNSAFE[0]])
raises(NoAuthError, other.set, "/kz/shown", b"theirs")
assert other.get("/kz/shown")[0] == b""
acl, _ = other.get_acls("/kz/shown")
assert acl[0].id.id == "alice:x", acl
acl, _ = secret.get_acls("/kz/private")
assert acl[0].id.id.startswith("alice:") and acl[0].id.id != "alice:x", acl
secret.delete("/kz/private")
secret.stop()
secret.close()

# Recipes.
lock_a = zk.Lock("/kz/lock", "a")
lock_b = other.Lock("/kz/lock", "b")
assert lock_a.acquire(timeout=5)
assert not lock_b.acquire(blocking=False)
assert lock_b.contenders() == ["a"], lock_b.contenders()
lock_a.release()
assert lock_b.acquire(timeout=5)
lock_b.release()

elected = []
election = zk.Election("/kz/election", "leader-a")
worker = threading.Thread(target=election.run, args=(lambda: elected.append("a"),))
worker.start()
wait_for(lambda: elected == ["a"], "an election winner")
worker.join(5)

counter = zk.Counter("/kz/counter")
counter += 5
other_counter = other.Counter("/kz/counter")
other_counter -= 2
assert counter.value == 3 and other_counter.value == 3, (counter.value, other_counter.value)

queue = zk.Queue("/kz/queue")
queue.put(b"one")
queue.put(b"two", priority=10)
queue.put(b"zero", priority=1)
# Lower priorities first; the default is 100.
assert [queue.get(), queue.get(), queue.get()] == [b"zero", b"two", b"one"]

barrier = zk.Barrier("/kz/barrier")
barrier.create()
released = threading.Event()
threading.Thread(target=lambda: (other.Barrier("/kz/barrier").wait(10), released.set())).start()
time.sleep(0.2)
assert not released.is_set()
barrier.remove()
assert released.wait(10), "the barrier did not release its waiter"

party = zk.Party("/kz/party", "alice")
party.join()
other_party = other.Party("/kz/party", "bob")
other_party.join()
assert sorted(party) == ["alice", "bob"], list(party)
other_party.leave()
assert list(party) == ["alice"]

seen_children = []
zk.ChildrenWatch("/kz/queue", lambda children: seen_children.append(sorted(children)))
seen_data = []
zk.DataWatch("/kz", lambda data, stat: seen_data.append(data))
other.create("/kz/queue/extra", b"")
other.set("/kz", b"watched")
wait_for(lambda: any("extra" in c for c in seen_children), f"ChildrenWatch: {seen_children}")
wait_for(lambda: b"watched" in seen_data, f"DataWatch: {seen_data}")

zk.delete("/kz", recursive=True)
assert zk.exists("/kz") is None
for c in (zk, other):
    c.stop()
    c.close()
print("kazoo ok")
