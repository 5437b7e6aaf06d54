"""Pipeline dataflow: references resolved to topics, the compiled step graph, the chain transforms."""
