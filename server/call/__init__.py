"""The life of one call, the same on every port: admission, validation, the upstream reader and its
watchdog, retries, the stream grammar, the event mapping, delivery and CreateMessage's accumulation.

``runner.Calls.run`` is the one path; ``context.CallContext`` is all it needs of a port.
"""
