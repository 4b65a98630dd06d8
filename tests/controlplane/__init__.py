"""Integration tests of the control plane's resource services, through the apiserver."""
