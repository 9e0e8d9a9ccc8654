"""The conformance suite every adapter must pass, shipped so that third-party adapters can run it.

Each contract is an abstract pytest class. Its name does not start with ``Test``, so pytest does
not collect it on its own; a backend's test module subclasses it and supplies one fixture:

==========================  ====================  ============================================
Contract                    Fixture               Gives
==========================  ====================  ============================================
``RecordStoreContract``     ``store``             a :class:`~statestream.RecordStore`
``EventStreamerContract``   ``streamer``          an :class:`~statestream.EventStreamer`
``TimeoutStoreContract``    ``timeout_store``     a :class:`~statestream.TimeoutStore`
``RoleSchedulerContract``   ``make_schedulers``   ``async (n: int) -> list[RoleScheduler]``
``WorkflowContract``        ``adapters``          an :class:`AdapterSet` of all four
==========================  ====================  ============================================

The contracts declare no fixture themselves (a subclass that forgets one fails with pytest's
"fixture not found"), so the subclass's fixture may be sync or async, a plain function or a
generator that cleans up. ``make_schedulers(n)`` returns ``n`` schedulers that share one
backend, standing for ``n`` processes contending for the same roles (an in-process scheduler may
return the same instance ``n`` times). For example::

    import pytest
    import pytest_asyncio

    from statestream.adapters.memory import MemoryRecordStore, MemoryRoleScheduler
    from statestream.adaptertest import RecordStoreContract, RoleSchedulerContract


    class TestMemoryRecordStore(RecordStoreContract):
        @pytest_asyncio.fixture
        async def store(self):
            yield MemoryRecordStore()


    class TestMemoryRoleScheduler(RoleSchedulerContract):
        lease_ttl = None  # memory leases never expire by time

        @pytest.fixture
        def make_schedulers(self):
            scheduler = MemoryRoleScheduler()

            async def make(n):
                return [scheduler] * n

            return make

``RoleSchedulerContract`` also needs the class attribute ``lease_ttl``: the time to live of the
leases the factory's schedulers grant (keep it short: the tests of expiry wait for it), or
``None`` for leases that never expire by time. See the class for what those tests demand. A
scheduler that also implements :class:`~statestream.RoleMembers` (so that workers divide the
roles) is checked by its ``test_members_*`` tests too: give the factory's schedulers a short
``member_ttl``.

Every test is an ``async def`` marked ``@pytest.mark.asyncio``, so the suite needs
`pytest-asyncio <https://pypi.org/project/pytest-asyncio/>`_ and runs in its strict mode as well
as with ``asyncio_mode = "auto"``. In strict mode, async fixtures must be declared with
``@pytest_asyncio.fixture`` as above.

The tests isolate themselves with unique (UUID) workflow names, foreign IDs, topics, consumer
names and roles, so a fixture may hand every test the same persistent backend (a database that
is not emptied between tests); ``prune`` is only ever asked about the test's own topics and
workflows. Stores must persist the timestamps they are given; values are compared to within a
second, so a backend may truncate them to milliseconds.

Importing this package imports pytest; import it only from tests.
"""

from __future__ import annotations

from .acceptance import AdapterSet, WorkflowContract
from .event_streamer import EventStreamerContract
from .record_store import RecordStoreContract
from .role_scheduler import RoleSchedulerContract, SchedulerFactory
from .timeout_store import TimeoutStoreContract

__all__ = [
    "AdapterSet",
    "EventStreamerContract",
    "RecordStoreContract",
    "RoleSchedulerContract",
    "SchedulerFactory",
    "TimeoutStoreContract",
    "WorkflowContract",
]
