"""Imports learn2learn without the deprecation notice that gym 0.26 (which it imports) prints to stderr."""

import contextlib
import io

with contextlib.redirect_stderr(io.StringIO()):
    import gym  # noqa: F401

import learn2learn

__all__ = ["learn2learn"]
