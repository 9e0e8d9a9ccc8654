"""Session fixtures shared by the test modules."""

from kafka_broker import kafka_bootstrap, private_broker

__all__ = ["kafka_bootstrap", "private_broker"]
