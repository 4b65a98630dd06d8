"""The controller: owns all control-plane state in MongoDB, validates and stores
resources, expands jobs into tasks and runs their lifecycle."""
