"""The embedded control plane `flamectl up` runs on one machine: SecantusDB,
controller and apiserver as local processes, with TLS from a private CA."""
