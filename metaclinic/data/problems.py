"""Every problem of a table in one error: a user fixes them all in one pass instead of one per run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from metaclinic.errors import DataError

MAX_LISTED = 5  # offending rows named in one message


class Problems:
    """Collects the messages of :class:`DataError` s found while checking a table, and raises them together.

    One problem is raised as it is; several as one error listing each on its own line, in the order found.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []

    def __bool__(self) -> bool:
        return bool(self.messages)

    def add(self, message: str) -> None:
        if message not in self.messages:
            self.messages.append(message)

    @contextlib.contextmanager
    def collect(self) -> Iterator[None]:
        """Records a :class:`DataError` raised in the block instead of letting it stop the checks."""
        try:
            yield
        except DataError as error:
            self.add(str(error))

    def check_meta_splits(self, selectors: dict[str, list[str]], kind: str, why: str = "") -> None:
        """Adds a problem for a name listed twice in a meta-split, or in two meta-splits (the classes of
        molecules' assays, cell types): a class shared between splits leaks test classes into training.
        ``kind``: what the names are (``"assay"``); ``why``: appended to the second message."""
        for split, chosen in selectors.items():
            twice = sorted({c for c in chosen if chosen.count(c) > 1})
            if twice:
                self.add(f"data.{split} lists {kind}(s) {twice} more than once")
        splits = list(selectors)
        for i, first in enumerate(splits):
            for second in splits[i + 1 :]:
                for name in (c for c in dict.fromkeys(selectors[first]) if c in selectors[second]):
                    self.add(f"{kind} {name!r} is in both data.{first} and data.{second}; {why}")

    def raise_if_any(self) -> None:
        if len(self.messages) == 1:
            raise DataError(self.messages[0])
        if self.messages:
            listed = "\n".join(f"  {i}. {m}" for i, m in enumerate(self.messages, 1))
            raise DataError(f"the table has {len(self.messages)} problems:\n{listed}")
