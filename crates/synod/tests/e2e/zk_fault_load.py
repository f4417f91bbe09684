"""A recorded ZooKeeper load for the fault tests: while the test kills, pauses and partitions
members, four kazoo sessions spread over the cluster write unique values (setData) and read
linearizably (sync, then getData) on four znodes. Meanwhile a doomed session holds an ephemeral
and is frozen (SIGSTOP) so that it expires; a watcher counts the ephemeral's deletions.

Writes a JSON report to OUT: every operation with its call and return time (ns, one clock;
no return for an operation whose outcome is unknown), whether each load session survived, and
how many times the doomed ephemeral was seen deleted.

    python3 zk_fault_load.py HOSTS SECONDS OUT
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException
from kazoo.retry import KazooRetry

hosts, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
KEYS = [f"/zkf/k{i}" for i in range(4)]
now = time.monotonic_ns


def connect(timeout=15.0):
    # No retries inside kazoo: a failed operation is recorded as failed (or unknown).
    client = KazooClient(hosts=hosts, timeout=timeout, connection_retry=KazooRetry(max_tries=-1),
                         command_retry=None)
    client.start(timeout=30)
    return client


history = []
setup = connect()
setup.ensure_path("/zkf")
for key in KEYS:
    call = now()
    setup.create(key, b"init")
    history.append({"client": 98, "kind": "put", "key": key, "value": "init",
                    "call": call, "return": now()})

# The doomed session: an ephemeral, then frozen so that its heartbeats stop.
doomed_path = "/zkf/doomed"
doomed = subprocess.Popen(
    [sys.executable, "-c", f"""
import sys, time
from kazoo.client import KazooClient
zk = KazooClient(hosts={hosts!r}, timeout=6.0)
zk.start(timeout=30)
zk.create({doomed_path!r}, b"", ephemeral=True)
print("ready", flush=True)
time.sleep(3600)
"""], stdout=subprocess.PIPE, text=True)
assert doomed.stdout.readline().strip() == "ready"
deletions = []
present = [True]


def on_doomed(data, stat):
    # DataWatch sets its watch again after every event and every reconnection: a deletion,
    # even one made while this session was moving, is seen as the node's going from present
    # to absent.
    if stat is None and present[0]:
        deletions.append(doomed_path)
    present[0] = stat is not None


setup.DataWatch(doomed_path, on_doomed)
os.kill(doomed.pid, signal.SIGSTOP)

lock = threading.Lock()
stop_at = time.monotonic() + seconds
survived = {}


def load(number):
    states = []
    client = connect()
    client.add_listener(states.append)
    session = client.client_id
    rng = random.Random(number)
    sequence = 0
    while time.monotonic() < stop_at:
        key = rng.choice(KEYS)
        if rng.random() < 0.5:
            sequence += 1
            value = f"c{number}-{sequence}"
            call = now()
            try:
                client.set(key, value.encode())
                entry = {"client": number, "kind": "put", "key": key, "value": value,
                         "call": call, "return": now()}
            except KazooException:
                entry = {"client": number, "kind": "put", "key": key, "value": value,
                         "call": call, "return": None}
                time.sleep(0.05)
        else:
            call = now()
            try:
                client.sync(key)
                data, _ = client.get(key)
                entry = {"client": number, "kind": "get", "key": key,
                         "value": data.decode(), "call": call, "return": now()}
            except KazooException:
                time.sleep(0.05)
                continue
        with lock:
            history.append(entry)
    survived[number] = (client.client_id == session and KazooState.LOST not in states)
    client.stop()
    client.close()


threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()

# The final state: every acknowledged write must be in it or overwritten by a later one.
for key in KEYS:
    call = now()
    setup.sync(key)
    data, _ = setup.get(key)
    history.append({"client": 99, "kind": "get", "key": key, "value": data.decode(),
                    "call": call, "return": now()})
deadline = time.monotonic() + 30
while setup.exists(doomed_path) is not None and time.monotonic() < deadline:
    time.sleep(0.1)
time.sleep(0.5)
doomed_gone = setup.exists(doomed_path) is None
os.kill(doomed.pid, signal.SIGKILL)
setup.stop()
setup.close()
with open(out, "w") as report:
    json.dump({"history": history, "survived": survived, "deletions": len(deletions),
               "doomed_gone": doomed_gone}, report)
print(f"load done: {len(history)} operations")
