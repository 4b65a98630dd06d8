"""What the apiserver and the controller share: the public service catalogue and
the metadata keys that carry identities between them."""
