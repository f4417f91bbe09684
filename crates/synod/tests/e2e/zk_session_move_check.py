"""A kazoo session moved to another member mid-session: its member is killed (kill -9), kazoo
reconnects to the next member of its list with the same session, and keeps its ephemerals; its
recipes' watches go on. Prints "moved ok".

    python3 zk_session_move_check.py FIRST_HOST SECOND_HOST OBSERVER_HOST PID_OF_FIRST
"""

import os
import signal
import sys
import time

from kazoo.client import KazooClient, KazooState

first, second, observer_host, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

states = []
moved = KazooClient(hosts=f"{first},{second}", randomize_hosts=False, timeout=15)
moved.add_listener(states.append)
moved.start(timeout=10)
assert moved._connection._socket.getpeername()[1] == int(first.rsplit(":", 1)[1]), "not on the first"
session = moved.client_id
moved.ensure_path("/moved")
moved.create("/moved/ephemeral", b"mine", ephemeral=True)
moved.create("/moved/watched", b"v0")
# kazoo drops one-shot watches when its connection drops (unlike the Java client, it never
# sends setWatches); its DataWatch and ChildrenWatch recipes set theirs again on the new member.
seen_data = []
seen_children = []
moved.DataWatch("/moved/watched", lambda data, stat: seen_data.append(data))
moved.ChildrenWatch("/moved", lambda children: seen_children.append(sorted(children)))

os.kill(pid, signal.SIGKILL)
deadline = time.time() + 30
while time.time() < deadline:
    if KazooState.SUSPENDED in states and moved.state == KazooState.CONNECTED:
        break
    time.sleep(0.05)
assert moved.state == KazooState.CONNECTED, f"did not reconnect: {states}"
assert KazooState.LOST not in states, f"the session was lost: {states}"
assert moved.client_id == session, "a new session instead of the old one"
assert moved._connection._socket.getpeername()[1] == int(second.rsplit(":", 1)[1])

observer = KazooClient(hosts=observer_host, timeout=10)
observer.start(timeout=10)
stat = observer.exists("/moved/ephemeral")
assert stat is not None and stat.ephemeralOwner == session[0], stat
observer.set("/moved/watched", b"v1")
observer.create("/moved/new-child", b"")


def wait_for(condition, what):
    deadline = time.time() + 10
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.05)


wait_for(lambda: b"v1" in seen_data, f"the data watch after the move: {seen_data}")
wait_for(lambda: any("new-child" in c for c in seen_children), f"children: {seen_children}")
assert moved.get("/moved/ephemeral")[0] == b"mine"

moved.stop()
moved.close()
deadline = time.time() + 10
while observer.exists("/moved/ephemeral") is not None and time.time() < deadline:
    time.sleep(0.05)
assert observer.exists("/moved/ephemeral") is None, "the closed session's ephemeral stayed"
observer.stop()
observer.close()
print("moved ok")
