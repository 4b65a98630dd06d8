"""The apiserver: the public gRPC front door. It authenticates callers, caps
message sizes and deadlines, and forwards every public call to the controller."""
