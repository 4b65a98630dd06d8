"""The tasklet/composer DSL: chaining, loops, nesting, exit and continue semantics."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from flame.mode.composer import Composer
from flame.mode.tasklet import Loop, Tasklet


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def step(self, alias: str, action: Callable[[], None] | None = None) -> Tasklet:
        def run() -> None:
            self.calls.append(alias)
            if action is not None:
                action()

        return Tasklet(alias, run)


def test_a_chain_runs_left_to_right_once() -> None:
    recorder = Recorder()
    with Composer() as composer:
        a, b, c = (recorder.step(alias) for alias in "abc")
        assert (a >> b >> c) is c

    composer.run()

    assert recorder.calls == ["a", "b", "c"]


def test_a_loop_repeats_its_body_until_the_check_holds() -> None:
    recorder, state = Recorder(), {"round": 0}

    def advance() -> None:
        state["round"] += 1

    with Composer() as composer:
        init = recorder.step("init")
        fetch, work = recorder.step("fetch"), recorder.step("work", advance)
        done = recorder.step("done")
        _ = init >> Loop(loop_check_fn=lambda: state["round"] == 2)(fetch >> work) >> done

    composer.run()

    assert recorder.calls == ["init", "fetch", "work", "fetch", "work", "done"]


def test_the_loop_check_runs_after_every_tasklet_and_skips_the_rest() -> None:
    # As in the original: a trainer that receives end-of-training in fetch does not train.
    recorder, state = Recorder(), {"fetches": 0}

    def fetch() -> None:
        state["fetches"] += 1

    with Composer() as composer:
        loop = Loop(loop_check_fn=lambda: state["fetches"] == 2)
        _ = loop(recorder.step("fetch", fetch) >> recorder.step("train")) >> recorder.step("end")

    composer.run()

    assert recorder.calls == ["fetch", "train", "fetch", "end"]


def test_an_inner_loop_exits_to_the_next_tasklet_of_its_enclosing_loop() -> None:
    recorder, state = Recorder(), {"outer": 0, "inner": 0}

    def inner() -> None:
        state["inner"] += 1

    def after() -> None:
        state["outer"] += 1
        state["inner"] = 0

    with Composer() as composer:
        inner_loop = Loop(loop_check_fn=lambda: state["inner"] == 2)
        outer_loop = Loop(loop_check_fn=lambda: state["outer"] == 2)
        body = (
            recorder.step("o") >> inner_loop(recorder.step("i", inner)) >> recorder.step("p", after)
        )
        _ = outer_loop(body) >> recorder.step("end")

    composer.run()

    assert recorder.calls == ["o", "i", "i", "p", "o", "i", "i", "p", "end"]


def test_an_inner_loop_that_ends_its_enclosing_loop_restarts_it() -> None:
    recorder, state = Recorder(), {"outer": 0, "inner": 0}

    def outer() -> None:
        state["outer"] += 1
        state["inner"] = 0

    def inner() -> None:
        state["inner"] += 1

    with Composer() as composer:
        inner_loop = Loop(loop_check_fn=lambda: state["inner"] == 2)
        outer_loop = Loop(loop_check_fn=lambda: state["outer"] == 3)
        _ = outer_loop(recorder.step("o", outer) >> inner_loop(recorder.step("i", inner)))

    composer.run()

    # The outer check holds right after the third "o": the rest is skipped.
    assert recorder.calls == ["o", "i", "i", "o", "i", "i", "o"]


def test_a_continue_fn_restarts_the_iteration() -> None:
    recorder, state = Recorder(), {"tries": 0, "rounds": 0}

    def fetch() -> None:
        state["tries"] += 1

    def train() -> None:
        state["rounds"] += 1

    with Composer() as composer:
        fetch_task = recorder.step("fetch", fetch)
        fetch_task.set_continue_fn(cont_fn=lambda: state["tries"] < 3)
        loop = Loop(loop_check_fn=lambda: state["rounds"] == 1)
        _ = loop(fetch_task >> recorder.step("train", train))

    composer.run()

    assert recorder.calls == ["fetch", "fetch", "fetch", "train"]


def test_tasklets_need_an_open_composer() -> None:
    with pytest.raises(RuntimeError, match="with Composer"):
        Tasklet("lost", print)


def test_the_flow_must_be_one_chain() -> None:
    with Composer() as composer:
        Tasklet("a", print)
        Tasklet("b", print)

    with pytest.raises(ValueError, match=r"one chain; chains start at \['a', 'b'\]"):
        composer.run()


def test_cycles_and_double_links_are_refused() -> None:
    with Composer():
        a, b, c = Tasklet("a", print), Tasklet("b", print), Tasklet("c", print)
        _ = a >> b
        with pytest.raises(ValueError, match="cycle"):
            _ = b >> a
        with pytest.raises(ValueError, match="already runs before"):
            _ = a >> c


def test_composers_of_different_threads_do_not_mix() -> None:
    import threading

    seen: list[Composer] = []

    def compose() -> None:
        with Composer() as composer:
            Tasklet("t", print)
            seen.append(Composer.current())
            assert Composer.current() is composer

    threads = [threading.Thread(target=compose) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(seen) == 2 and seen[0] is not seen[1]
    assert all(len(composer.tasklets) == 1 for composer in seen)
