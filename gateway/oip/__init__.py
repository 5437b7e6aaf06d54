"""Open Inference Protocol: tensor types, datatypes and the REST/gRPC codecs."""
