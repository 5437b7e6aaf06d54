"""The scheduler child: durable model state, placement on servers, and the control API."""
