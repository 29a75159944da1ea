"""The outside parts the gateway runs on: the database, Kafka, and the housekeeping jobs
over both."""
