#!/usr/bin/env python3
# coding: utf-8
"""The RPC client of document 001 (client.py), ported to Python 3.

The wire behaviour is the document's, byte for byte: the length prefix is
struct.pack("I"), the machine's own byte order (little-endian on x86-64
and aarch64); the prefix and the body go out in two sendall() calls; the
answer is read with one recv(4) and one recv(length), no loop.  What
changed from the Python 2 original: print() is a function, the body is
encoded to bytes before sendall(), and the host, port, number of pings and
pause (localhost, 8080, 10 and 1 s in the document) can be given on the
command line, so the tests can point it at a server on an ephemeral port
and not wait ten seconds:

    doc-rpc-client.py [HOST [PORT [COUNT [SLEEP]]]]
"""
import json
import sys
import time
import struct
import socket


def rpc(sock, in_, params):
    response = json.dumps({"in": in_, "params": params})  # 请求消息体
    length_prefix = struct.pack("I", len(response))  # 请求长度前缀
    sock.sendall(length_prefix)
    sock.sendall(response.encode())
    length_prefix = sock.recv(4)  # 响应长度前缀
    length, = struct.unpack("I", length_prefix)
    body = sock.recv(length)  # 响应消息体
    response = json.loads(body)
    return response["out"], response["result"]  # 返回响应类型和结果


if __name__ == '__main__':
    host = sys.argv[1] if len(sys.argv) > 1 else "localhost"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    pause = float(sys.argv[4]) if len(sys.argv) > 4 else 1
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.connect((host, port))
    for i in range(count):  # 连续发送10个rpc请求
        out, result = rpc(s, "ping", "ireader %d" % i)
        print(out, result)
        time.sleep(pause)  # 休眠1s,便于观察
    s.close()  # 关闭连接
