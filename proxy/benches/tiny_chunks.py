#!/usr/bin/env python3
"""One upload of many one-byte chunks, for proxy/benches/tiny_chunks.sh.

  tiny_chunks.py backend            listen on 127.0.0.1:0, print the port, answer each
                                    request after reading its (chunked or sized) body with
                                    "<bytes> bytes in <chunks> chunks"
  tiny_chunks.py client PORT N      POST N one-byte chunks to 127.0.0.1:PORT (Host
                                    api.example.com, /bench/upload), print the answer

Only loopback. The backend stops after STOP_AFTER seconds (default 600) whatever happens.
"""
import os
import socket
import sys
import threading


def read_until(sock, buf, marker):
    while marker not in buf:
        data = sock.recv(65536)
        if not data:
            raise EOFError("peer closed")
        buf += data
    at = buf.index(marker)
    return buf[:at], buf[at + len(marker):]


def read_exactly(sock, buf, n):
    while len(buf) < n:
        data = sock.recv(65536)
        if not data:
            raise EOFError("peer closed")
        buf += data
    return buf[:n], buf[n:]


def serve(conn):
    buf = b""
    try:
        while True:
            head, buf = read_until(conn, buf, b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:] if ":" in l)}
            size = chunks = 0
            if "chunked" in headers.get("transfer-encoding", "").lower():
                while True:
                    line, buf = read_until(conn, buf, b"\r\n")
                    n = int(line.split(b";")[0], 16)
                    if n == 0:
                        _, buf = read_until(conn, buf, b"\r\n")
                        break
                    _, buf = read_exactly(conn, buf, n + 2)
                    size += n
                    chunks += 1
            else:
                n = int(headers.get("content-length", "0"))
                _, buf = read_exactly(conn, buf, n)
                size, chunks = n, (1 if n else 0)
            body = f"{size} bytes in {chunks} chunks".encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    except (EOFError, OSError, ValueError):
        conn.close()


def backend():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)
    threading.Timer(float(os.environ.get("STOP_AFTER", "600")), lambda: os._exit(0)).start()
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def client(port, n):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /bench/upload HTTP/1.1\r\nHost: api.example.com\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b"1\r\nx\r\n" * 10000
    for _ in range(n // 10000):
        sock.sendall(piece)
    sock.sendall(b"1\r\nx\r\n" * (n % 10000) + b"0\r\n\r\n")
    head, rest = read_until(sock, b"", b"\r\n\r\n")
    length = int([l.split(":", 1)[1] for l in head.decode().split("\r\n") if l.lower().startswith("content-length")][0])
    body, _ = read_exactly(sock, rest, length)
    print(head.split(b"\r\n")[0].decode(), body.decode())


if __name__ == "__main__":
    if sys.argv[1] == "backend":
        backend()
    else:
        client(int(sys.argv[2]), int(sys.argv[3]))
