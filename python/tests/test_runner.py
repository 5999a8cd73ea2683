"""Protocol tests for htex_runner: spawn a runner and speak framed msgpack to it."""

import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

import msgpack

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON_DIR = os.path.join(REPO, "python")
FIXTURES = os.path.join("tests", "fixtures")
TIMEOUT_S = 20

FIXTURE_FUNCTIONS = ["add", "boom", "cold_start", "die", "echo", "shout", "sleep", "state"]

EXTRA_MODULE = textwrap.dedent('''
    """Edge cases beyond the fixture."""
    import sys
    from os.path import join  # imported: not served


    class Model:
        pass


    def setup():
        print("setup talks on stdout too")


    def returns_set():
        return {1, 2}

    def returns_tuple():
        return (1, "two", b"three")

    def exits():
        sys.exit(3)

    def interrupted():
        raise KeyboardInterrupt

    def bad_message():
        class Weird(Exception):
            def __str__(self):
                raise RuntimeError("no")
        raise Weird()

    def _hidden():
        return "hidden"

    async def later(x):
        return x * 2

    def context_slot():
        import htex_runner
        return [htex_runner.context.slot, htex_runner.context.pid, htex_runner.context.module]
''')


def pack(value):
    return msgpack.packb(value, use_bin_type=True)


def unpack(body):
    return msgpack.unpackb(body, raw=False)


class Runner:
    """One runner process and its protocol streams."""

    def __init__(self, module, *paths, env=None):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("HTEX_")}
        full_env["PYTHONPATH"] = PYTHON_DIR
        full_env.update(env or {})
        cmd = [sys.executable, "-m", "htex_runner", module]
        for p in paths or (FIXTURES,):
            cmd += ["--path", p]
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=full_env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
        )

    def write_frame(self, body):
        self.proc.stdin.write(struct.pack("<I", len(body)) + body)
        self.proc.stdin.flush()

    def _read_exact(self, n):
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + TIMEOUT_S
        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(f"no frame from the runner within {TIMEOUT_S} s")
            chunk = os.read(fd, n - got)
            if not chunk:
                return None if got == 0 else b""
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def read_frame(self):
        """The next frame, decoded; None at end of stream."""
        header = self._read_exact(4)
        if header is None:
            return None
        (n,) = struct.unpack("<I", header)
        body = self._read_exact(n) if n else b""
        assert body is not None and len(body) == n, "stream ended inside a frame"
        return unpack(body)

    def call(self, function, args=None, raw_args=False):
        self.write_frame(pack({"function": function, "args": args if raw_args else pack(args)}))
        return self.read_frame()

    def value(self, function, args=None):
        reply = self.call(function, args)
        assert "ok" in reply, reply
        return unpack(reply["ok"])

    def close(self):
        """Closes stdin and returns the exit status."""
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(TIMEOUT_S)

    def stderr_text(self):
        self.stderr.seek(0)
        return self.stderr.read().decode("utf-8", "replace")

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        if not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        self.stderr.close()


