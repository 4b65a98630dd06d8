"""The composer: collects a role's tasklets and runs their chain.

`compose()` builds the flow inside `with Composer() as composer:`; `run()` calls
`composer.run()`. See `flame.mode.tasklet` for the chaining DSL.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flame.mode.tasklet import Loop, Tasklet

__all__ = ["Composer"]

logger = logging.getLogger(__name__)

# A context variable rather than a class attribute: roles composed in several threads of
# one process (tests, simulations) each see their own open composer.
_current: ContextVar[Composer | None] = ContextVar("flame_composer", default=None)


class Composer:
    """Holds the tasklets of one flow and runs them.

    Example:
        >>> from flame.mode.composer import Composer
        >>> from flame.mode.tasklet import Tasklet
        >>> with Composer() as composer:
        ...     _ = Tasklet("a", print, "a") >> Tasklet("b", print, "b")
        >>> composer.run()
        a
        b
    """

    def __init__(self) -> None:
        self.tasklets: list[Tasklet] = []
        self._token: Token[Composer | None] | None = None

    def __enter__(self) -> Composer:
        self._token = _current.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None

    @staticmethod
    def current() -> Composer:
        """The composer of the enclosing `with Composer():` block.

        Raises:
            RuntimeError: No composer is open in this thread.
        """
        composer = _current.get()
        if composer is None:
            raise RuntimeError("create tasklets inside a `with Composer():` block")
        return composer

    def add(self, tasklet: Tasklet) -> None:
        """Register a tasklet (tasklets call this when created)."""
        self.tasklets.append(tasklet)

    def get_tasklet(self, alias: str) -> Tasklet | None:
        """The first tasklet named `alias`, or None."""
        return next((t for t in self.tasklets if t.alias == alias), None)

    def run(self) -> None:
        """Run the flow from its first tasklet until it ends.

        Raises:
            ValueError: The tasklets do not form one chain.
            Exception: Whatever a tasklet raised; the flow stops there.
        """
        tasklet: Tasklet | None = self._root()
        while tasklet is not None:
            started = time.monotonic()
            tasklet.do()
            logger.debug("tasklet %s took %.3f s", tasklet.alias, time.monotonic() - started)
            tasklet = self._after(tasklet)

    def _root(self) -> Tasklet:
        heads = [t for t in self.tasklets if t.prev is None]
        if len(heads) != 1:
            aliases = [t.alias for t in heads]
            raise ValueError(f"the tasklets must form one chain; chains start at {aliases}")
        return heads[0]

    def _after(self, tasklet: Tasklet) -> Tasklet | None:
        loop = tasklet.loop
        if loop is None:
            return tasklet.next
        if loop.is_done():
            return self._exit(loop)
        restart = tasklet.continue_fn is not None and tasklet.continue_fn()
        if restart or tasklet is loop.ender:
            return loop.starter
        return tasklet.next

    def _exit(self, loop: Loop) -> Tasklet | None:
        # Leaving an inner loop lands in its enclosing loop, which may itself be done or
        # end right there.
        assert loop.ender is not None  # a tasklet only points at a loop with a body
        parent = loop.parent
        if parent is None:
            return loop.ender.next
        if parent.is_done():
            return self._exit(parent)
        if loop.ender is parent.ender:
            return parent.starter
        return loop.ender.next
