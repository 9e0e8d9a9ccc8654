"""Adapters: implementations of the contracts in :mod:`statestream` for concrete backends.

Each backend technology has one module here, imported by path so that only the backends you use
need their drivers installed::

    from statestream.adapters.memory import (
        MemoryRecordStore,
        MemoryRoleScheduler,
        MemoryStreamer,
        MemoryTimeoutStore,
    )

``memory`` needs no third-party packages and keeps everything in the process: use it in tests, in
examples and for single-process services that do not need durability. Backends with drivers are
installed with the extra of the same name (``pip install 'statestream[postgres]'``).

Every adapter passes the conformance suite in :mod:`statestream.adaptertest`; an adapter written
outside this package can run the same suite against itself.

This package imports nothing, so importing it never pulls in a driver.
"""
