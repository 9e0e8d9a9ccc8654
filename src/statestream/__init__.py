"""statestream: durable, event-driven, typed workflows for asyncio services."""
