#!/usr/bin/env python3
"""What a member's application does to reach a peer: ask its own sidecar's CONNECT
listener for `<member>:<port>`, then talk plaintext; the sidecar carries it over an
XLattice session. Usage: peer.py SIDECAR_HOST:PORT MEMBER PORT MESSAGE"""
import socket
import sys

proxy, member, port, message = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
host, proxy_port = proxy.rsplit(":", 1)
with socket.create_connection((host, int(proxy_port)), timeout=10) as s:
    s.sendall(f"CONNECT {member}:{port} HTTP/1.1\r\nHost: {member}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    status = head.split(b"\r\n", 1)[0].decode()
    if " 200 " not in status:
        body = s.recv(4096).decode(errors="replace").strip()
        print(f"refused: {status} {body}")
        sys.exit(1)
    s.sendall(message.encode() + b"\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    print(reply.decode().rstrip())
