"""The torchrun integration: what :mod:`elastic_healthcheck.torchelastic` is made of.

Agent side: ``seam`` (every torch internal relied on, in one table, and its patching),
``agentstate`` (the agent's phase and its worker group, the status source),
``agentserver`` (the one server and the handles torch's agent gets), ``spawn`` (each
worker group's records, environment and bootstrap), ``verdict`` (records and time in, one
typed verdict out; pure) and ``metrics`` (its /metrics families; pure), ``hangwatch`` (sees
a hang once, captures and logs stacks, ends a hung group), ``rootcause`` (the hung rank's
error file for torchrun's summary), ``jobview`` (what the other nodes' agents say),
``stacks`` (asks a worker for its Python stacks), ``plugin`` (plain torchrun's entry
point). Worker side: ``bootstrap`` (starts the training script with progress reporting in
place), ``hooks`` (its hooks in torch), ``phases`` (what a rank does besides training).
Shared: ``record`` (one local rank's progress record, the file both sides map).

May import: ``..status``, ``..logging``, ``..health_check_server``, the configuration and
the servers (through their kinds); ``..worker`` (the bootstrap shares its record) and
``..torchelastic`` (``plugin``, plain torchrun's entry point, installs it). Only
``..torchelastic``, ``..worker`` and the CLI import it.
"""
