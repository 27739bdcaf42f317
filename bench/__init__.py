"""Issue #5's benchmark of the gateway: ``python -m bench`` (``make bench``), ``--quick`` for a smoke run.

Every run starts its own processes on loopback: a simulator that stamps each text delta with the
time it writes it (``upstream``), the gateway (``python -m server``), and load clients
(``loadgen``). ``scenarios`` drives them, ``report`` prints the table and writes
``bench/results/latest.json``. ``python -m bench.profiler`` profiles the gateway's relay path.

Modules:

- ``stamps``: the send-time token written into each text delta, and how to read it back.
- ``workload``: the request bodies every client sends (simulator directives in the prompt).
- ``upstream``: the simulator process, with the stamping hook and a record of closed connections.
- ``loadgen``: one load-client process: runs one job (gRPC or direct SDK) and prints its result.
- ``processes``: starting, pinning, talking to and stopping those child processes.
- ``usage``: CPU seconds and RSS of a process, read from /proc.
- ``stats``: percentiles and summaries of samples.
- ``scenarios``: the seven measurements, each a function returning table rows.
- ``machine``: the description of the machine the run was made on.
- ``report``: the table and its JSON twin.
- ``profiler``: cProfile of an in-process gateway under load.
"""
