"""The one way to the upstream Messages API (``client.Upstream``), and the one place where what goes
wrong on the way becomes a ``Failure`` (``failures``). ``eventstream`` decodes Amazon Bedrock's AWS
event-stream replies into Messages events; it is pure and imports nothing of the gateway."""
