"""Storage backends: ``file`` (the embedded default) and ``etcd`` (runs across machines)."""
