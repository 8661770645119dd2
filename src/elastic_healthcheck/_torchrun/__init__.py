"""The torchrun integration: what :mod:`elastic_healthcheck.torchelastic` is made of.

Agent side: ``agentstate`` (the agent's phase and its worker group, the status source),
``verdict`` (the group verdict: records and time in, one status out; pure), ``hangwatch``
(sees a hang once, captures and logs stacks, ends a hung group), ``stacks`` (asks a worker
for its Python stacks). Worker side: ``bootstrap`` (starts the training script with
progress reporting in place). Shared: ``record`` (one local rank's progress record, the
file both sides map).

May import: ``..status``, ``..logging``, ``..health_check_server``, the configuration and
the servers (through their kinds). Only ``..torchelastic``, ``..worker`` and the CLI import it.
"""
