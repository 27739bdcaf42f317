"""What the gateway tells about each call: its record, the usage trailer and log line (``telemetry``),
metrics, traces, usage and prices."""
