"""The one way to the upstream Messages API (``client.Upstream``), and the one place where what goes
wrong on the way becomes a ``Failure`` (``failures``)."""
