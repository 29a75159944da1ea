"""Kafka: topics, producer, consumer loop, outbox relay, dead letters, and the embedded broker."""
