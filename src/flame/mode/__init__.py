"""Federated-learning modes: the role classes and the messages they exchange."""
