"""Live monitoring: the collector, its Prometheus metric families, serving and pushing them, monitor()."""
