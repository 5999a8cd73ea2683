"""A libzmq peer (through pyzmq) for htex's CURVE interop tests (tests/tests/curve.rs).

    pyzmq_peer.py client ENDPOINT SERVER_KEY CLIENT_SECRET_FILE
        A CURVE DEALER: says Hello to an htex interchange and prints the kind of its first
        reply ("Welcome", ...) or "no reply" after 3 s.
    pyzmq_peer.py plain ENDPOINT
        The same, without CURVE.
    pyzmq_peer.py interchange SECRET_FILE ALLOWED_DIR
        A CURVE ROUTER with pyzmq's ZAP authenticator allowing the keys in ALLOWED_DIR: prints
        its endpoint, answers Hello with Welcome and every command with an error naming pyzmq,
        until stdin closes.

Messages are MessagePack as htex's rmp-serde writes them: an enum variant is a one-entry map
from its name to its fields (a struct's fields as an array), a unit variant is its name.
"""

import sys
import threading

import msgpack
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

PROTOCOL_VERSION = 5
MAX_FRAME = 64 << 20


def hello():
    return msgpack.packb({"Hello": [PROTOCOL_VERSION, "pyzmq", MAX_FRAME]})


def kind(frame):
    message = msgpack.unpackb(frame, raw=False)
    return next(iter(message)) if isinstance(message, dict) else str(message)


def say_hello(socket, endpoint):
    socket.rcvtimeo = 3000
    socket.linger = 0
    socket.connect(endpoint)
    socket.send(hello())
    try:
        print(kind(socket.recv()), flush=True)
    except zmq.Again:
        print("no reply", flush=True)


def client(endpoint, server_key, secret_file):
    public, secret = zmq.auth.load_certificate(secret_file)
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.curve_publickey, socket.curve_secretkey = public, secret
    socket.curve_serverkey = server_key.encode()
    say_hello(socket, endpoint)


def plain(endpoint):
    say_hello(zmq.Context.instance().socket(zmq.DEALER), endpoint)


def interchange(secret_file, allowed_dir):
    context = zmq.Context.instance()
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=allowed_dir)
    public, secret = zmq.auth.load_certificate(secret_file)
    router = context.socket(zmq.ROUTER)
    router.curve_secretkey, router.curve_publickey, router.curve_server = secret, public, True
    port = router.bind_to_random_port("tcp://127.0.0.1")
    print("tcp://127.0.0.1:%d" % port, flush=True)

    def serve():
        while True:
            try:
                peer, frame = router.recv_multipart()
            except zmq.ZMQError:
                return
            message = msgpack.unpackb(frame, raw=False)
            if "Hello" in message:
                reply = {"Welcome": [PROTOCOL_VERSION, "pyzmq", MAX_FRAME]}
            elif "Command" in message:
                request_id = message["Command"][0]
                reply = {"CommandReply": [request_id, {"Error": ["pyzmq got the command"]}]}
            else:
                continue
            router.send_multipart([peer, msgpack.packb(reply)])

    threading.Thread(target=serve, daemon=True).start()
    sys.stdin.read()
    auth.stop()


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    {"client": client, "plain": plain, "interchange": interchange}[mode](*args)
