"""The runner's life: protect the protocol stream, load the module, answer calls until EOF."""

import argparse
import asyncio
import inspect
import os
import sys
import time
import traceback

from . import framing, loader
from .runtime import context


class UsageError(Exception):
    """A bad command line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message}\n{self.format_usage()}")


def _parser():
    p = _Parser(
        prog="python -m htex_runner",
        description="Serve a Python module's functions to an htex worker as a warm runner.",
    )
    p.add_argument("module", metavar="MODULE", help="dotted name of the module to serve")
    p.add_argument(
        "--path", metavar="DIR", action="append", default=[],
        help="prepend DIR to sys.path before importing MODULE (repeatable)",
    )
    return p


def _utf8(text):
    """``text`` with anything UTF-8 cannot hold (lone surrogates) escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_str(value):
    try:
        return _utf8(str(value))
    except BaseException:  # noqa: BLE001 - a broken __str__ must not end the runner
        return f"<{type(value).__name__} with an unprintable message>"


def _raised(exc, tb=None):
    """The protocol's description of ``exc``; ``tb`` is where its traceback starts."""
    try:
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:  # noqa: BLE001
        text = f"{type(exc).__name__}: {_safe_str(exc)}\n"
    return {"type": type(exc).__name__, "message": _safe_str(exc), "traceback": _utf8(text)}


def _error(kind, message, **extra):
    return {"error": {"type": kind, "message": message, "traceback": "", **extra}}


def _take_protocol_streams():
    """Keeps private copies of fds 0 and 1 for frames; user code and its children get
    /dev/null as stdin and stderr as stdout, so nothing they do can touch a frame."""
    sys.stdout.flush()
    proto_out = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    proto_in = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.stdin = open(os.devnull, "r")  # noqa: SIM115 - lives as long as the process
    return framing.FrameReader(proto_in), framing.FrameWriter(proto_out)


def _decode_args(raw):
    """Positional and keyword arguments from the msgpack bytes of a request's args."""
    value = None if raw is None else framing.unpack(raw)
    if value is None:
        return (), {}
    if isinstance(value, list):
        return value, {}
    if isinstance(value, dict):
        return (), value
    return (value,), {}


def _invoke(fn, args, kwargs):
    result = fn(*args, **kwargs)
    if inspect.isawaitable(result):
        result = asyncio.run(_await(result))
    return result


async def _await(awaitable):
    return await awaitable


def _answer(body, functions):
    """The reply to one request frame."""
    try:
        request = framing.unpack(body)
    except Exception as e:  # noqa: BLE001
        return _error("BadRequest", f"the request is not one msgpack value: {_safe_str(e)}")
    if not isinstance(request, dict):
        return _error("BadRequest", f"the request is a {type(request).__name__}, not a map")
    name = request.get("function")
    if not isinstance(name, str):
        return _error("BadRequest", "the request has no `function` string")
    raw = request.get("args")
    if raw is not None and not isinstance(raw, (bytes, bytearray)):
        return _error(
            "BadRequest", f"`args` must be msgpack-encoded bytes, not {type(raw).__name__}"
        )
    fn = functions.get(name)
    if fn is None:
        available = list(functions)
        return _error(
            "UnknownFunction",
            f"module `{context.module}` serves no function `{name}`; it has: "
            + (", ".join(available) or "(none)"),
            available=available,
        )
    try:
        args, kwargs = _decode_args(raw)
    except Exception as e:  # noqa: BLE001
        return _error("BadRequest", f"`args` of `{name}` is not msgpack: {_safe_str(e)}")

    context.calls += 1
    try:
        result = _invoke(fn, args, kwargs)
    except BaseException as e:  # noqa: BLE001 - SystemExit, KeyboardInterrupt too
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
        return {"error": _raised(e, tb)}
    finally:
        _flush_user_output()
    try:
        encoded = framing.pack(result)
    except Exception as e:  # noqa: BLE001
        return _error(
            "TypeError",
            f"`{name}` returned a value msgpack cannot encode "
            f"({type(result).__name__}): {_safe_str(e)}",
        )
    if len(encoded) > framing.MAX_FRAME_BYTES - 64:
        return _error(
            "ResultTooLarge",
            f"`{name}` returned {len(encoded)} bytes of msgpack; a frame holds at most "
            f"{framing.MAX_FRAME_BYTES} bytes",
        )
    return {"ok": encoded}


def _flush_user_output():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            pass


def main(argv=None):
    """Runs the runner; returns the process's exit status."""
    reader, writer = _take_protocol_streams()
    try:
        opts = _parser().parse_args(argv)
    except UsageError as e:
        writer.send({"setup_error": {"type": "UsageError", "message": str(e), "traceback": ""}})
        return 2

    started = time.perf_counter()
    context.module = opts.module
    try:
        loader.extend_path(opts.path)
        module = loader.load(opts.module)
        functions = loader.served_functions(module)
    except BaseException as e:  # noqa: BLE001 - a SystemExit in setup is a setup error too
        _flush_user_output()
        writer.send({"setup_error": _raised(e, e.__traceback__)})
        return 1
    context.setup_s = time.perf_counter() - started
    context.ready_at_us = time.time_ns() // 1000
    _flush_user_output()
    try:
        writer.send({
            "ready": {"pid": os.getpid(), "functions": list(functions), "setup_s": context.setup_s}
        })
        while True:
            body = reader.read()
            if body is None:
                return 0
            writer.send(_answer(body, functions))
    except framing.TruncatedFrame as e:
        print(f"htex_runner: {e}; exiting", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0
