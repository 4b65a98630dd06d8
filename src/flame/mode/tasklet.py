"""Tasklets and loops: the steps of a role's flow and how they chain.

A `Tasklet` wraps one call (usually a bound method of the role). Inside a `with Composer():`
block, tasklets chain left to right with `>>`, and `Loop(loop_check_fn)` turns a chain into
a loop that ends once `loop_check_fn()` is true. The composer then runs the chain.

Example:
    >>> from flame.mode.composer import Composer
    >>> calls, state = [], {"round": 0}
    >>> def step():
    ...     state["round"] += 1
    >>> with Composer() as composer:
    ...     init = Tasklet("init", calls.append, "init")
    ...     work = Tasklet("work", step)
    ...     done = Tasklet("done", calls.append, "done")
    ...     _ = init >> Loop(loop_check_fn=lambda: state["round"] == 3)(work) >> done
    >>> composer.run()
    >>> calls, state["round"]
    (['init', 'done'], 3)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from flame.mode.composer import Composer

__all__ = ["Loop", "Tasklet"]


class Tasklet:
    """One step of a role's flow: `func(*args, **kwargs)`.

    Must be created inside a `with Composer():` block; it belongs to that composer.

    Args:
        alias: A name for logs and error messages.
        func: What the step calls.
        *args: Positional arguments for `func`.
        **kwargs: Keyword arguments for `func`.

    Raises:
        RuntimeError: No composer is open.
    """

    def __init__(self, alias: str, func: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        self.alias = alias
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.prev: Tasklet | None = None
        self.next: Tasklet | None = None
        # The innermost loop this tasklet belongs to.
        self.loop: Loop | None = None
        self.continue_fn: Callable[[], bool] | None = None
        Composer.current().add(self)

    def __repr__(self) -> str:
        return f"Tasklet({self.alias!r})"

    def __rshift__(self, other: Tasklet) -> Tasklet:
        """Run the chain that ends at `other` after this tasklet; return `other`.

        `a >> b >> c` reads left to right. When `other` ends a chain or a loop (`a >>
        loop(b >> c)`), the edge goes to the head of that chain, and `other` is returned so
        that the chain continues after it.

        Raises:
            ValueError: This tasklet already has a successor, or the edge would close a cycle.
        """
        head = other.head()
        if self.next is not None:
            raise ValueError(f"{self!r} already runs before {self.next!r}")
        if head is self.head():
            raise ValueError(f"{self!r} >> {other!r} would close a cycle")
        self.next, head.prev = head, self
        return other

    def set_continue_fn(self, cont_fn: Callable[[], bool]) -> None:
        """Restart the enclosing loop's iteration after this tasklet whenever `cont_fn()` is
        true (e.g. to retry a fetch); it has no effect outside a loop."""
        self.continue_fn = cont_fn

    def do(self) -> object:
        """Run the step once and return what `func` returned."""
        return self.func(*self.args, **self.kwargs)

    def head(self) -> Tasklet:
        """The first tasklet of the chain this tasklet is in."""
        tasklet = self
        while tasklet.prev is not None:
            tasklet = tasklet.prev
        return tasklet

    def chain(self) -> Iterator[Tasklet]:
        """This tasklet and every one after it, in order."""
        tasklet: Tasklet | None = self
        while tasklet is not None:
            yield tasklet
            tasklet = tasklet.next


class Loop:
    """Repeats a chain of tasklets until `loop_check_fn()` is true.

    The check runs after every tasklet of the loop, so once it is true the rest of the
    iteration is skipped (a trainer that receives end-of-training in `fetch` neither trains
    nor uploads). Loops nest: a tasklet in an inner loop is checked against the inner one.

    Args:
        loop_check_fn: Returns True when the loop is done.

    Example:
        >>> # a >> loop(b >> c) >> d: runs a, then b, c until done, then d.
    """

    def __init__(self, loop_check_fn: Callable[[], bool]) -> None:
        self.loop_check_fn = loop_check_fn
        self.starter: Tasklet | None = None
        self.ender: Tasklet | None = None
        self.parent: Loop | None = None

    def __call__(self, ender: Tasklet) -> Tasklet:
        """Make the chain ending at `ender` this loop's body; return `ender`.

        Raises:
            ValueError: The loop already has a body, or `ender` is not the end of its chain.
        """
        if self.ender is not None:
            raise ValueError(f"the loop already ends at {self.ender!r}")
        if ender.next is not None:
            raise ValueError(f"{ender!r} is followed by {ender.next!r}: a loop body ends a chain")
        self.starter, self.ender = ender.head(), ender
        for tasklet in self.starter.chain():
            self._adopt(tasklet)
        return ender

    def is_done(self) -> bool:
        """Whether the loop's exit condition holds now."""
        return bool(self.loop_check_fn())

    def _adopt(self, tasklet: Tasklet) -> None:
        if tasklet.loop is None:
            tasklet.loop = self
            return
        # The tasklet is in an inner loop: this loop encloses the outermost one of those.
        inner = tasklet.loop
        while inner.parent is not None:
            inner = inner.parent
        if inner is not self:
            inner.parent = self
