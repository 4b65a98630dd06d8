"""The gRPC runtime shared by every Flame server and client: server construction
(health, reflection, TLS, graceful shutdown), client channels, domain errors
mapped to status + ErrorInfo, structured logging and command-line options."""
