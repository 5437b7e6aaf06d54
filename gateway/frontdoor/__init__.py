"""The front door: REST (httptools on uvloop) and gRPC (grpcio aio) servers sharing ports across workers."""
