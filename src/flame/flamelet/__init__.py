"""The flamelet: the per-task agent. It runs a role's code and brokers its
weight exchange to peer flamelets over MQTT or p2p gRPC."""
