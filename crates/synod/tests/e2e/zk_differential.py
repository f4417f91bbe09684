"""Differential test: the same random ZooKeeper operations, through kazoo, against Synod and a
real ZooKeeper 3.8, step by step; every answer, Stat and error must match. zxids and times are
each server's own: what is compared is how they relate (a node's czxid against its mzxid and
pzxid), not their values. Prints "differential ok: N operations" or the first difference with
the seed that replays it.

    python3 zk_differential.py SYNOD_HOST ZOOKEEPER_HOST FIRST_SEED LAST_SEED OPS_PER_SEED
"""

import random
import sys

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException
from kazoo.protocol.states import ZnodeStat
from kazoo.security import ACL, CREATOR_ALL_ACL, OPEN_ACL_UNSAFE, READ_ACL_UNSAFE, Id

# ACLs the operations set: open, read-only, the creator's (auth, resolved to the digest both
# sides' clients hold), and a malformed one (world with another id: InvalidACL).
ACLS = [OPEN_ACL_UNSAFE, READ_ACL_UNSAFE, CREATOR_ALL_ACL, [ACL(31, Id("world", "nobody"))]]

synod_host, zookeeper_host = sys.argv[1], sys.argv[2]
first_seed, last_seed, ops_per_seed = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])


def connect(host):
    client = KazooClient(hosts=host, timeout=10, auth_data=[("digest", "diff:secret")])
    client.start(timeout=10)
    return client


def stat_shape(stat, session):
    return (
        stat.version,
        stat.cversion,
        stat.aversion,
        "own" if stat.ephemeralOwner == session else ("other" if stat.ephemeralOwner else 0),
        stat.dataLength,
        stat.numChildren,
        stat.czxid == stat.mzxid,
        stat.czxid == stat.pzxid,
    )


def shape(value, session):
    if isinstance(value, ZnodeStat):
        return stat_shape(value, session)
    if isinstance(value, BaseException):
        return type(value).__name__
    if isinstance(value, ACL):
        return (value.perms, value.id.scheme, value.id.id)
    if isinstance(value, (list, tuple)):
        return [shape(v, session) for v in value]
    return value


class Side:
    def __init__(self, host):
        self.host = host
        self.client = connect(host)

    def restart(self):
        self.client.stop()
        self.client.close()
        self.client = connect(self.host)

    def run(self, op):
        kind, args = op[0], op[1:]
        zk = self.client
        try:
            if kind == "create":
                path, data, ephemeral, sequence = args
                result = zk.create(path, data, ephemeral=ephemeral, sequence=sequence)
            elif kind == "delete":
                result = zk.delete(*args)
            elif kind == "set":
                result = zk.set(*args)
            elif kind == "get":
                result = zk.get(*args)
            elif kind == "exists":
                result = zk.exists(*args)
            elif kind == "get_acls":
                result = zk.get_acls(*args)
            elif kind == "set_acls":
                path, acl_index, version = args
                result = zk.set_acls(path, ACLS[acl_index], version)
            elif kind == "children":
                children, stat = zk.get_children(args[0], include_data=True)
                result = (sorted(children), stat)
            elif kind == "transaction":
                tx = zk.transaction()
                for sub in args[0]:
                    if sub[0] == "create":
                        tx.create(sub[1], sub[2], ephemeral=sub[3], sequence=sub[4])
                    elif sub[0] == "delete":
                        tx.delete(sub[1], sub[2])
                    elif sub[0] == "set":
                        tx.set_data(sub[1], sub[2], sub[3])
                    else:
                        tx.check(sub[1], sub[2])
                result = tx.commit()
            elif kind == "restart":
                self.restart()
                result = "restarted"
            else:
                raise AssertionError(kind)
        except KazooException as error:
            result = error
        return shape(result, zk.client_id[0] if zk.client_id else 0)


def random_op(rng, base, created):
    names = ["a", "b", "c"]
    depth = rng.choice([1, 1, 2, 2, 3])
    path = base + "".join("/" + rng.choice(names) for _ in range(depth))
    if created and rng.random() < 0.4:
        path = rng.choice(created)
    data = rng.choice([b"", b"x", b"value", bytes(rng.randrange(256) for _ in range(8))])
    version = rng.choice([-1, -1, 0, 1, 2])
    roll = rng.random()
    if roll < 0.25:
        return ("create", path, data, rng.random() < 0.25, rng.random() < 0.25)
    if roll < 0.35:
        return ("delete", path, version)
    if roll < 0.5:
        return ("set", path, data, version)
    if roll < 0.6:
        return ("get", path)
    if roll < 0.67:
        return ("exists", path)
    if roll < 0.74:
        return ("children", rng.choice([base, path]))
    if roll < 0.77:
        return ("get_acls", path)
    if roll < 0.8:
        return ("set_acls", path, rng.randrange(len(ACLS)), version)
    if roll < 0.97:
        subs = []
        for _ in range(rng.randrange(1, 4)):
            sub = random_op(rng, base, created)
            if sub[0] == "create":
                subs.append(sub)
            elif sub[0] == "delete":
                subs.append(sub)
            elif sub[0] == "set":
                subs.append(sub)
            else:
                subs.append(("check", path, version))
        return ("transaction", subs)
    return ("restart",)


synod, reference = Side(synod_host), Side(zookeeper_host)
total = 0
for seed in range(first_seed, last_seed + 1):
    rng = random.Random(seed)
    base = f"/diff-{seed}"
    for side in (synod, reference):
        side.client.ensure_path(base)
    created = []
    for step in range(ops_per_seed):
        op = random_op(rng, base, created)
        ours, theirs = synod.run(op), reference.run(op)
        total += 1
        if ours != theirs:
            print(f"seed {seed} step {step}: {op}\n  synod:     {ours}\n  zookeeper: {theirs}")
            print(f"replay: python3 zk_differential.py HOSTS {seed} {seed} {ops_per_seed}")
            sys.exit(1)
        if op[0] == "create" and isinstance(ours, str) and ours.startswith(base):
            created.append(ours)
    # Nodes left read-only cannot be removed (their children need DELETE on them): a seed's
    # tree stays where that happens, on both sides alike.
    for side in (synod, reference):
        try:
            side.client.delete(base, recursive=True)
        except KazooException:
            pass
print(f"differential ok: {total} operations")
