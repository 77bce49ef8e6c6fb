"""The collector policy of processes audiotok owns. Each case runs in a fresh interpreter, so
that this test process's collector is left as it is."""

import subprocess
import sys
import textwrap

from audiotok.transforms import interpreter
from audiotok.transforms.decode import DecodeConfig
from audiotok.transforms.read import _DecodeFn


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_startup_changes_nothing_in_a_process_audiotok_does_not_own():
    out = run_python("""
        import gc
        from audiotok.transforms import interpreter
        with interpreter.startup():
            inside = gc.isenabled()
            kept = [[i] for i in range(1000)]
        print(inside, gc.isenabled(), gc.get_freeze_count())
    """)
    assert out == "True True 0"


def test_startup_in_an_owned_process_pauses_the_collector_then_freezes_what_it_made():
    out = run_python("""
        import gc
        from audiotok.transforms import interpreter
        interpreter.own_process()
        with interpreter.startup():
            inside = gc.isenabled()
            kept = [[i] for i in range(1000)]
        print(inside, gc.isenabled(), gc.get_freeze_count() > 1000, gc.is_tracked(kept))
        gc.collect()
        print(gc.get_freeze_count() > 1000)
    """)
    assert out.splitlines() == ["False True True True", "True"]


def test_startup_leaves_a_collector_its_caller_turned_off_alone():
    out = run_python("""
        import gc
        from audiotok.transforms import interpreter
        interpreter.own_process()
        gc.disable()
        with interpreter.startup():
            pass
        print(gc.isenabled(), gc.get_freeze_count())
    """)
    assert out == "False 0"


def test_startup_resumes_the_collector_when_the_block_raises():
    out = run_python("""
        import gc
        from audiotok.transforms import interpreter
        interpreter.own_process()
        try:
            with interpreter.startup():
                raise KeyError("x")
        except KeyError:
            pass
        print(gc.isenabled())
    """)
    assert out == "True"


def test_freeze_at_exit_freezes_before_the_last_collection_and_registers_once():
    # atexit runs its handlers last-registered first: the probe, registered before, runs after.
    out = run_python("""
        import atexit, gc
        atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0))
        from audiotok.transforms import interpreter
        before = atexit._ncallbacks()
        interpreter.freeze_at_exit()
        interpreter.freeze_at_exit()
        print("added:", atexit._ncallbacks() - before, "frozen now:", gc.get_freeze_count())
    """)
    assert out.splitlines() == ["added: 1 frozen now: 0", "frozen at exit: True"]


def test_the_executable_owns_its_process_and_main_does_not():
    done = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from audiotok.pipelines import cli
        from audiotok.transforms import interpreter
        cli.main(["--help"])
        print(interpreter.owned(), file=sys.stderr)
        sys.argv = ["audiotok", "--help"]
        cli.entry_point()
        print(interpreter.owned(), file=sys.stderr)
    """)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: audiotok")
    assert done.stderr.split() == ["False", "True"]


def test_a_decoding_worker_freezes_at_exit(monkeypatch):
    calls = []
    monkeypatch.setattr(interpreter, "freeze_at_exit", lambda: calls.append(1))
    fn = _DecodeFn(DecodeConfig(isolation="none"), None)
    fn.setup()
    try:
        assert calls == [1]
    finally:
        fn.teardown()
