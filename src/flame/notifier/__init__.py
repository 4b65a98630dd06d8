"""The notifier: durable per-subscriber event streams for flamelets and deployers."""
