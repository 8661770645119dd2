"""The engine every socket server runs on: one I/O thread, one thread for user code.

Parts, bottom up (each module's docstring says its one job; docs/engine.md tells the
story of one request): ``protocol`` (what a protocol may ask of the engine; pure),
``listeners`` (binding, refusing, resuming), ``loop`` (the selector loop, timers, the
waker, the supervisor), ``evaluator`` (the thread that runs user code), ``transport``
(one client socket), ``verdicts`` (the verdict service shared by all probes), ``engine``
(one running server's parts), ``server`` (``SocketHealthCheckServer``: options,
``start()``/``stop()``, fork safety, the hooks a subclass overrides).

May import: ``..status``, ``..logging``, ``..health_check_server`` (the base it extends).
Protocols of ``.._http`` and ``.._tcp`` build on it; nothing here imports them.
"""
