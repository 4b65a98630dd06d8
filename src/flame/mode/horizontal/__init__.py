"""Horizontal FL modes: every trainer holds samples of the same features.

`flame.mode.horizontal.trainer`, `.top_aggregator` and `.middle_aggregator` are the
synchronous classes of `flame.mode.horizontal.syncfl`, as in the original SDK.
"""