class FixtureTests(unittest.TestCase):
    """The fixture module shared with the Rust integration tests."""

    def setUp(self):
        self.spawned_us = time.time_ns() // 1000
        self.runner = Runner(
            "runner_module",
            env={"HTEX_SLOT_INDEX": "3", "HTEX_RUNNER_SPAWNED_US": str(self.spawned_us)},
        )
        self.addCleanup(self.runner.cleanup)
        self.ready = self.runner.read_frame()

    def test_ready_frame(self):
        ready = self.ready["ready"]
        self.assertEqual(ready["pid"], self.runner.proc.pid)
        self.assertEqual(ready["functions"], FIXTURE_FUNCTIONS)
        self.assertIsInstance(ready["setup_s"], float)
        self.assertGreaterEqual(ready["setup_s"], 0.0)
        self.assertLess(ready["setup_s"], TIMEOUT_S)

    def test_add_positional(self):
        self.assertEqual(self.runner.value("add", [2, 3]), 5)
        self.assertEqual(self.runner.value("add", ["ab", "cd"]), "abcd")

    def test_kwargs_call(self):
        self.assertEqual(self.runner.value("add", {"a": 10, "b": 32}), 42)

    def test_single_value_and_nil_args(self):
        self.assertEqual(self.runner.value("echo", "plain"), "plain")
        self.assertEqual(self.runner.value("echo", 7), 7)
        self.assertEqual(self.runner.value("echo", [{"k": [1, 2.5, None, True]}]),
                         {"k": [1, 2.5, None, True]})
        self.assertEqual(self.runner.value("echo", [b"\x00\xff"]), b"\x00\xff")
        reply = self.runner.call("echo", None)
        self.assertEqual(reply["error"]["type"], "TypeError")
        self.assertIn("value", reply["error"]["message"])

    def test_large_payload_round_trips(self):
        blob = os.urandom(8 << 20)
        self.assertEqual(self.runner.value("echo", [blob]), blob)

    def test_result_over_frame_limit_is_an_error(self):
        error = self.runner.call("echo", [b"x" * (64 << 20)])["error"]
        self.assertEqual(error["type"], "ResultTooLarge")
        self.assertEqual(self.runner.value("add", [1, 2]), 3)

    def test_state_persists_across_calls(self):
        first = self.runner.value("state")
        second = self.runner.value("state")
        self.assertEqual(first["setups"], 1)
        self.assertEqual(second["setups"], 1)
        self.assertEqual(first["pid"], self.runner.proc.pid)
        self.assertEqual(second["pid"], first["pid"])
        self.assertEqual(second["calls"], first["calls"] + 1)
        self.assertEqual(first["slot"], "3")
        self.runner.value("add", [1, 1])
        self.assertEqual(self.runner.value("state")["calls"], second["calls"] + 2)

    def test_cold_start_context(self):
        cold = self.runner.value("cold_start")
        self.assertEqual(cold["spawned_at_us"], self.spawned_us)
        self.assertGreaterEqual(cold["ready_at_us"], self.spawned_us)
        self.assertLessEqual(cold["ready_at_us"], time.time_ns() // 1000)
        self.assertAlmostEqual(cold["setup_s"], self.ready["ready"]["setup_s"])

    def test_prints_do_not_corrupt_frames(self):
        self.assertEqual(self.runner.value("shout", ["hello"]), "HELLO")
        self.assertEqual(self.runner.value("shout", {"text": "again"}), "AGAIN")
        self.assertEqual(self.runner.value("add", [1, 2]), 3)
        self.assertEqual(self.runner.close(), 0)
        self.assertIn("shouting 'hello' on stdout", self.runner.stderr_text())

    def test_exception_has_traceback_and_runner_survives(self):
        error = self.runner.call("boom", ["it broke"])["error"]
        self.assertEqual(error["type"], "ValueError")
        self.assertEqual(error["message"], "it broke")
        self.assertIn("Traceback", error["traceback"])
        self.assertIn("runner_module.py", error["traceback"])
        self.assertIn("raise ValueError(message)", error["traceback"])
        self.assertIn("ValueError: it broke", error["traceback"])
        self.assertEqual(self.runner.value("add", [1, 2]), 3)

    def test_wrong_arguments_are_an_error(self):
        error = self.runner.call("add", [1])["error"]
        self.assertEqual(error["type"], "TypeError")
        self.assertIn("b", error["message"])

    def test_unknown_function(self):
        for name in ("nope", "setup", "_private", "os", "SETUPS", "htex_runner"):
            with self.subTest(name=name):
                error = self.runner.call(name, [])["error"]
                self.assertEqual(error["type"], "UnknownFunction")
                self.assertIn(name, error["message"])
                self.assertEqual(error["traceback"], "")
                self.assertEqual(error["available"], FIXTURE_FUNCTIONS)
        self.assertEqual(self.runner.value("add", [1, 2]), 3)

    def test_bad_requests_are_answered_and_survived(self):
        bad = [
            b"\xc1",                                   # never valid msgpack
            pack([1, 2]),                              # not a map
            pack({"args": pack([])}),                  # no function
            pack({"function": 5, "args": pack([])}),   # function not a string
            pack({"function": "add", "args": [1, 2]}),  # args not bytes
            pack({"function": "add", "args": b"\xc1"}),  # args not msgpack
            pack({"function": "add", "args": pack([1, 2]) + b"\x00"}),  # trailing bytes
            b"",                                       # empty frame
        ]
        for body in bad:
            with self.subTest(body=body):
                self.runner.write_frame(body)
                error = self.runner.read_frame()["error"]
                self.assertEqual(error["type"], "BadRequest")
                self.assertTrue(error["message"])
        self.assertEqual(self.runner.value("add", [1, 2]), 3)

    def test_missing_args_means_no_arguments(self):
        self.runner.write_frame(pack({"function": "state"}))
        self.assertEqual(unpack(self.runner.read_frame()["ok"])["setups"], 1)

    def test_die_ends_the_stream(self):
        self.runner.write_frame(pack({"function": "die", "args": pack(None)}))
        self.assertIsNone(self.runner.read_frame())
        self.assertEqual(self.runner.proc.wait(TIMEOUT_S), -signal.SIGKILL)

    def test_eof_exits_zero(self):
        self.assertEqual(self.runner.close(), 0)

    def test_eof_after_calls_exits_zero(self):
        self.assertEqual(self.runner.value("sleep", [0.01]), 0.01)
        self.assertEqual(self.runner.close(), 0)

    def test_truncated_frame_exits_nonzero(self):
        self.runner.proc.stdin.write(struct.pack("<I", 100) + b"short")
        self.assertEqual(self.runner.close(), 1)


class SetupFailureTests(unittest.TestCase):

    def run_to_exit(self, module, *paths):
        runner = Runner(module, *paths)
        self.addCleanup(runner.cleanup)
        first = runner.read_frame()
        self.assertIsNone(runner.read_frame())
        return first, runner.proc.wait(TIMEOUT_S)

    def test_broken_setup(self):
        first, status = self.run_to_exit("runner_broken")
        error = first["setup_error"]
        self.assertEqual(error["type"], "RuntimeError")
        self.assertEqual(error["message"], "no model here")
        self.assertIn("runner_broken.py", error["traceback"])
        self.assertIn("RuntimeError: no model here", error["traceback"])
        self.assertEqual(status, 1)

    def test_missing_module(self):
        first, status = self.run_to_exit("no_such_module_here")
        self.assertEqual(first["setup_error"]["type"], "ModuleNotFoundError")
        self.assertIn("no_such_module_here", first["setup_error"]["message"])
        self.assertEqual(status, 1)

    def test_bad_command_line(self):
        full_env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
        proc = subprocess.run(
            [sys.executable, "-m", "htex_runner"], cwd=REPO, env=full_env,
            stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT_S,
        )
        self.assertEqual(proc.returncode, 2)
        (n,) = struct.unpack("<I", proc.stdout[:4])
        self.assertEqual(len(proc.stdout), 4 + n)
        self.assertEqual(unpack(proc.stdout[4:])["setup_error"]["type"], "UsageError")


class EdgeCaseTests(unittest.TestCase):
    """A throwaway module for behaviour the fixture does not cover."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        with open(os.path.join(cls.tmp.name, "runner_extra.py"), "w") as f:
            f.write(EXTRA_MODULE)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def setUp(self):
        self.runner = Runner("runner_extra", self.tmp.name, env={"HTEX_SLOT_INDEX": "5"})
        self.addCleanup(self.runner.cleanup)
        self.ready = self.runner.read_frame()["ready"]

    def test_served_functions(self):
        self.assertEqual(self.ready["functions"], [
            "Model", "bad_message", "context_slot", "exits", "interrupted", "later",
            "returns_set", "returns_tuple",
        ])

    def test_unencodable_result_is_a_type_error(self):
        error = self.runner.call("returns_set")["error"]
        self.assertEqual(error["type"], "TypeError")
        self.assertIn("returns_set", error["message"])
        self.assertEqual(self.runner.value("returns_tuple"), [1, "two", b"three"])

    def test_base_exceptions_do_not_end_the_runner(self):
        self.assertEqual(self.runner.call("exits")["error"]["type"], "SystemExit")
        self.assertEqual(self.runner.call("interrupted")["error"]["type"], "KeyboardInterrupt")
        self.assertEqual(self.runner.call("bad_message")["error"]["type"], "Weird")
        self.assertEqual(self.runner.value("later", [21]), 42)
        self.assertEqual(self.runner.close(), 0)

    def test_context(self):
        self.assertEqual(self.runner.value("context_slot"),
                         [5, self.runner.proc.pid, "runner_extra"])


class ContextDefaultsTests(unittest.TestCase):

    def test_spawned_defaults_to_process_start(self):
        sys.path.insert(0, PYTHON_DIR)
        try:
            from htex_runner.runtime import Context
        finally:
            sys.path.remove(PYTHON_DIR)
        saved = os.environ.pop("HTEX_RUNNER_SPAWNED_US", None)
        try:
            ctx = Context()
        finally:
            if saved is not None:
                os.environ["HTEX_RUNNER_SPAWNED_US"] = saved
        now = time.time_ns() // 1000
        self.assertLessEqual(ctx.spawned_at_us, now)
        self.assertGreater(ctx.spawned_at_us, now - 24 * 3600 * 10**6)
        self.assertEqual(ctx.calls, 0)
        self.assertIsNone(ctx.ready_at_us)
        self.assertEqual(ctx.pid, os.getpid())


if __name__ == "__main__":
    unittest.main()
