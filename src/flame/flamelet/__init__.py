"""The flamelet: the per-task agent. It runs a role's code and brokers its
weight exchange to peer flamelets over MQTT or p2p gRPC.

Modules: `main` is the `flamelet` command; `agent` the task's lifecycle, driven
by notifier events; `api` the AgentService calls (task key, deadlines) under
`retry`'s one policy; `workdir` the work folder and safe unzip; `deps` the
opt-in venv; `child` the role process; `logship` the task log and its shipping;
`seam` where the data plane (`dataplane`) plugs in; `servers` the data plane's
two gRPC service sets.
"""
