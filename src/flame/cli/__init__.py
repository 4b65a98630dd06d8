"""`flamectl`: the command-line client of the Flame control plane.

Every command talks to the apiserver over gRPC with the endpoint and API token
of a YAML configuration file (see `flame.cli.config`).
"""
