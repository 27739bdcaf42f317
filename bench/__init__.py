"""Issue #5's benchmark of the gateway: ``python -m bench`` (``make bench``), ``--quick`` for a smoke run.

Every run starts its own processes on loopback: a simulator that stamps each text delta with the
time it writes it (``upstream``), the gateway (``python -m server``), and load clients
(``loadgen``). ``scenarios`` drives them, ``report`` prints the table and writes
``bench/results/latest.json``. ``python -m bench.profiler`` profiles the gateway's relay path.

Modules:

- ``stamps``: the send-time token written into each text delta, and how to read it back.
- ``workload``: the request bodies every client sends (simulator directives in the prompt).
- ``upstream``: the simulator process, with the stamping hook and a record of closed connections.
- ``floor``: grpc.aio alone writing the same paced streams, or answering the same one-token calls,
  from memory: the floor under the relay.
- ``calls``: reading one stream, through the gateway (gRPC) or straight from the simulator (SDK);
  ``jobs`` also reads it with a bare aiohttp session (reading alone, row 2d).
- ``jobs``: what a load client does between ``go`` and its result (streams, pairs, cancels, ...).
- ``loadgen``: one load-client process: runs one job and prints its result.
- ``processes``: starting, pinning, talking to and stopping the child processes.
- ``session``: the shared upstream and gateway of a run, and running jobs on them with measurement.
- ``usage``: CPU seconds and RSS of processes, read from /proc.
- ``sockets``: bytes left unread in TCP receive queues, i.e. who could not keep up.
- ``stats``: percentiles and summaries of samples.
- ``plan``: the sizes of the default run and of ``--quick``.
- ``scenarios``: the measurements, each a function returning table rows.
- ``machine``: the description of the machine the run was made on.
- ``report``: the table and its JSON twin.
- ``profiler``: cProfile (or tracemalloc) of an in-process gateway under the same load.
- ``sweep``: scenario 12, the public per-stream method (a concurrency sweep of paced streams through
  gRPC and /v1/messages against the SDK reading the simulator directly); ``python -m bench.sweep``
  prints its tables for docs/performance.md. ``sweep_reads`` is what its load clients do.
- ``eventstream``: CPU per event of reading Bedrock's event-stream (the gateway's decoder, botocore's,
  the SDK's) against reading SSE, in one process (``python -m bench.eventstream``).
- ``backends``: row 11, a backends file: failover's cost, Bedrock's relay against Anthropic's, one backend
  against none (``python -m bench --only 11``).

``bench/tests`` checks what the measuring parts count (no timing asserts): ``pytest bench/tests``.
"""
