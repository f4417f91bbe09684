"""Authenticates against Synod with Python's etcd3 (python-etcd3, a gRPC client nobody here
wrote) over mutual TLS: by the client certificate's CN, or with a user and password (the token
then names the user, whatever the certificate says). The user may read and write under a/ and
nothing else.

Usage: python3 etcd3_auth_check.py HOST PORT CA CERT KEY [USER PASSWORD]
Exits non-zero with a message on the first mismatch.
"""
import sys

import etcd3
import grpc

host, port = sys.argv[1], int(sys.argv[2])
ca, cert, key = sys.argv[3:6]
user, password = (sys.argv[6], sys.argv[7]) if len(sys.argv) > 7 else (None, None)
client = etcd3.client(
    host=host, port=port, ca_cert=ca, cert_cert=cert, cert_key=key, user=user, password=password
)

client.put("a/python", "hello")
value, _ = client.get("a/python")
assert value == b"hello", value


def refused(call, message):
    try:
        call()
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.code()
        assert error.details() == message, error.details()
        return
    raise AssertionError("not refused")


refused(lambda: client.put("outside", "x"), "etcdserver: permission denied")
refused(lambda: client.get("outside"), "etcdserver: permission denied")
print("etcd3 auth ok")
