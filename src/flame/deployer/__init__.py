"""The local deployer: runs the task agents of its compute as processes on this machine."""
