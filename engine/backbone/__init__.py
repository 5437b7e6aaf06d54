"""A worker's Kafka runtime: an async producer, a partition-pinned consumer, offset bookkeeping."""
