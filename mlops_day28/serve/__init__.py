"""The service's internals: payloads, body limit, connections, feedback, drift, the served model, metrics, reload, the app, Prometheus and its dashboard."""
