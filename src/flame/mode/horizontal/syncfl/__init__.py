"""Synchronous horizontal FL: rounds of distribute, train, upload deltas, aggregate.

Roles: `trainer.Trainer`, `top_aggregator.TopAggregator` and, in hierarchies,
`middle_aggregator.MiddleAggregator`.
"""
